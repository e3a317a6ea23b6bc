"""Kueue's Workload contract in the state machine, path by path (pure; the real Kueue runs in
tests/integration/test_kueue.py): queued without pods, the Workload's shape, admission with the
flavor injected, eviction (gang stopped, then the reservation cleared, a new attempt), finish,
and queued time left out of activeDeadlineSeconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FineTuneJob, JobState
from kubegraft_operator import conditions as cond
from kubegraft_operator import kueue
from kubegraft_operator.decide import (
    QUEUE_RECHECK_SECONDS,
    RESYNC_SECONDS,
    Decision,
    decide,
    keeps_reconciling,
)
from kubegraft_operator.observe import Observation, PodObservation, PodPhase

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
WL = "finetunejob-j-abcde"


def make_job(
    nodes: int = 2, labels: dict[str, str] | None = None, **run_policy: Any
) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {
                "name": "j",
                "namespace": "ns",
                "uid": "uid-1",
                "generation": 1,
                "labels": {kueue.QUEUE_LABEL: "lq"} if labels is None else labels,
            },
            "spec": {
                "model": {"checkpoint": "/ckpt", "task": "sequence-classification"},
                "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
                "distributed": {"nodes": nodes, "procsPerNode": 2, "gpusPerNode": 4},
                "output": {"ephemeral": True},
                "pod": {"priorityClassName": "high", "nodeSelector": {"team": "a"}},
                "runPolicy": {"startupTimeoutSeconds": 60, **run_policy},
            },
        }
    )


def workload(*conds: tuple[str, str, str], flavor: str | None = None, rv: str = "7") -> Any:
    status: dict[str, Any] = {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": f"{t} {r}", "lastTransitionTime": "x"}
            for t, s, r in conds
        ]
    }
    if flavor:
        status["admission"] = {
            "clusterQueue": "cq",
            "podSetAssignments": [
                {"name": kueue.POD_SET, "flavors": {"nvidia.com/gpu": flavor}, "count": 2}
            ],
        }
    return kueue.observe_workload(
        {
            "metadata": {"name": WL, "resourceVersion": rv, "generation": 1},
            "status": status,
        }
    )


ADMITTED = workload(
    ("QuotaReserved", "True", "QuotaReserved"), ("Admitted", "True", "Admitted"), flavor="gpu-a"
)
FLAVORS = {
    "gpu-a": kueue.Flavor(
        node_labels={"pool": "a100"},
        tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
    )
}


def queue(wl: Any = None, **kw: Any) -> kueue.QueueObservation:
    return kueue.QueueObservation(workload=wl, cluster_queue="cq", priority=1000, **kw)


def step(
    job: FineTuneJob,
    q: kueue.QueueObservation,
    pods: tuple[PodObservation, ...] = (),
    now: datetime = T0,
) -> tuple[FineTuneJob, Decision]:
    d = decide(job, Observation(pods=pods, queue=q), now)
    new = job.model_copy(deep=True)
    new.status = d.status
    return new, d


def gang(
    phase: str = "Running", attempt: int = 0, deleting: bool = False
) -> tuple[PodObservation, ...]:
    return tuple(
        PodObservation(
            name=f"j-worker-{r}-a{attempt}",
            rank=r,
            attempt=attempt,
            phase=PodPhase(phase),
            created=T0,
            node_name="n1",
            deleting=deleting,
            exit_code=75 if phase == "Failed" else (0 if phase == "Succeeded" else None),
        )
        for r in range(2)
    )


def kinds(d: Decision) -> list[str]:
    return [o["kind"] for o in d.create]


def test_a_queued_job_creates_only_its_workload_and_waits() -> None:
    job, d = step(make_job(), queue())
    assert kinds(d) == ["Workload"]
    assert job.status is not None
    assert job.status.state == JobState.QUEUED
    assert job.status.reason == "WorkloadCreated"
    assert "LocalQueue ns/lq, ClusterQueue cq" in (job.status.message or "")
    wl = d.create[0]
    assert wl["metadata"]["name"] == kueue.workload_name("j", "uid-1")
    assert wl["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert wl["spec"]["queueName"] == "lq"
    assert wl["spec"]["priorityClassRef"]["name"] == "high"
    assert wl["spec"]["priority"] == 1000
    (ps,) = wl["spec"]["podSets"]
    assert ps["name"] == kueue.POD_SET
    assert ps["count"] == 2
    limits = ps["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "4"
    # Waiting for quota: Kueue's own reason in the message; still no pod.
    pending = workload(("QuotaReserved", "False", "Pending"))
    job, d = step(job, queue(pending), now=T0 + timedelta(seconds=5))
    assert kinds(d) == []
    assert job.status is not None
    assert job.status.state == JobState.QUEUED
    assert job.status.reason == "WaitingForQuota"
    assert "QuotaReserved Pending" in (job.status.message or "")


def test_workload_name_matches_kueues_own_scheme() -> None:
    # jobframework.GetWorkloadNameForOwnerWithGVK: sha1("FineTuneJob\nkubegraft.io\nj\nuid-1")
    assert (
        kueue.workload_name("j", "uid-1")
        == "finetunejob-j-"
        + __import__("hashlib").sha1(b"FineTuneJob\nkubegraft.io\nj\nuid-1").hexdigest()[:5]
    )


def test_admission_injects_the_flavor_and_starts_the_gang() -> None:
    job, _ = step(make_job(), queue())
    job, d = step(job, queue(ADMITTED, flavors=FLAVORS), now=T0 + timedelta(seconds=5))
    assert job.status is not None
    assert job.status.state == JobState.PENDING
    assert cond.is_true(job.status.conditions, cond.ADMITTED)
    pods = [o for o in d.create if o["kind"] == "Pod"]
    assert len(pods) == 2
    for p in pods:
        assert p["spec"]["nodeSelector"] == {"team": "a", "pool": "a100"}
        assert p["spec"]["tolerations"] == [
            {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        # the Workload is the queue: no pod-group labels for Kueue's pod integration
        assert "kueue.x-k8s.io/pod-group-name" not in p["metadata"]["labels"]


def test_eviction_stops_the_gang_then_clears_the_reservation_and_requeues() -> None:
    job, _ = step(make_job(), queue(ADMITTED, flavors=FLAVORS))
    job, _ = step(job, queue(ADMITTED), gang("Running"), now=T0 + timedelta(seconds=2))
    assert job.status is not None
    assert job.status.state == JobState.RUNNING
    evicted = workload(
        ("QuotaReserved", "True", "QuotaReserved"),
        ("Admitted", "True", "Admitted"),
        ("Evicted", "True", "Preempted"),
        flavor="gpu-a",
    )
    # 1. The gang is stopped (graceful deletes: SIGTERM, the trainer checkpoints), a new
    # attempt is due; the reservation stays until no pod is active.
    job, d = step(job, queue(evicted), gang("Running"), now=T0 + timedelta(seconds=10))
    assert sorted(d.delete_pods) == ["j-worker-0-a0", "j-worker-1-a0"]
    assert d.workload_patch is None
    assert job.status is not None
    assert job.status.state == JobState.QUEUED
    assert job.status.reason == "Preempted"
    assert job.status.attempt == 1
    # 2. The pods exited (75 after their checkpoint): clear the reservation, mark requeued.
    job, d = step(job, queue(evicted), gang("Failed"), now=T0 + timedelta(seconds=20))
    assert d.delete_pods == []
    assert kinds(d) == []
    assert d.workload_patch is not None
    name, patch = d.workload_patch
    assert name == WL
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["status"]["admission"] is None
    by_type = {c["type"]: c for c in patch["status"]["conditions"]}
    assert by_type["Requeued"]["status"] == "True"
    assert by_type["Requeued"]["reason"] == "Preempted"
    assert by_type["QuotaReserved"]["status"] == "False"
    assert by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["Admitted"]["status"] == "False"
    assert job.status is not None
    assert job.status.attempt == 1
    # 3. Readmitted: attempt 1 starts from the spec plus the new admission's flavor.
    job, d = step(
        job, queue(ADMITTED, flavors=FLAVORS), gang("Failed"), now=T0 + timedelta(seconds=30)
    )
    assert [o["metadata"]["name"] for o in d.create if o["kind"] == "Pod"] == [
        "j-worker-0-a1",
        "j-worker-1-a1",
    ]
    assert job.status is not None
    assert job.status.disruptions == 0
    assert job.status.restarts == 0


def test_finish_marks_the_workload_finished_and_keeps_the_loop_until_it_is() -> None:
    job, _ = step(make_job(), queue(ADMITTED, flavors=FLAVORS))
    job, _ = step(job, queue(ADMITTED), gang("Running"), now=T0 + timedelta(seconds=1))
    job, d = step(job, queue(ADMITTED), gang("Succeeded"), now=T0 + timedelta(seconds=9))
    assert job.status is not None
    assert job.status.state == JobState.SUCCEEDED
    assert d.workload_patch is not None
    finished = {c["type"]: c for c in d.workload_patch[1]["status"]["conditions"]}["Finished"]
    assert finished["status"] == "True"
    assert finished["reason"] == "Succeeded"
    wire = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    wire["status"]["active"] = 0
    assert keeps_reconciling(wire)  # not before Kueue has it Finished
    done = workload(("Admitted", "True", "Admitted"), ("Finished", "True", "Succeeded"))
    job, d = step(job, queue(done), gang("Succeeded"), now=T0 + timedelta(seconds=10))
    assert d.workload_patch is None
    wire = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    wire["status"]["active"] = 0
    assert not keeps_reconciling(wire)


def test_queued_time_does_not_count_against_the_deadline() -> None:
    job, _ = step(make_job(activeDeadlineSeconds=100), queue(ADMITTED, flavors=FLAVORS))
    job, _ = step(job, queue(ADMITTED), gang("Running"), now=T0 + timedelta(seconds=1))
    evicted = workload(("QuotaReserved", "False", "Pending"), ("Evicted", "True", "Preempted"))
    job, _ = step(job, queue(evicted), gang("Failed"), now=T0 + timedelta(seconds=50))
    # Queued far longer than the deadline: no failure while waiting...
    job, _ = step(job, queue(evicted), gang("Failed"), now=T0 + timedelta(seconds=500))
    assert job.status is not None
    assert job.status.state == JobState.QUEUED
    # ...and after the admission the 451 s queued are left out: 49 s used, 51 s left.
    job, _ = step(
        job, queue(ADMITTED, flavors=FLAVORS), gang("Failed"), now=T0 + timedelta(seconds=501)
    )
    assert job.status is not None
    assert job.status.suspended_seconds == 451
    job, _ = step(job, queue(ADMITTED), gang("Running", attempt=1), now=T0 + timedelta(seconds=540))
    assert job.status is not None
    assert job.status.state == JobState.RUNNING
    job, _ = step(job, queue(ADMITTED), gang("Running", attempt=1), now=T0 + timedelta(seconds=553))
    assert job.status is not None
    assert job.status.state == JobState.FAILED
    assert job.status.reason == "DeadlineExceeded"


def test_missing_local_queue_and_priority_class_are_named() -> None:
    job, d = step(make_job(), queue(local_queue_found=False, priority_class_found=False))
    assert job.status is not None
    assert job.status.reason == "PriorityClassNotFound"
    assert kinds(d) == []
    job, d = step(make_job(), queue(local_queue_found=False))
    assert kinds(d) == []  # no Workload for a queue that does not exist (nor Kueue's CRDs)
    assert job.status is not None
    assert job.status.reason == "LocalQueueNotFound"
    assert "metadata.labels[kueue.x-k8s.io/queue-name]" in (job.status.message or "")


@pytest.mark.parametrize("missing", [{"local_queue_found": False}, {"priority_class_found": False}])
def test_a_missing_queue_or_priority_class_is_looked_for_again_soon(missing: Any) -> None:
    """Neither a LocalQueue nor a PriorityClass is watched: a job waiting for one looks again
    every minute. Once its Workload exists, Kueue's changes to it wake the job, and the
    daemon sleeps until the long resync."""
    _, d = step(make_job(), queue(**missing))
    assert d.requeue_after == QUEUE_RECHECK_SECONDS < RESYNC_SECONDS
    _, d = step(make_job(), queue(workload(("QuotaReserved", "False", "Pending"))))
    assert d.requeue_after == RESYNC_SECONDS


def test_a_job_without_a_queue_name_is_untouched_by_kueue() -> None:
    job, d = step(make_job(labels={}), kueue.QueueObservation())
    assert kinds(d).count("Pod") == 2
    assert "Workload" not in kinds(d)
    assert job.status is not None
    assert job.status.state == JobState.PENDING
    assert cond.get_condition(job.status.conditions, cond.ADMITTED) is None
