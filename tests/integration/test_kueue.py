"""FineTuneJobs queued, admitted and preempted by the real Kueue (v0.17, built from the Go module
proxy) on the local control plane; kwok plays the kubelet (pods choose their fate by label).

Kueue runs with FineTuneJob as an external framework; its webhooks are registered by URL and
really called by the API server (the ``kueue`` fixture proves it at start-up). Each test gets
its own ClusterQueue (selecting only the test's namespace), a LocalQueue, and shares one
ResourceFlavor and two PriorityClasses. The operator runs with its real RBAC.

The gang-with-a-real-checkpoint version of preemption is tests/e2e/test_kueue_preemption.py.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import Kube, OperatorProcess, job_manifest, state_is, wait_for

from kubegraft.devcluster.cluster import Cluster
from kubegraft_operator import kueue as contract

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WAIT = 120.0
"""Generous: the machine is shared and busy; the waits return as soon as the condition holds."""
FLAVOR_LABEL = ("nvidia.com/gpu.present", "true")
"""The flavor's node label: every fake GPU node has it, so admitted pods stay schedulable."""
SUFFIX = secrets.token_hex(3)
FLAVOR = f"kg-gpu-{SUFFIX}"
LOW, HIGH = f"kg-low-{SUFFIX}", f"kg-high-{SUFFIX}"


@pytest.fixture(scope="module")
def kueue_objects(kueue: Cluster) -> Iterator[Cluster]:
    """The ResourceFlavor and the PriorityClasses the tests share (cluster-scoped)."""
    objects = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": dict([FLAVOR_LABEL])},
        },
        *(
            {
                "apiVersion": "scheduling.k8s.io/v1",
                "kind": "PriorityClass",
                "metadata": {"name": name},
                "value": value,
            }
            for name, value in ((LOW, 100), (HIGH, 1000))
        ),
    ]
    kueue.apply(objects)
    yield kueue
    for obj in objects:
        kind = obj["kind"].lower()
        kueue.kubectl("delete", kind, obj["metadata"]["name"], "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    kueue_objects: Cluster, op_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the module, started after Kueue's CRDs exist."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(op_kubeconfig, log, namespace="t-*") as op:
        yield op
    print(op.logs()[-4000:])


def queues(cluster: Cluster, namespace: str, gpus: int) -> tuple[str, str]:
    """A ClusterQueue with ``gpus`` nvidia.com/gpu for the test's namespace only (preempting
    lower priorities within it) and a LocalQueue pointing at it; their names."""
    cq, lq = f"cq-{namespace}"[:63], "gpus"
    cluster.apply(
        [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "ClusterQueue",
                "metadata": {"name": cq},
                "spec": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "preemption": {"withinClusterQueue": "LowerPriority"},
                    "resourceGroups": [
                        {
                            "coveredResources": ["nvidia.com/gpu"],
                            "flavors": [
                                {
                                    "name": FLAVOR,
                                    "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}],
                                }
                            ],
                        }
                    ],
                },
            },
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": lq, "namespace": namespace},
                "spec": {"clusterQueue": cq},
            },
        ]
    )
    return cq, lq


@pytest.fixture
def cleanup_queues(cluster: Cluster, namespace: str) -> Iterator[None]:
    yield
    cluster.kubectl("delete", "clusterqueue", f"cq-{namespace}"[:63], "--wait=false", check=False)


def queued_job(
    name: str, lq: str | None, *, priority: str | None = None, **kw: Any
) -> dict[str, Any]:
    """2 nodes x 4 GPUs (8 in all), in LocalQueue ``lq`` (None: no queue name)."""
    manifest = job_manifest(name, nodes=2, gpus_per_node=4, **kw)
    if lq is not None:
        manifest["metadata"]["labels"] = {contract.QUEUE_LABEL: lq}
    if priority is not None:
        manifest["spec"]["pod"]["priorityClassName"] = priority
    return manifest


def workloads(kube: Kube, namespace: str) -> dict[str, dict[str, Any]]:
    """The namespace's Workloads by the FineTuneJob they are for."""
    items = kube.custom.list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, "workloads"
    )["items"]
    return {w["metadata"]["labels"].get("kubegraft.io/job-name", ""): w for w in items}


def wl_conditions(kube: Kube, namespace: str, job: str) -> dict[str, tuple[str, str]]:
    """The job's Workload's conditions: type -> (status, reason)."""
    wl = workloads(kube, namespace).get(job) or {}
    return {
        c["type"]: (c["status"], c["reason"])
        for c in (wl.get("status") or {}).get("conditions") or []
    }


def wl_has(kube: Kube, ns: str, job: str, **want: str) -> dict[str, tuple[str, str]] | None:
    """The Workload's conditions once each ``type=status`` in ``want`` holds."""
    got = wl_conditions(kube, ns, job)
    return got if all(got.get(t, ("",))[0] == s for t, s in want.items()) else None


def printed_columns(table: str) -> dict[str, str]:
    """The first row of ``kubectl get`` output by column (cells may be empty, so they are cut
    at the header's column offsets, not split on spaces)."""
    header, row = table.splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    ends = [*starts[1:], None]
    return {header[a:b].strip(): row[a:b].strip() for a, b in zip(starts, ends, strict=True)}


def pod_names(kube: Kube, namespace: str, job: str) -> list[str]:
    return sorted(
        p["metadata"]["name"]
        for p in kube.pods(namespace, job)
        if not p["metadata"].get("deletionTimestamp")
        and p["status"].get("phase") in ("Pending", "Running")
    )


def test_admission_within_quota_holds_the_next_job_and_starts_it_when_quota_returns(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    cleanup_queues: None,
) -> None:
    cq, lq = queues(cluster, namespace, gpus=8)
    kube.create_job(namespace, queued_job("first", lq, outcome="succeed", delay="15s"))
    first = wait_for(
        lambda: state_is(kube, namespace, "first", "Running"), WAIT, message="first runs"
    )
    assert first["reason"] == "GangRunning"
    # Admitted through its Workload: one pod set of 2, the flavor's node label in the pods.
    wl = workloads(kube, namespace)["first"]
    assert wl["metadata"]["name"] == contract.workload_name(
        "first", kube.job(namespace, "first")["metadata"]["uid"]
    )  # type: ignore[index]
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [(contract.POD_SET, 2)]
    assert wl["status"]["admission"]["clusterQueue"] == cq
    for p in kube.pods(namespace, "first"):
        assert p["spec"]["nodeSelector"][FLAVOR_LABEL[0]] == FLAVOR_LABEL[1], p["spec"]
        assert p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert wl_has(kube, namespace, "first", QuotaReserved="True", Admitted="True")

    # The second job does not fit (8 GPUs taken): Queued, no pods, the queues named.
    kube.create_job(namespace, queued_job("second", lq, outcome="succeed", delay="1s"))
    second = wait_for(
        lambda: (
            (s := state_is(kube, namespace, "second", "Queued"))
            and s.get("reason") == "WaitingForQuota"
            # Kueue's own word on why, once its scheduler has tried (the condition's message)
            and "insufficient" in s.get("message", "")
            and s
        ),
        WAIT,
        message="second waits for quota",
    )
    assert f"LocalQueue {namespace}/{lq}, ClusterQueue {cq}" in second["message"], second
    assert pod_names(kube, namespace, "second") == []
    assert state_is(kube, namespace, "first", "Running"), "first finished before second was seen"
    assert wl_has(kube, namespace, "second", QuotaReserved="False")
    wide = cluster.kubectl("get", "ftj", "second", "-n", namespace, "-o", "wide").stdout
    cells = printed_columns(wide)
    assert (cells["STATE"], cells["QUEUE"], cells["REASON"]) == ("Queued", lq, "WaitingForQuota")

    # A job without a queue name is untouched by Kueue: it runs at once, quota or not.
    kube.create_job(namespace, queued_job("free", None, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "free", "Running"), WAIT, message="free runs")

    # Deleting a queued job leaves no Workload behind.
    kube.create_job(namespace, queued_job("dropped", lq, outcome="succeed"))
    wait_for(lambda: "dropped" in workloads(kube, namespace), WAIT, message="dropped's Workload")
    kube.delete_job(namespace, "dropped")
    wait_for(
        lambda: (
            "dropped" not in workloads(kube, namespace) and kube.job(namespace, "dropped") is None
        ),
        WAIT,
        message="dropped and its Workload gone",
    )

    # The first finishes: its Workload is Finished, and the second starts on its own.
    done = wait_for(
        lambda: state_is(kube, namespace, "first", "Succeeded"), WAIT, message="first done"
    )
    assert done["reason"] == "Completed"
    assert wait_for(lambda: wl_has(kube, namespace, "first", Finished="True"), WAIT)[
        "Finished"
    ] == (
        "True",
        "Succeeded",
    )
    wait_for(lambda: state_is(kube, namespace, "second", "Succeeded"), WAIT, message="second done")
    assert wait_for(lambda: wl_has(kube, namespace, "second", Finished="True"), WAIT)
    assert "free" not in workloads(kube, namespace)
    kube.delete_job(namespace, "free")


def test_a_higher_priority_job_preempts_a_running_one_which_resumes_when_quota_returns(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    cleanup_queues: None,
) -> None:
    _, lq = queues(cluster, namespace, gpus=8)
    kube.create_job(namespace, queued_job("low", lq, priority=LOW, outcome="run"))
    low = wait_for(lambda: state_is(kube, namespace, "low", "Running"), WAIT, message="low runs")
    assert low["attempt"] == 0
    assert workloads(kube, namespace)["low"]["spec"]["priority"] == 100

    kube.create_job(namespace, queued_job("high", lq, priority=HIGH, outcome="run"))
    # Kueue preempts low: its gang is stopped, it goes back to Queued, its Workload requeued.
    preempted = wait_for(
        lambda: (
            (s := state_is(kube, namespace, "low", "Queued"))
            and s.get("reason") == "Preempted"
            and s
        ),
        WAIT,
        message="low preempted",
    )
    assert preempted["attempt"] == 1, preempted
    conds = wait_for(
        lambda: wl_has(
            kube, namespace, "low", Evicted="True", Requeued="True", QuotaReserved="False"
        ),
        WAIT,
        message="low's Workload evicted and requeued",
    )
    assert conds["Evicted"][1] == "Preempted"
    assert conds["Requeued"][1] == "Preempted"
    wait_for(lambda: pod_names(kube, namespace, "low") == [], WAIT, message="low's gang stopped")

    # high runs (kwok keeps it Running until it is deleted: low's queued state is seen first);
    # once it is gone the quota returns and low resumes as a new attempt.
    wait_for(lambda: state_is(kube, namespace, "high", "Running"), WAIT, message="high runs")
    kube.delete_job(namespace, "high")
    resumed = wait_for(
        lambda: state_is(kube, namespace, "low", "Running"), WAIT, message="low resumed"
    )
    assert resumed["attempt"] == 1
    assert resumed["restarts"] == 0
    assert pod_names(kube, namespace, "low") == ["low-worker-0-a1", "low-worker-1-a1"]
    assert wl_has(kube, namespace, "low", QuotaReserved="True", Admitted="True", Evicted="False")
    kube.delete_job(namespace, "low")
    wait_for(lambda: "low" not in workloads(kube, namespace), WAIT, message="low's Workload gone")
