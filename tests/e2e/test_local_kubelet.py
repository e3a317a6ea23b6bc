"""The local kubelet behaves as a kubelet where the operator relies on it.

The operator creates a gang's config ConfigMap in the same parallel wave as its pods (one
round trip, docs/operator.md), so a kubelet may see a pod before its ConfigMap: a real
kubelet retries the mount until the ConfigMap exists. The local kubelet failed the pod
instead, which failed tests/e2e/test_observability.py in CI (2026-12-01) whenever the
ConfigMap's create answered a few milliseconds after the pods'.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from local_kubelet import Outcome, repo_kubelet
from operator_harness import Kube, wait_for

from kubegraft.devcluster.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_a_pod_seen_before_its_config_map_waits_for_it_and_runs(
    cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "python:3.11",
                    "command": ["python", "-c"],
                    "args": ["print(open('/etc/probe/greeting').read())"],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/etc/probe"}],
                }
            ],
            "volumes": [{"name": "cfg", "configMap": {"name": "probe-config"}}],
        },
    }
    with repo_kubelet(
        kube.api_client,  # type: ignore[arg-type]
        cluster.server,
        cluster.kubeconfig,
        namespace,
        tmp_path,
        label_selector="app=probe",
    ) as kubelet:
        kube.core.create_namespaced_pod(namespace, pod)

        def waiting() -> bool:
            kubelet.check()
            local = kubelet.pod("probe")
            return local is not None and local.waiting_for == "probe-config"

        wait_for(waiting, 120, message="the pod waiting for its ConfigMap")
        kube.core.create_namespaced_config_map(
            namespace,
            {"metadata": {"name": "probe-config"}, "data": {"greeting": "hello from the volume"}},
        )

        def finished() -> Outcome | None:
            kubelet.check()
            return kubelet.outcome("probe")

        outcome = wait_for(finished, 120, message="the pod's exit")
        local = kubelet.pod("probe")
        assert local is not None
        assert outcome.exit_code == 0, local.logs()
        assert "hello from the volume" in local.logs()
        assert local.waiting_for is None
