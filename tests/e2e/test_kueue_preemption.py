"""Kueue preempts a training gang for real, and the gang resumes from its checkpoint.

The real Kueue (the ``kueue`` fixture) holds a ClusterQueue of 2 GPUs. A low-priority
FineTuneJob (the shrunk quickstart, 2 nodes x 1 GPU) trains as **local processes standing in
for a kubelet** (:mod:`local_kubelet`, as in test_local_gang.py), so its checkpoints are real
files. A high-priority job then asks for the same 2 GPUs (its pods are kwok-played and run until
the test deletes the job). Kueue evicts the low job's Workload; the operator stops the gang
(pod deletion: SIGTERM, the trainer saves a checkpoint and exits), clears the reservation and
the job waits as Queued; when the high job is gone, Kueue admits the low job again, and its new
gang resumes from the checkpoint and succeeds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_kubelet import LocalKubelet, repo_kubelet
from operator_harness import Kube, OperatorProcess, job_manifest, wait_for
from test_local_gang import RUN_TIMEOUT, finished, quickstart_job

from kubegraft.devcluster.cluster import Cluster
from kubegraft_operator import kueue as contract
from kubegraft_trainer.checkpointing import list_checkpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SUFFIX = secrets.token_hex(3)
FLAVOR, LOW, HIGH = f"kg-e2e-gpu-{SUFFIX}", f"kg-e2e-low-{SUFFIX}", f"kg-e2e-high-{SUFFIX}"


@pytest.fixture
def queue(kueue: Cluster, namespace: str) -> Iterator[str]:
    """A flavor, two PriorityClasses, a 2-GPU ClusterQueue for the namespace, a LocalQueue."""
    cq = f"cq-{namespace}"[:63]
    cluster_objects = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}},
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": LOW},
            "value": 100,
        },
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": HIGH},
            "value": 1000,
        },
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": FLAVOR,
                                "resources": [{"name": "nvidia.com/gpu", "nominalQuota": 2}],
                            }
                        ],
                    }
                ],
            },
        },
    ]
    kueue.apply(cluster_objects)
    kueue.apply(
        [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": "gpus", "namespace": namespace},
                "spec": {"clusterQueue": cq},
            }
        ]
    )
    yield "gpus"
    for obj in reversed(cluster_objects):
        kueue.kubectl(
            "delete", obj["kind"].lower(), obj["metadata"]["name"], "--wait=false", check=False
        )


@pytest.fixture
def operator(
    queue: str, op_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    with OperatorProcess(op_kubeconfig, tmp_path / "operator.log", namespace=namespace) as op:
        yield op
    print(op.logs()[-4000:])


@pytest.fixture
def kubelet(cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path) -> Iterator[LocalKubelet]:
    """Runs the low job's pods only; the high job's pods are kwok's."""
    with repo_kubelet(
        kube.api_client,  # type: ignore[arg-type]
        cluster.server,
        cluster.kubeconfig,
        namespace,
        tmp_path,
        label_selector="kubegraft.io/job-name=low",
        # The pods' grace period is 120 s; the default cap of 10 s SIGKILLed a rank-0 save
        # under load (exit 137), which a real kubelet would not have done.
        max_grace=90.0,
    ) as k:
        yield k


def wl_conditions(kube: Kube, namespace: str, job: str) -> dict[str, tuple[str, str]]:
    for wl in kube.custom.list_namespaced_custom_object(
        contract.GROUP, contract.VERSION, namespace, "workloads"
    )["items"]:
        if wl["metadata"]["labels"].get("kubegraft.io/job-name") == job:
            conds = (wl.get("status") or {}).get("conditions") or []
            return {c["type"]: (c["status"], c["reason"]) for c in conds}
    return {}


def test_preempted_gang_checkpoints_waits_and_resumes_from_its_checkpoint(
    kube: Kube,
    namespace: str,
    queue: str,
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    tmp_path: Path,
) -> None:
    output = tmp_path / "output"
    # Without the feature cache every step runs the encoder: slow enough that the preemption
    # (right after the first checkpoint, at step 5) lands mid-run, short enough to finish.
    steps = 80
    low = quickstart_job("low", output, max_steps=steps, cache_features=False, checkpoint_every=5)
    low["metadata"]["labels"] = {contract.QUEUE_LABEL: queue}
    low["spec"]["pod"]["priorityClassName"] = LOW
    kube.create_job(namespace, low)

    def checkpointed() -> int | None:
        kubelet.check()
        if kube.status(namespace, "low").get("state") != "Running":
            return None
        saved = (
            list_checkpoints(output / "checkpoints") if (output / "checkpoints").is_dir() else []
        )
        return saved[-1][0] if saved else None

    saved_step = wait_for(checkpointed, RUN_TIMEOUT, interval=0.2, message="low checkpointed")

    # kwok keeps high's pods Running until the test deletes it: the quota returns only then,
    # so low's queued state and its Workload's conditions are seen before it is readmitted.
    high = job_manifest("high", nodes=2, gpus_per_node=1, outcome="run")
    high["metadata"]["labels"] = {contract.QUEUE_LABEL: queue}
    high["spec"]["pod"]["priorityClassName"] = HIGH
    kube.create_job(namespace, high)

    preempted = wait_for(
        lambda: (
            (s := kube.status(namespace, "low")).get("state") == "Queued"
            and s.get("reason") == "Preempted"
            and s
        ),
        120,
        message="low preempted",
    )
    assert preempted["progress"]["step"] < steps, "low finished before it was preempted"
    # The old gang got SIGTERM (not SIGKILL): rank 0 saved a checkpoint and exited 75.
    old0 = wait_for(lambda: kubelet.outcome("low-worker-0-a0"), 120, message="old rank 0 exited")
    assert old0.exit_code == 75, old0
    conds = wait_for(
        lambda: (
            (c := wl_conditions(kube, namespace, "low")).get("Requeued", ("",))[0] == "True" and c
        ),
        120,
        message="low's Workload requeued",
    )
    assert conds["Evicted"] == ("True", "Preempted"), conds
    assert conds["QuotaReserved"][0] == "False", conds
    # No pod of low runs while it is queued; the high job has the GPUs.
    assert [p for p in kube.pods(namespace, "low") if p["status"].get("phase") == "Running"] == []
    wait_for(
        lambda: kube.status(namespace, "high").get("state") == "Running", 120, message="high runs"
    )
    kube.delete_job(namespace, "high")  # its Workload goes with it: the quota returns

    done = wait_for(
        lambda: finished(kube, namespace, "low", kubelet),
        2 * RUN_TIMEOUT,  # a loaded machine ran ~1 step/s (load average 25 on 2 cores)
        interval=1.0,
        message="low finished",
    )
    assert done["state"] == "Succeeded", done
    assert (done["attempt"], done["restarts"], done["disruptions"]) == (1, 0, 0), done
    assert done["progress"]["step"] == steps
    log = kubelet.pods["low-worker-0-a1"].logs()
    assert "resumed from" in log, log[-3000:]
    resumed_at = int(log.split("resumed from", 1)[1].split(" at step ", 1)[1].split()[0])
    assert saved_step <= resumed_at < steps, (saved_step, resumed_at)
    assert wait_for(
        lambda: wl_conditions(kube, namespace, "low").get("Finished") == ("True", "Succeeded"),
        60,
        message="low's Workload finished",
    )
