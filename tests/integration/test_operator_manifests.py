"""The operator's install manifests are valid for the real API server, and its ClusterRole is
least-privilege (every other operator test runs with exactly these permissions)."""

from __future__ import annotations

import pytest
import yaml
from operator_harness import repo_root

from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration

MANIFESTS = repo_root() / "manifests"


def test_rbac_peering_and_deployment_apply_to_the_api_server(
    cluster: Cluster, crd: list[str]
) -> None:
    cluster.kubectl("apply", "-f", str(MANIFESTS / "rbac"))
    cluster.kubectl("apply", "-f", str(MANIFESTS / "operator" / "peering.yaml"))
    for name in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    cluster.kubectl("apply", "-f", str(MANIFESTS / "operator" / "peering-object.yaml"))
    out = cluster.kubectl(
        "apply", "--dry-run=server", "-f", str(MANIFESTS / "operator" / "deployment.yaml")
    )
    assert "deployment.apps/kubegraft-operator" in out.stdout


def test_cluster_role_is_least_privilege(cluster: Cluster) -> None:
    docs = list(yaml.safe_load_all((MANIFESTS / "rbac" / "operator.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"]
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    sa = "--as=system:serviceaccount:kubegraft-system:kubegraft-operator"
    cluster.kubectl("apply", "-f", str(MANIFESTS / "rbac"))
    allowed = [
        ("create", "pods"),
        ("patch", "finetunejobs.kubegraft.io/status"),
        ("create", "roles"),
    ]
    denied = [
        ("get", "secrets"),
        ("create", "pods --subresource=exec"),
        ("update", "finetunejobs.kubegraft.io"),
        ("create", "clusterroles"),
        ("delete", "nodes"),
    ]
    for verb, what in allowed + denied:
        res = cluster.kubectl("auth", "can-i", verb, *what.split(), "-A", sa, check=False)
        assert res.stdout.strip() == ("yes" if (verb, what) in allowed else "no"), (verb, what)
