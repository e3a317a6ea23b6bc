"""The Helm chart with the real helm (built by hack/build-binaries.sh) on the real local
control plane: lint, golden renders, the schema's verdicts, install/upgrade/uninstall, the
ServiceAccount's permissions (``kubectl auth can-i``) in both RBAC modes, and the operator run
with exactly the chart's ServiceAccount token and settings reconciling a job to the end.

kwok plays the kubelet, so the chart's operator *pod* does not execute anything: the operator
that reconciles is a local process given the chart's token, arguments and environment (what
the pod would run with). The image itself runs in tests/images/.

Golden files: ``KUBEGRAFT_UPDATE_GOLDEN=1`` rewrites tests/data/golden/chart/ (review the diff).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# The operator-test helpers (helper "opfix" moves this module into tests/; only these names
# are used here).
from operator_harness import Kube, OperatorProcess, job_manifest, state_is, wait_for

from kubegraft.devcluster.binaries import find_bin_dir
from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubegraft"
GOLDEN = ROOT / "tests" / "data" / "golden" / "chart"
KUBE_VERSION = "1.36.0"
WAIT = 180
"""Seconds a wait may take on a loaded machine; each ends as soon as its condition holds."""

MODES: dict[str, list[str]] = {
    "default": [],
    "namespaced": ["--set", "watchNamespaces={team-a,team-b}", "--set", "replicaCount=2"],
    "monitoring": [
        "--set", "serviceMonitor.enabled=true",
        "--set", "serviceMonitor.additionalLabels.release=prometheus",
        "--set", "podMonitor.enabled=true",
        "--set", "dashboards.enabled=true",
        "--set", "prometheusRule.enabled=true",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def helm_bin() -> Path:
    path = find_bin_dir() / "helm"
    assert os.access(path, os.X_OK), f"{path}: helm is built by hack/build-binaries.sh"
    return path


def helm(
    helm_bin: Path, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/kubegraft-helm/cache"}
    env |= {"HELM_CONFIG_HOME": "/tmp/kubegraft-helm/config"}
    env |= {"HELM_DATA_HOME": "/tmp/kubegraft-helm/data"}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    res = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, env=env, check=False, timeout=300
    )
    if check and res.returncode:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


def template(helm_bin: Path, *args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    out = helm(
        helm_bin, "template", "kubegraft", str(chart), "-n", "kubegraft-system",
        f"--kube-version={KUBE_VERSION}", *args,
    ).stdout  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


# ------------------------------------------------------------------ without a control plane
def test_two_releases_shard_the_namespaces_without_sharing_an_object(helm_bin: Path) -> None:
    # Scaling out (docs/operator.md): one release per set of namespaces, the CRDs with one.
    def release(name: str, ns: str, *values: str) -> list[dict[str, Any]]:
        out = helm(
            helm_bin, "template", name, str(CHART), "-n", ns, f"--kube-version={KUBE_VERSION}",
            "--set", "replicaCount=2", *values,
        ).stdout  # fmt: skip
        return [d for d in yaml.safe_load_all(out) if d]

    a = release("kg-a", "kubegraft-a", "--set", "watchNamespaces={team-a,team-b}")
    b = release("kg-b", "kubegraft-b", "--set", "watchNamespaces={team-c}",
                "--set", "crds.enabled=false")  # fmt: skip

    def ids(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        return {
            (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs
        }

    assert not ids(a) & ids(b)  # no object both releases would own
    assert not [d for d in b if d["kind"] == "CustomResourceDefinition"]
    assert [d for d in a if d["kind"] == "CustomResourceDefinition"]

    def args(docs: list[dict[str, Any]]) -> list[str]:
        (dep,) = [d for d in docs if d["kind"] == "Deployment"]
        return list(dep["spec"]["template"]["spec"]["containers"][0]["args"])

    assert [x for x in args(a) if x.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert [x for x in args(b) if x.startswith("--namespace")] == ["--namespace=team-c"]
    # each set has its own leader election (kopf peering named after the release)
    assert "--peering=kg-a-kubegraft" in args(a)
    assert "--peering=kg-b-kubegraft" in args(b)
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in a + b if d["kind"] == "Role"
    }
    assert {ns for ns, _ in roles} == {"team-a", "team-b", "team-c"}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_lint_strict(helm_bin: Path, mode: str) -> None:
    res = helm(helm_bin, "lint", "--strict", str(CHART), f"--kube-version={KUBE_VERSION}",
               *MODES[mode])  # fmt: skip
    assert "1 chart(s) linted, 0 chart(s) failed" in res.stdout


GENERATED_KEYS = re.compile(r"^(  (?:ca\.crt|tls\.crt|tls\.key): ).+$", re.MULTILINE)
"""The progress endpoint's certificate, which Helm generates anew on every render."""


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_template_matches_golden(helm_bin: Path, mode: str) -> None:
    out = helm(
        helm_bin, "template", "kubegraft", str(CHART), "-n", "kubegraft-system",
        f"--kube-version={KUBE_VERSION}", *MODES[mode],
    ).stdout  # fmt: skip
    out = GENERATED_KEYS.sub(r"\1<generated>", out)
    golden = GOLDEN / f"{mode}.yaml"
    if os.environ.get("KUBEGRAFT_UPDATE_GOLDEN") == "1":
        golden.write_text(out)
    assert golden.exists(), f"missing {golden}; run with KUBEGRAFT_UPDATE_GOLDEN=1"
    assert out == golden.read_text(), f"{golden} differs; rerun with KUBEGRAFT_UPDATE_GOLDEN=1"


def test_rendered_crd_is_the_generated_crd(helm_bin: Path) -> None:
    rendered = template(helm_bin, "--show-only", "templates/crds/finetunejobs.yaml")
    source = next(
        d for d in yaml.safe_load_all((ROOT / "manifests/crd/kubegraft.io_finetunejobs.yaml")
                                      .read_text()) if d
    )  # fmt: skip
    assert len(rendered) == 1
    assert rendered[0]["spec"] == source["spec"]
    assert rendered[0]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    off = helm(
        helm_bin,
        "template",
        "k",
        str(CHART),
        f"--kube-version={KUBE_VERSION}",
        "--set",
        "crds.keep=false",
        "--show-only",
        "templates/crds/finetunejobs.yaml",
    )
    assert "resource-policy" not in off.stdout
    none = template(helm_bin, "--set", "crds.enabled=false")
    assert not [d for d in none if d["kind"] == "CustomResourceDefinition"]


def test_rendered_rbac_is_manifests_rbac(helm_bin: Path) -> None:
    """manifests/rbac/operator.yaml (what the other tests run the operator with) grants what
    the chart grants cluster-wide: one source, checked through the real renderer."""
    chart_role = next(d for d in template(helm_bin) if d["kind"] == "ClusterRole")
    docs = yaml.safe_load_all((ROOT / "manifests" / "rbac" / "operator.yaml").read_text())
    manifest_role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert chart_role["rules"] == manifest_role["rules"]


def test_deployment_settings(helm_bin: Path) -> None:
    def deployment(*args: str) -> dict[str, Any]:
        return next(d for d in template(helm_bin, *args) if d["kind"] == "Deployment")

    one = deployment("--set", "trainer.image=registry.local/trainer:cpu")
    pod = one["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert one["spec"]["strategy"]["type"] == "Recreate"
    assert c["args"][:2] == ["--all-namespaces", "--standalone"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KUBEGRAFT_TRAINER_IMAGE"] == "registry.local/trainer:cpu"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["image"] == "ghcr.io/kubegraft/operator:0.1.0"
    many = deployment("--set", "replicaCount=3", "--set", "watchNamespaces={a,b}")
    args = many["spec"]["template"]["spec"]["containers"][0]["args"]
    assert many["spec"]["strategy"]["type"] == "RollingUpdate"
    assert args[:3] == ["--namespace=a", "--namespace=b", "--peering=kubegraft"]


def test_monitoring_is_off_by_default_and_renders_the_charts_dashboards_and_rules(
    helm_bin: Path, tmp_path: Path
) -> None:
    kinds = {d["kind"] for d in template(helm_bin)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    on = template(helm_bin, *MODES["monitoring"])
    assert {d["kind"] for d in on} >= {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    sm = next(d for d in on if d["kind"] == "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    # one ConfigMap per dashboards/*.json, holding the file as it is (hack/dashboards.py)
    maps = {
        key: json.loads(value)
        for d in on
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
        for key, value in d["data"].items()
    }
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert sorted(maps) == [f.name for f in files] == ["operator.json", "training.json"]
    for f in files:
        assert maps[f.name] == json.loads(f.read_text())
    # one PrometheusRule with every group of rules/*.yaml, in file order
    rules = [d for d in on if d["kind"] == "PrometheusRule"]
    assert len(rules) == 1
    groups = [
        g for f in sorted((CHART / "rules").glob("*.yaml")) for g in yaml.safe_load(f.read_text())
    ]
    assert rules[0]["spec"]["groups"] == groups
    assert {g["name"] for g in groups} == {"kubegraft-operator", "kubegraft-training"}
    # without dashboard or rule files (a trimmed copy of the chart), nothing empty is rendered
    chart = tmp_path / "kubegraft"
    shutil.copytree(CHART, chart)
    for f in [*(chart / "dashboards").glob("*.json"), *(chart / "rules").glob("*.yaml")]:
        f.unlink()
    bare = template(helm_bin, *MODES["monitoring"], chart=chart)
    assert not [d for d in bare if d["kind"] == "PrometheusRule"]
    assert not [d for d in bare if d["kind"] == "ConfigMap"]


def test_monitors_select_exactly_the_metrics_endpoints(helm_bin: Path) -> None:
    """The PodMonitor selects rank 0's pod of a job as the operator renders it (not the other
    ranks) on a port that pod has; the ServiceMonitor selects the operator's metrics Service on
    its port `metrics`, which leads to the operator container's port `metrics`."""
    from kubegraft.api.v1alpha1 import FineTuneJob
    from kubegraft_operator.render import render_pod

    docs = template(helm_bin, *MODES["monitoring"])
    pm = next(d for d in docs if d["kind"] == "PodMonitor")
    job = FineTuneJob.model_validate(job_manifest("j", nodes=2))
    pods = [render_pod(job, namespace="team-a", uid="u", rank=r, attempt=0) for r in (0, 1)]

    def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return selector.items() <= labels.items()

    sel = pm["spec"]["selector"]["matchLabels"]
    assert [selected(sel, p["metadata"]["labels"]) for p in pods] == [True, False]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = [{q["name"] for q in p["spec"]["containers"][0]["ports"]} for p in pods]
    assert endpoint["port"] in ports[0]
    assert endpoint["port"] not in ports[1]
    assert endpoint["honorLabels"] is True  # the trainer's own namespace label is kept
    assert pods[0]["metadata"]["annotations"]["prometheus.io/port"] == str(
        next(
            q["containerPort"]
            for q in pods[0]["spec"]["containers"][0]["ports"]
            if q["name"] == endpoint["port"]
        )
    )

    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    services = [d for d in docs if d["kind"] == "Service"]
    chosen = [
        s
        for s in services
        if selected(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert len(chosen) == 1
    (sm_endpoint,) = sm["spec"]["endpoints"]
    (port,) = [q for q in chosen[0]["spec"]["ports"] if q["name"] == sm_endpoint["port"]]
    assert sm_endpoint["port"] == "metrics"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in {q["name"] for q in container["ports"]}
    assert chosen[0]["spec"]["selector"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": "two"}, "replicaCount"),
        ({"watchNamespace": ["a"]}, "watchNamespace"),  # misspelt: unknown key
        ({"crds": {"keep": "yes"}}, "keep"),
        ({"crds": {"kep": True}}, "kep"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"serviceMonitor": {"interval": 30}}, "interval"),
    ],
)
def test_wrong_values_are_rejected_naming_the_key(
    helm_bin: Path, tmp_path: Path, values: dict[str, Any], named: str
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    res = helm(helm_bin, "template", "k", str(CHART), f"--kube-version={KUBE_VERSION}",
               "-f", str(path), check=False)  # fmt: skip
    assert res.returncode != 0
    assert "values don't meet the specifications of the schema" in res.stderr, res.stderr
    assert named in res.stderr, res.stderr


# --------------------------------------------------------------------- on the control plane
def _new_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
        60,
        message=f"{name}/default ServiceAccount",
    )
    return name


def _token_kubeconfig(cluster: Cluster, namespace: str, sa: str, out: Path) -> Path:
    """A kubeconfig that authenticates with a TokenRequest token of ``namespace/sa`` only."""
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": sa, "user": {"token": token.strip()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa}}],
        "current-context": "sa",
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def _can_i(cluster: Cluster, sa: str, verb: str, what: str, where: str) -> bool:
    scope = ["-A"] if where == "*" else ["-n", where]
    res = cluster.kubectl("auth", "can-i", verb, *what.split(), *scope, f"--as={sa}", check=False)
    return res.stdout.strip() == "yes"


def _chart_operator_env(
    cluster: Cluster, namespace: str, name: str
) -> tuple[list[str], dict[str, str]]:
    """The installed Deployment's operator arguments and plain environment, less the progress
    endpoint's certificate and URL: a local process has no Secret volume and listens on
    127.0.0.1 (the harness gives it a test certificate for that)."""
    dep = cluster.kubectl_json("get", "deployment", name, "-n", namespace)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    local = {
        "KUBEGRAFT_PROGRESS_TLS_DIR",
        "KUBEGRAFT_PROGRESS_PORT",
        "KUBEGRAFT_OPERATOR_PROGRESS_URL",
    }
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e and e["name"] not in local}
    return list(c["args"]), env


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    name = _new_namespace(cluster, "kg")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def _instance_objects(cluster: Cluster, release: str, namespace: str) -> list[str]:
    sel = f"app.kubernetes.io/instance={release}"
    names = cluster.kubectl(
        "get", "deployment,replicaset,service,serviceaccount,configmap,role,rolebinding",
        "-n", namespace, "-l", sel, "-o", "name",
    ).stdout.split()  # fmt: skip
    names += cluster.kubectl(
        "get", "clusterrole,clusterrolebinding", "-l", sel, "-o", "name"
    ).stdout.split()
    return names


def test_install_upgrade_uninstall_leaves_only_the_kept_crds(
    cluster: Cluster, crd: list[str], helm_bin: Path, release_namespace: str
) -> None:
    ns, kc = release_namespace, cluster.kubeconfig
    # the session's CRDs were applied with kubectl; the release adopts them
    helm(helm_bin, "install", "kg", str(CHART), "-n", ns, "--take-ownership", kubeconfig=kc)
    dep = cluster.kubectl_json("get", "deployment", "kg-kubegraft", "-n", ns)
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    crd_obj = cluster.kubectl_json("get", "crd", "finetunejobs.kubegraft.io")
    assert crd_obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == "kg"

    def revision_hashes() -> set[str]:
        rs = cluster.kubectl_json("get", "replicaset", "-n", ns, "-l",
                                  "app.kubernetes.io/instance=kg")["items"]  # fmt: skip
        return {r["metadata"]["labels"]["pod-template-hash"] for r in rs}

    before = wait_for(revision_hashes, WAIT, message="the first ReplicaSet")
    # the same values again: no roll
    helm(helm_bin, "upgrade", "kg", str(CHART), "-n", ns, kubeconfig=kc)
    assert revision_hashes() == before
    # a changed value rolls the operator: a new pod template, so a new ReplicaSet
    helm(helm_bin, "upgrade", "kg", str(CHART), "-n", ns, "--set", "trainer.image=reg.local/t:2",
         kubeconfig=kc)  # fmt: skip
    after = wait_for(
        lambda: (h := revision_hashes()) - before and h, WAIT, message="a new ReplicaSet"
    )
    assert len(after) == 2
    _, env = _chart_operator_env(cluster, ns, "kg-kubegraft")
    assert env["KUBEGRAFT_TRAINER_IMAGE"] == "reg.local/t:2"

    helm(helm_bin, "uninstall", "kg", "-n", ns, "--wait", "--timeout=120s", kubeconfig=kc)
    wait_for(lambda: not _instance_objects(cluster, "kg", ns), WAIT, message="objects gone")
    for name in ("finetunejobs.kubegraft.io", "kopfpeerings.kopf.dev",
                 "clusterkopfpeerings.kopf.dev"):  # fmt: skip
        assert cluster.kubectl("get", "crd", name, check=False).returncode == 0, name


SA_NEEDS = [
    ("create", "pods"),
    ("delete", "pods"),
    ("watch", "pods"),
    ("patch", "finetunejobs.kubegraft.io --subresource=status"),
    ("patch", "finetunejobs.kubegraft.io"),
    ("update", "finetunejobs.kubegraft.io --subresource=finalizers"),
    ("create", "configmaps"),
    ("create", "services"),
    ("get", "persistentvolumeclaims"),
    ("create", "events"),
    # a predecessor's leftovers of the same name (create_if_absent deletes them by UID)
    ("delete", "configmaps"),
    ("delete", "services"),
]
SA_MUST_NOT = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("create", "pods --subresource=exec"),
    ("update", "finetunejobs.kubegraft.io"),
    ("update", "finetunejobs.kubegraft.io --subresource=status"),
    ("delete", "persistentvolumeclaims"),
    ("patch", "persistentvolumeclaims"),
    ("escalate", "roles"),
    ("bind", "roles"),
    # rank 0 reports progress with a pod-bound token: no per-job identities or grants
    ("create", "serviceaccounts"),
    ("create", "roles"),
    ("create", "rolebindings"),
]


def test_cluster_wide_release_permissions_and_operator_reconciles_with_its_token(
    cluster: Cluster, crd: list[str], helm_bin: Path, release_namespace: str, namespace: str,
    kube: Kube, tmp_path: Path,
) -> None:  # fmt: skip
    ns = release_namespace
    helm(helm_bin, "install", "kgc", str(CHART), "-n", ns, "--take-ownership",
         "--set", "trainer.image=registry.local/kubegraft/trainer:cpu",
         kubeconfig=cluster.kubeconfig)  # fmt: skip
    try:
        sa = f"system:serviceaccount:{ns}:kgc-kubegraft"
        for verb, what in SA_NEEDS:
            assert _can_i(cluster, sa, verb, what, "*"), (verb, what)
        for verb, what in [("list", "nodes"), ("watch", "namespaces")]:
            assert _can_i(cluster, sa, verb, what, "*"), (verb, what)
        for verb, what in [*SA_MUST_NOT, ("delete", "nodes"), ("create", "clusterroles"),
                           ("create", "namespaces"), ("list", "secrets")]:  # fmt: skip
            assert not _can_i(cluster, sa, verb, what, "*"), (verb, what)

        args, env = _chart_operator_env(cluster, ns, "kgc-kubegraft")
        kubeconfig = _token_kubeconfig(cluster, ns, "kgc-kubegraft", tmp_path / "kubeconfig")
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", env=env)
        # the process runs what the Deployment runs (only the liveness address differs)
        assert [a for a in op.argv()[3:] if not a.startswith("--liveness")] == [
            a for a in args if not a.startswith("--liveness")
        ]
        manifest = job_manifest("hello", nodes=1)
        manifest["spec"]["output"] = {"ephemeral": True}
        with op:
            kube.create_job(namespace, manifest)
            wait_for(lambda: state_is(kube, namespace, "hello", "Succeeded"), WAIT,
                     message="Succeeded")  # fmt: skip
        assert "Forbidden" not in op.logs(), op.logs()[-3000:]
        events = dict(kube.events(namespace, "hello"))
        assert events, "the operator posted Events with the chart's permissions"
    finally:
        helm(helm_bin, "uninstall", "kgc", "-n", ns, kubeconfig=cluster.kubeconfig, check=False)


def test_namespaced_release_is_confined_to_its_namespaces(
    cluster: Cluster, crd: list[str], helm_bin: Path, release_namespace: str, kube: Kube,
    tmp_path: Path,
) -> None:  # fmt: skip
    ns = release_namespace
    team_a, team_b, other = (_new_namespace(cluster, p) for p in ("ta", "tb", "tc"))
    try:
        helm(helm_bin, "install", "kgn", str(CHART), "-n", ns, "--set", "crds.enabled=false",
             "--set", f"watchNamespaces={{{team_a},{team_b}}}",
             kubeconfig=cluster.kubeconfig)  # fmt: skip
        sa = f"system:serviceaccount:{ns}:kgn-kubegraft"
        for where in (team_a, team_b):
            for verb, what in SA_NEEDS:
                assert _can_i(cluster, sa, verb, what, where), (verb, what, where)
            for verb, what in SA_MUST_NOT:
                assert not _can_i(cluster, sa, verb, what, where), (verb, what, where)
        for verb, what in SA_NEEDS:  # outside watchNamespaces: nothing
            assert not _can_i(cluster, sa, verb, what, other), (verb, what, other)
            assert not _can_i(cluster, sa, verb, what, "*"), (verb, what, "all namespaces")
        assert _can_i(cluster, sa, "list", "nodes", "*")
        assert not _can_i(cluster, sa, "create", "namespaces", "*")
        assert not _can_i(cluster, sa, "patch", "clusterkopfpeerings.kopf.dev", "*")

        args, env = _chart_operator_env(cluster, ns, "kgn-kubegraft")
        assert args[:3] == [f"--namespace={team_a}", f"--namespace={team_b}", "--standalone"]
        kubeconfig = _token_kubeconfig(cluster, ns, "kgn-kubegraft", tmp_path / "kubeconfig")
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", namespace=team_a, env=env,
                             extra_args=[f"--namespace={team_b}"])  # fmt: skip
        manifest = job_manifest("hello", nodes=1)
        manifest["spec"]["output"] = {"ephemeral": True}
        with op:
            kube.create_job(team_b, manifest)
            kube.create_job(other, manifest)
            wait_for(lambda: state_is(kube, team_b, "hello", "Succeeded"), WAIT,
                     message="Succeeded in a watched namespace")  # fmt: skip
            # the job outside watchNamespaces is never touched
            assert kube.status(other, "hello") == {}
            assert kube.pods(other, "hello") == []
        assert "Forbidden" not in op.logs(), op.logs()[-3000:]
    finally:
        helm(helm_bin, "uninstall", "kgn", "-n", ns, kubeconfig=cluster.kubeconfig, check=False)
        for name in (team_a, team_b, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
