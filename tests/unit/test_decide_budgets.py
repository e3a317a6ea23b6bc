"""Budgets and clocks as the Job controller keeps them, and ownership by UID (issue 9, items 8
and 9): disruptions count against maxDisruptions, not backoffLimit; an OOM kill says so in
the reason; activeDeadlineSeconds skips time suspended; pods of an earlier job of the same
name are neither counted nor adopted. Pure inputs, no cluster, like test_decide.py (whose
helpers these tests share).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from test_decide import T0, created_pods, gang, make_job, pod, running_job, step

from kubegraft.api.v1alpha1 import JobState
from kubegraft_operator import conditions as cond
from kubegraft_operator.decide import decide
from kubegraft_operator.observe import (
    MESSAGE_LIMIT,
    Observation,
    PodObservation,
    PodPhase,
    observe_pod,
    short_message,
)
from kubegraft_operator.store import Store

pytestmark = pytest.mark.unit


def _disrupted(kind: str) -> dict[str, Any]:
    """Keyword arguments for ``step``: the gang at T0+30s with worker 1 disrupted as ``kind``."""
    if kind == "preempted":  # the trainer saved on SIGTERM and exited 75
        pods = (pod(0), pod(1, "Failed", exit_code=75))
    elif kind == "evicted":  # the kubelet's node-pressure eviction
        pods = (pod(0), pod(1, "Failed", reason="Evicted", exit_code=137))
    elif kind == "disruption-target":  # the scheduler's preemption, the Eviction API, ...
        pods = (
            pod(0),
            PodObservation(
                name="j-worker-1-a0",
                rank=1,
                attempt=0,
                phase=PodPhase.FAILED,
                exit_code=143,
                disrupted=True,
            ),
        )
    elif kind == "deleted":
        pods = (pod(0), pod(1, deleting=True))
    elif kind == "gone":
        pods = (pod(0),)
    elif kind == "node-lost":
        return {
            "pods": (pod(0, node="n1"), pod(1, node="n2")),
            "not_ready_nodes": frozenset({"n2"}),
        }
    else:
        raise AssertionError(kind)
    return {"pods": pods}


DISRUPTIONS = {
    "preempted": "Preempted",
    "evicted": "Evicted",
    "disruption-target": "Terminated",
    "deleted": "PodDeleted",
    "gone": "PodDeleted",
    "node-lost": "NodeLost",
}


@pytest.mark.parametrize("kind", sorted(DISRUPTIONS))
def test_a_disruption_does_not_use_up_the_backoff_limit(kind: str) -> None:
    job = running_job(backoffLimit=0, maxDisruptions=2)
    job, d = step(job, now=T0 + timedelta(seconds=30), **_disrupted(kind))
    st = d.status
    assert (st.state, st.reason) == (JobState.RESTARTING, DISRUPTIONS[kind])
    assert (st.restarts, st.disruptions, st.attempt) == (0, 1, 1)
    assert "disruption 1/2" in (st.message or "")
    assert d.gang_restart_reason == DISRUPTIONS[kind]


@pytest.mark.parametrize("kind", sorted(DISRUPTIONS))
def test_disruptions_fail_the_job_only_past_max_disruptions(kind: str) -> None:
    job = running_job(backoffLimit=0, maxDisruptions=1)
    job, d = step(job, now=T0 + timedelta(seconds=30), **_disrupted(kind))
    assert d.status.state == JobState.RESTARTING
    # The next gang starts and is disrupted the same way: the budget of one is used up.
    job, d = step(job, now=T0 + timedelta(seconds=60))
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    job, _ = step(job, gang(attempt=1), T0 + timedelta(seconds=61))
    again = _disrupted(kind)
    again["pods"] = tuple(
        PodObservation(**{**p.__dict__, "attempt": 1, "name": p.name.replace("-a0", "-a1")})
        for p in again["pods"]
    )
    _, d = step(job, now=T0 + timedelta(seconds=90), **again)
    st = d.status
    assert (st.state, st.reason) == (JobState.FAILED, "MaxDisruptionsExceeded")
    assert (st.restarts, st.disruptions) == (0, 1)
    assert "maxDisruptions=1" in (st.message or "")


def test_a_failure_still_uses_up_the_backoff_limit() -> None:
    job = running_job(backoffLimit=0, maxDisruptions=5)
    _, d = step(job, (pod(0), pod(1, "Failed", exit_code=1)), T0 + timedelta(seconds=30))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "BackoffLimitExceeded")
    assert d.status.disruptions == 0


def test_a_disrupted_worker_explains_its_peers_failure() -> None:
    # Rank 1 was preempted; rank 0 lost its peer and failed with a plain error in the same
    # moment: the restart is a disruption, whichever rank sorts first.
    job = running_job(backoffLimit=0)
    pods = (pod(0, "Failed", exit_code=1), pod(1, "Failed", exit_code=75))
    _, d = step(job, pods, T0 + timedelta(seconds=30))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "Preempted")
    assert (d.status.restarts, d.status.disruptions) == (0, 1)
    # A peer failing while another is being deleted (a drain) is a disruption too.
    pods = (pod(0, "Failed", exit_code=1), pod(1, deleting=True))
    _, d = step(job, pods, T0 + timedelta(seconds=30))
    assert (d.status.state, d.status.reason, d.status.disruptions) == (
        JobState.RESTARTING,
        "PodDeleted",
        1,
    )


def _raw_pod(
    *, exit_code: int, reason: str, message: str = "", uid: str = "uid-1"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "j-worker-1-a0",
            "labels": {"kubegraft.io/node-rank": "1", "kubegraft.io/attempt": "0"},
            "ownerReferences": [{"controller": True, "uid": uid, "kind": "FineTuneJob"}],
        },
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "terminated": {"exitCode": exit_code, "reason": reason, "message": message}
                    },
                }
            ],
        },
    }


def test_an_oom_kill_says_oom_killed_in_the_reason() -> None:
    job = running_job()
    oom = observe_pod(_raw_pod(exit_code=137, reason="OOMKilled"))
    assert oom is not None
    _, d = step(job, (pod(0), oom), T0 + timedelta(seconds=30))
    st = d.status
    assert (st.state, st.reason, st.last_restart_reason) == (
        JobState.RESTARTING,
        "OOMKilled",
        "OOMKilled",
    )
    assert (st.restarts, st.disruptions) == (1, 0)  # memory is the job's own problem
    assert [e.reason for e in d.events] == ["OOMKilled"]
    # A 137 without the kernel's verdict stays the ambiguous one.
    killed = observe_pod(_raw_pod(exit_code=137, reason="Error"))
    assert killed is not None
    _, d = step(job, (pod(0), killed), T0 + timedelta(seconds=30))
    assert d.status.reason == "OOMKilledOrKilled"


TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/kubegraft_trainer/loop.py", line 412, in run\n'
    "    loss = self.step(batch)\n"
    + "".join(f'  File "/x/frame{i}.py", line {i}\n' for i in range(80))
    + "RuntimeError: CUDA error: an illegal memory access was encountered\n"
)


def test_status_and_events_carry_a_short_reason_not_the_traceback() -> None:
    record = {"rank": 1, "exitCode": 1, "reason": "WorkerFailed", "message": TRACEBACK[-2000:]}
    failed = observe_pod(_raw_pod(exit_code=1, reason="Error", message=json.dumps(record)))
    assert failed is not None
    assert failed.message == "RuntimeError: CUDA error: an illegal memory access was encountered"
    job = running_job()
    _, d = step(job, (pod(0), failed), T0 + timedelta(seconds=30))
    texts = [d.status.message or "", *(e.message for e in d.events)]
    texts += [c.message for c in d.status.conditions]
    for text in texts:
        assert "Traceback" not in text
        assert "frame" not in text
        assert len(text) < 2 * MESSAGE_LIMIT
    assert "illegal memory access" in (d.status.message or "")


def test_short_message_keeps_the_last_line_and_caps_it() -> None:
    assert short_message("") == ""
    assert short_message("first\n\n  ValueError:   bad   value  \n") == "ValueError: bad value"
    assert short_message("not json {") == "not json {"
    long = short_message("x" * 5000)
    assert len(long) == MESSAGE_LIMIT
    assert long.endswith("...")


# ------------------------------------------------------------------------ the deadline clock


def _suspend(job: Any, at: Any) -> Any:
    job = job.model_copy(deep=True)
    job.spec.run_policy.suspend = True
    job, d = step(job, gang(), at)
    assert d.status.state == JobState.SUSPENDED
    job, _ = step(job, (), at + timedelta(seconds=1))  # the pods are gone
    return job


def _resume(job: Any, at: Any) -> Any:
    job = job.model_copy(deep=True)
    job.spec.run_policy.suspend = False
    return job


def test_time_suspended_does_not_count_against_the_active_deadline() -> None:
    job = running_job(activeDeadlineSeconds=100)  # started at T0+1
    job = _suspend(job, T0 + timedelta(seconds=51))  # 50 s of the budget used
    # A queue held it for an hour: resuming must not fail it for that time.
    job = _resume(job, None)
    back = T0 + timedelta(seconds=3651)
    job, d = step(job, (), back)
    st = d.status
    assert (st.state, st.reason) == (JobState.PENDING, "WaitingForGang")
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    assert st.suspended_seconds == 3600
    assert not cond.is_true(st.conditions, cond.SUSPENDED)
    # The clock goes on where the suspension stopped it: 50 s left.
    job, d = step(job, gang(attempt=1), back + timedelta(seconds=2))
    assert d.status.state == JobState.RUNNING
    assert d.requeue_after is not None
    assert d.requeue_after <= 48
    job, d = step(job, gang(attempt=1), back + timedelta(seconds=49))
    assert d.status.state == JobState.RUNNING
    _, d = step(job, gang(attempt=1), back + timedelta(seconds=50))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "DeadlineExceeded")


def test_a_job_suspended_before_it_started_has_its_whole_deadline() -> None:
    job, _ = step(make_job(activeDeadlineSeconds=100, suspend=True))
    job = _resume(job, None)
    job, d = step(job, (), T0 + timedelta(seconds=5000))
    assert d.status.suspended_seconds == 0  # the clock had not started
    job, d = step(job, gang(attempt=1), T0 + timedelta(seconds=5001))
    assert d.status.state == JobState.RUNNING
    _, d = step(job, gang(attempt=1), T0 + timedelta(seconds=5100))
    assert d.status.state == JobState.RUNNING
    _, d = step(job, gang(attempt=1), T0 + timedelta(seconds=5101))
    assert d.status.state == JobState.FAILED


# -------------------------------------------------------------------------- ownership by UID


def _foreign(rank: int, phase: str = "Running", **kw: Any) -> PodObservation:
    return PodObservation(
        name=f"j-worker-{rank}-a0",
        rank=rank,
        attempt=0,
        phase=PodPhase(phase),
        owner_uid="uid-0",
        **kw,
    )


def test_pods_of_an_earlier_job_of_the_same_name_are_neither_counted_nor_adopted() -> None:
    job = make_job()  # uid-1; its predecessor uid-0 left its gang terminating
    old = (_foreign(0, deleting=True), _foreign(1, deleting=True))
    d = decide(job, Observation(foreign_pods=old), T0)
    st = d.status
    assert d.create == []
    assert d.delete_pods == []  # not ours to delete: the garbage collector is on it
    assert (st.state, st.reason, st.active) == (JobState.PENDING, "WaitingForPreviousJob", 0)
    assert "uid-0" in (st.message or "")
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "WaitingForPreviousJob")]
    # A Running old gang does not make the new job Running either.
    job.status = st
    d = decide(job, Observation(foreign_pods=(_foreign(0), _foreign(1))), T0)
    assert (d.status.state, d.status.start_time, d.create) == (JobState.PENDING, None, [])
    # A finished old pod with another pod's name does not block; one with ours does.
    job.status = d.status
    d = decide(job, Observation(foreign_pods=(_foreign(0, "Succeeded"),)), T0)
    assert d.status.reason == "WaitingForPreviousJob"
    # Once they are gone, the job's own gang is created.
    d = decide(job, Observation(), T0 + timedelta(seconds=3))
    assert created_pods(d) == ["j-worker-0-a0", "j-worker-1-a0"]
    assert d.status.reason == "WaitingForGang"


def _stored_pod(name: str, owner: str, uid: str, rv: str, phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": rv,
            "labels": {
                "kubegraft.io/job-name": "j",
                "kubegraft.io/node-rank": name.split("-")[2],
                "kubegraft.io/attempt": "0",
            },
            "ownerReferences": [
                {
                    "apiVersion": "kubegraft.io/v1alpha1",
                    "kind": "FineTuneJob",
                    "name": "j",
                    "uid": owner,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "status": {"phase": phase},
    }


def test_the_store_tells_jobs_of_the_same_name_apart_by_owner_uid() -> None:
    store = Store()
    key = ("ns", "j")
    store.put_pod(_stored_pod("j-worker-0-a0", "uid-0", "p-old-0", "10"))
    store.put_pod(_stored_pod("j-worker-1-a0", "uid-0", "p-old-1", "11"))
    store.put_report(key, "uid-0", json.dumps({"step": 150, "totalSteps": 200}))
    new = store.observation(key, "uid-1")
    assert new.pods == ()
    assert [p.name for p in new.foreign_pods] == ["j-worker-0-a0", "j-worker-1-a0"]
    assert new.progress is None  # the old job's report is not the new job's progress
    old = store.observation(key, "uid-0")
    assert [p.name for p in old.pods] == ["j-worker-0-a0", "j-worker-1-a0"]
    assert old.progress is not None
    assert old.progress.step == 150
    # The new job's pod of the same name, seen (its create's answer) before the watch
    # delivers the old one's deletion: that late deletion removes the old pod only.
    store.put_pod(_stored_pod("j-worker-0-a0", "uid-1", "p-new-0", "20", phase="Pending"))
    store.put_pod(_stored_pod("j-worker-0-a0", "uid-0", "p-old-0", "15"), deleted=True)
    new = store.observation(key, "uid-1")
    assert [(p.name, p.owner_uid) for p in new.pods] == [("j-worker-0-a0", "uid-1")]
    assert [p.name for p in new.foreign_pods] == ["j-worker-1-a0"]
