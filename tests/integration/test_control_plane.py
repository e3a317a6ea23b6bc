"""The local control plane behaves like a real cluster where the operator's tests rely on it.

RBAC is enforced, the fake GPU nodes are schedulable with the GPUs they advertise, kwok's
outcome Stages finish pods as a test asks, and the controller-manager garbage-collects owned
objects. Every wait is on a condition (``kubectl wait``) with a timeout.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from kubegraft.devcluster.cluster import Cluster, load
from kubegraft.devcluster.manifests import (
    DELAY_ANNOTATION,
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    OUTCOME_LABEL,
)

pytestmark = pytest.mark.integration


def pod(
    name: str,
    *,
    gpus: int = 0,
    outcome: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A minimal pod; kwok plays its kubelet, so the image is never pulled."""
    container: dict[str, Any] = {"name": "main", "image": "example.invalid/trainer:1"}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {OUTCOME_LABEL: outcome} if outcome else {},
            "annotations": annotations or {},
        },
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def get(cluster: Cluster, namespace: str, *what: str) -> Any:
    return json.loads(cluster.kubectl("get", "-n", namespace, *what, "-o", "json").stdout)


def wait(cluster: Cluster, namespace: str, target: str, condition: str, timeout: int = 60) -> None:
    cluster.kubectl(
        "wait",
        "-n",
        namespace,
        target,
        f"--for={condition}",
        f"--timeout={timeout}s",
        timeout=timeout + 30,
    )


def test_api_server_is_a_real_kube_apiserver(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0"
    assert cluster.server.startswith("https://127.0.0.1:")
    client = cluster.api_client()
    try:
        from kubernetes.client import CoreV1Api

        names = {ns.metadata.name for ns in CoreV1Api(client).list_namespace().items if ns.metadata}
    finally:
        client.close()  # type: ignore[no-untyped-call]
    assert {"default", "kube-system"} <= names


def test_rbac_denies_a_service_account_without_a_binding(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "x", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:x"
    denied = cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
    assert (denied.returncode, denied.stdout.strip()) == (1, "no")
    cluster.kubectl(
        "create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "x-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:x",
        "-n",
        namespace,
    )
    allowed = cluster.kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False)
    assert (allowed.returncode, allowed.stdout.strip()) == (0, "yes")
    # The binding is namespaced: other namespaces stay closed to it.
    elsewhere = cluster.kubectl("auth", "can-i", "list", "pods", "-n", "default", who, check=False)
    assert elsewhere.stdout.strip() == "no"


def test_fake_gpu_nodes_are_ready_with_eight_gpus(cluster: Cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert len(nodes) == 4
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"][GPU_RESOURCE] == "8"
        assert node["status"]["capacity"][GPU_RESOURCE] == "8"


def test_gpu_requests_are_scheduled_within_node_capacity(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod("fits", gpus=8, outcome="run"), pod("too-big", gpus=9))
    wait(cluster, namespace, "pod/fits", "jsonpath={.status.phase}=Running")
    assert get(cluster, namespace, "pod/fits")["spec"]["nodeName"].startswith("gpu-node-")
    wait(cluster, namespace, "pod/too-big", "condition=PodScheduled=false")
    big = get(cluster, namespace, "pod/too-big")
    scheduled = next(c for c in big["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["reason"] == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in scheduled["message"]
    assert big["status"]["phase"] == "Pending"
    assert "nodeName" not in big["spec"]


def test_outcome_label_succeeds_or_fails_a_bare_pod(cluster: Cluster, namespace: str) -> None:
    apply(
        cluster,
        namespace,
        pod("ok", outcome="succeed", annotations={DELAY_ANNOTATION: "1s"}),
        pod("oom", outcome="fail", annotations={EXIT_CODE_ANNOTATION: "137"}),
        pod("plain-fail", outcome="fail"),
    )
    wait(cluster, namespace, "pod/ok", "jsonpath={.status.phase}=Succeeded")
    wait(cluster, namespace, "pod/oom", "jsonpath={.status.phase}=Failed")
    wait(cluster, namespace, "pod/plain-fail", "jsonpath={.status.phase}=Failed")
    ok = get(cluster, namespace, "pod/ok")["status"]["containerStatuses"][0]["state"]
    assert ok["terminated"]["exitCode"] == 0
    oom = get(cluster, namespace, "pod/oom")["status"]["containerStatuses"][0]["state"]
    assert oom["terminated"]["exitCode"] == 137
    plain = get(cluster, namespace, "pod/plain-fail")["status"]["containerStatuses"][0]["state"]
    assert plain["terminated"]["exitCode"] == 1


def test_outcome_label_controls_job_pods(cluster: Cluster, namespace: str) -> None:
    def job(name: str, outcome: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        template = pod(name, outcome=outcome, annotations=annotations)
        del template["apiVersion"], template["kind"], template["metadata"]["name"]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": template},
        }

    apply(
        cluster,
        namespace,
        job("keeps-running", "run"),
        job("crashes", "fail", {EXIT_CODE_ANNOTATION: "42"}),
    )
    wait(cluster, namespace, "job/crashes", "condition=Failed", timeout=90)
    crashed = get(cluster, namespace, "pods", "-l", "job-name=crashes")["items"]
    assert [
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] for p in crashed
    ] == [42]
    # The stock kwok Stage would complete a Job's pod; the `run` label keeps it Running.
    running = get(cluster, namespace, "pods", "-l", "job-name=keeps-running")["items"]
    assert [p["status"]["phase"] for p in running] == ["Running"]
    assert get(cluster, namespace, "job/keeps-running")["status"].get("succeeded") is None


def test_garbage_collector_deletes_owned_objects(cluster: Cluster, namespace: str) -> None:
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owner"},
            "data": {"k": "v"},
        },
    )
    owner = get(cluster, namespace, "configmap/owner")
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    apply(
        cluster,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "owned", "ownerReferences": [ref]},
        },
    )
    cluster.kubectl("delete", "-n", namespace, "configmap/owner")
    wait(cluster, namespace, "configmap/owned", "delete", timeout=60)
    gone = cluster.kubectl("get", "-n", namespace, "configmap/owned", check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_restarted_apiserver_serves_again_and_is_recorded(cluster: Cluster) -> None:
    before = {p.name: p.pid for p in cluster.processes}
    fresh = cluster.restart("kube-apiserver")
    assert fresh.pid != before["kube-apiserver"]
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "--raw", "/readyz", check=False).returncode != 0:
        assert time.monotonic() < deadline, "kube-apiserver did not serve again within 60s"
        time.sleep(0.5)
    cluster.kubectl("wait", "--for=condition=Ready", "node/gpu-node-0", "--timeout=60s")
    recorded = load(cluster.state_dir)
    assert recorded is not None
    assert {p.name: p.pid for p in recorded.processes}["kube-apiserver"] == fresh.pid
    assert all(cluster.alive().values())
