"""The operator's RBAC manifest (generated from the Helm chart's rules, hack/chartgen.py) and
kopf's peering CRDs are valid for the real API server, and the ClusterRole is least-privilege
(every other operator test runs with exactly these permissions). The operator's Deployment is
the chart's: tests/integration/test_helm_chart.py."""

from __future__ import annotations

import pytest
import yaml
from operator_harness import repo_root

from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration

MANIFESTS = repo_root() / "manifests"


def test_rbac_and_peering_crds_apply_to_the_api_server(cluster: Cluster, crd: list[str]) -> None:
    out = cluster.kubectl("apply", "-f", str(MANIFESTS / "rbac"))
    assert "clusterrole.rbac.authorization.k8s.io/kubegraft-operator" in out.stdout
    cluster.kubectl("apply", "-f", str(MANIFESTS / "operator" / "peering.yaml"))
    for name in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")


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
        ("patch", "finetunejobs.kubegraft.io --subresource=status"),
        ("create", "tokenreviews.authentication.k8s.io"),  # the progress endpoint
    ]
    denied = [
        ("get", "secrets"),
        ("create", "pods --subresource=exec"),
        ("update", "finetunejobs.kubegraft.io"),
        ("create", "clusterroles"),
        ("delete", "nodes"),
        # rank 0 reports progress with a pod-bound token: no per-job identities or grants
        ("create", "roles"),
        ("create", "rolebindings"),
        ("create", "serviceaccounts"),
    ]
    for verb, what in allowed + denied:
        res = cluster.kubectl("auth", "can-i", verb, *what.split(), "-A", sa, check=False)
        assert res.stdout.strip() == ("yes" if (verb, what) in allowed else "no"), (verb, what)
