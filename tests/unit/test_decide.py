"""The operator's state machine, path by path: pure inputs, no cluster.

Each test builds a FineTuneJob, the pods it "observes" and a clock, calls ``decide`` and
checks the new status, the objects to create/delete, the Events and the requeue delay; a
sequence of calls feeds each decision's status back in, as the operator does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FineTuneJob, JobState
from kubegraft.progress import ProgressReport
from kubegraft_operator import conditions as cond
from kubegraft_operator.decide import Decision, backoff_seconds, decide, keeps_reconciling
from kubegraft_operator.observe import Observation, PodObservation, PodPhase, format_time

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def make_job(nodes: int = 2, **run_policy: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "uid-1", "generation": 1},
            "spec": {
                "model": {"checkpoint": "/ckpt", "task": "sequence-classification"},
                "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
                "distributed": {"nodes": nodes, "procsPerNode": 2},
                "output": {"ephemeral": True},
                "runPolicy": {
                    "restartBackoffSeconds": 10,
                    "startupTimeoutSeconds": 60,
                    "stallTimeoutSeconds": 120,
                    **run_policy,
                },
            },
        }
    )


def pod(
    rank: int,
    phase: str = "Running",
    *,
    attempt: int = 0,
    exit_code: int | None = None,
    reason: str | None = None,
    node: str = "n1",
    deleting: bool = False,
    created: datetime = T0,
) -> PodObservation:
    return PodObservation(
        name=f"j-worker-{rank}-a{attempt}",
        rank=rank,
        attempt=attempt,
        phase=PodPhase(phase),
        created=created,
        node_name=node,
        deleting=deleting,
        exit_code=exit_code,
        reason=reason,
    )


def gang(phase: str = "Running", n: int = 2, attempt: int = 0) -> tuple[PodObservation, ...]:
    return tuple(pod(r, phase, attempt=attempt) for r in range(n))


def step(
    job: FineTuneJob, pods: tuple[PodObservation, ...] = (), now: datetime = T0, **obs: Any
) -> tuple[FineTuneJob, Decision]:
    """Decide, then feed the new status back into the job as the status write would."""
    d = decide(job, Observation(pods=pods, **obs), now)
    new = job.model_copy(deep=True)
    new.status = d.status
    return new, d


def created_pods(d: Decision) -> list[str]:
    return [o["metadata"]["name"] for o in d.create if o["kind"] == "Pod"]


def running_job(**rp: Any) -> FineTuneJob:
    job, _ = step(make_job(**rp))
    job, _ = step(job, gang("Running"), T0 + timedelta(seconds=1))
    assert job.status is not None
    assert job.status.state == JobState.RUNNING
    return job


def test_new_job_creates_infrastructure_and_the_whole_gang() -> None:
    job = make_job()
    before = job.model_dump()
    _, d = step(job)
    assert job.model_dump() == before  # pure: the input is not touched
    kinds = [o["kind"] for o in d.create]
    # One config object, the Service and the pods: no per-job ServiceAccount, Role,
    # RoleBinding or progress ConfigMap (rank 0 reports to the operator's endpoint).
    assert sorted(kinds) == ["ConfigMap", "Pod", "Pod", "Service"]
    assert created_pods(d) == ["j-worker-0-a0", "j-worker-1-a0"]
    st = d.status
    assert (st.state, st.reason, st.nodes_ready, st.attempt, st.restarts) == (
        JobState.PENDING,
        "WaitingForGang",
        "0/2",
        0,
        0,
    )
    assert cond.is_true(st.conditions, cond.CREATED)
    assert [e.reason for e in d.events] == ["WaitingForGang"]
    assert d.requeue_after == 60  # the startup timeout


def test_running_then_succeeded_with_times_and_events() -> None:
    job, _ = step(make_job())
    job, d = step(job, gang("Running"), T0 + timedelta(seconds=5))
    st = d.status
    assert (st.state, st.nodes_ready, st.ready_nodes) == (JobState.RUNNING, "2/2", 2)
    assert st.start_time == format_time(T0 + timedelta(seconds=5))
    assert cond.is_true(st.conditions, cond.RUNNING)
    assert [(e.type, e.reason) for e in d.events] == [("Normal", "GangRunning")]
    assert d.create == []
    assert d.delete_pods == []
    # Nothing changed: no event, no new transition time.
    job2, d2 = step(job, gang("Running"), T0 + timedelta(seconds=9))
    assert d2.events == []
    assert d2.status == job.status
    _, d3 = step(job2, gang("Succeeded"), T0 + timedelta(seconds=20))
    st = d3.status
    assert (st.state, st.reason) == (JobState.SUCCEEDED, "Completed")
    assert st.completion_time == format_time(T0 + timedelta(seconds=20))
    assert cond.is_true(st.conditions, cond.SUCCEEDED)
    assert not cond.is_true(st.conditions, cond.RUNNING)
    assert [e.reason for e in d3.events] == ["Completed"]
    assert d3.requeue_after is None


def test_rank0_done_while_others_still_run_is_still_running() -> None:
    job = running_job()
    _, d = step(
        job, (pod(0, "Succeeded", exit_code=0), pod(1, "Running")), T0 + timedelta(seconds=3)
    )
    assert d.status.state == JobState.RUNNING


@pytest.mark.parametrize(
    ("code", "reason", "failures", "disruptions"),
    [(1, "WorkerFailed", 1, 0), (75, "Preempted", 0, 1), (137, "OOMKilledOrKilled", 1, 0)],
)
def test_retryable_exit_restarts_the_whole_gang_with_backoff(
    code: int, reason: str, failures: int, disruptions: int
) -> None:
    job = running_job()
    t = T0 + timedelta(seconds=30)
    job, d = step(job, (pod(0, "Running"), pod(1, "Failed", exit_code=code)), t)
    st = d.status
    assert (st.state, st.reason, st.attempt) == (JobState.RESTARTING, reason, 1)
    # A preemption (75) is a disruption: it does not use up backoffLimit.
    assert (st.restarts, st.disruptions) == (failures, disruptions)
    assert st.last_restart_reason == reason
    assert d.delete_pods == ["j-worker-0-a0"]  # the survivor; the failed pod is kept for its logs
    assert d.gang_restart_reason == reason
    assert d.create == []
    assert cond.is_true(st.conditions, cond.RESTARTING)
    assert not cond.is_true(st.conditions, cond.RUNNING)
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]
    assert d.requeue_after == 10
    # The old pod is still terminating: wait (and delete again, idempotently).
    old = (pod(0, "Running", deleting=True), pod(1, "Failed", exit_code=code))
    job, d = step(job, old, t + timedelta(seconds=11))
    assert d.create == []
    assert d.status.state == JobState.RESTARTING
    # Gone, but back-off not yet over at +5s: nothing is created.
    _, d = step(job, (pod(1, "Failed", exit_code=code),), t + timedelta(seconds=5))
    assert d.create == []
    assert 4 <= (d.requeue_after or 0) <= 5
    # After the back-off: the next attempt, every rank, new names.
    job, d = step(job, (pod(1, "Failed", exit_code=code),), t + timedelta(seconds=10))
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    assert d.status.state == JobState.PENDING
    job, d = step(
        job,
        (pod(1, "Failed", exit_code=code), *gang("Running", attempt=1)),
        t + timedelta(seconds=12),
    )
    st = d.status
    assert (st.state, st.restarts, st.attempt, st.nodes_ready) == (
        JobState.RUNNING,
        failures,
        1,
        "2/2",
    )
    assert not cond.is_true(st.conditions, cond.RESTARTING)
    assert st.start_time == job.status.start_time  # type: ignore[union-attr]


def test_backoff_doubles() -> None:
    assert [backoff_seconds(10, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_seconds(0, 5) == 0
    assert backoff_seconds(3000, 3) == 3600


def test_second_restart_waits_twice_as_long() -> None:
    job = running_job()
    job, d = step(
        job, (pod(0, "Failed", exit_code=1), pod(1, "Running")), T0 + timedelta(seconds=10)
    )
    job, d = step(job, (), T0 + timedelta(seconds=21))
    job, d = step(job, gang("Running", attempt=1), T0 + timedelta(seconds=22))
    job, d = step(
        job,
        (pod(0, "Failed", exit_code=1, attempt=1), pod(1, attempt=1)),
        T0 + timedelta(seconds=30),
    )
    assert (d.status.restarts, d.requeue_after) == (2, 20)


def test_config_error_fails_at_once() -> None:
    job = running_job(backoffLimit=5)
    _, d = step(job, (pod(0, "Failed", exit_code=78), pod(1, "Running")), T0 + timedelta(seconds=3))
    st = d.status
    assert (st.state, st.reason, st.restarts) == (JobState.FAILED, "ConfigurationError", 0)
    assert cond.is_true(st.conditions, cond.FAILED)
    assert d.delete_pods == ["j-worker-1-a0"]
    assert d.create == []
    assert st.completion_time is not None
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "ConfigurationError")]


def test_backoff_limit_exceeded_fails() -> None:
    job = running_job(backoffLimit=0)
    _, d = step(job, (pod(0, "Failed", exit_code=137), pod(1)), T0 + timedelta(seconds=3))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "BackoffLimitExceeded")
    assert "OOMKilledOrKilled" in (d.status.message or "")
    assert d.gang_restart_reason is None


def test_unschedulable_is_pending_then_fails_after_startup_timeout() -> None:
    job, _ = step(make_job())
    pending = (pod(0, "Running"), pod(1, "Pending", reason="Unschedulable", node=""))
    job, d = step(job, pending, T0 + timedelta(seconds=5))
    st = d.status
    assert (st.state, st.reason, st.nodes_ready) == (JobState.PENDING, "Unschedulable", "1/2")
    assert not cond.is_true(st.conditions, cond.RUNNING)  # no partial gang counts as running
    assert st.start_time is None
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "Unschedulable")]
    assert d.requeue_after == pytest.approx(55)
    _, d = step(job, pending, T0 + timedelta(seconds=60))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "Unschedulable")
    assert d.delete_pods == ["j-worker-0-a0", "j-worker-1-a0"]


def test_image_pull_problem_is_named() -> None:
    job, _ = step(make_job())
    _, d = step(job, (pod(0, "Pending", reason="ImagePullBackOff"), pod(1, "Pending")), T0)
    assert (d.status.state, d.status.reason) == (JobState.PENDING, "ImagePullBackOff")
    _, d = step(
        job,
        (pod(0, "Pending", reason="ErrImagePull"), pod(1, "Pending")),
        T0 + timedelta(seconds=61),
    )
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "ImagePullBackOff")


def test_pods_held_by_a_queue_are_queued_without_a_startup_timeout() -> None:
    job, _ = step(make_job())
    gated = tuple(pod(r, "Pending", reason="SchedulingGated") for r in range(2))
    _, d = step(job, gated, T0 + timedelta(seconds=600))
    assert (d.status.state, d.status.reason) == (JobState.QUEUED, "SchedulingGated")
    assert d.delete_pods == []


def test_waiting_for_gang_times_out_as_startup_timeout() -> None:
    job, _ = step(make_job())
    _, d = step(job, (pod(0), pod(1, "Pending")), T0 + timedelta(seconds=61))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "StartupTimeout")


def test_active_deadline_is_scheduled_when_the_gang_starts() -> None:
    job, _ = step(make_job(activeDeadlineSeconds=7))
    _, d = step(job, gang(), T0 + timedelta(seconds=1))
    assert d.status.state == JobState.RUNNING
    assert d.requeue_after == 7


def test_active_deadline() -> None:
    job = running_job(activeDeadlineSeconds=100)
    _, d = step(job, gang(), T0 + timedelta(seconds=50))
    assert d.status.state == JobState.RUNNING
    assert d.requeue_after == pytest.approx(51)
    _, d = step(job, gang(), T0 + timedelta(seconds=102))
    assert (d.status.state, d.status.reason) == (JobState.FAILED, "DeadlineExceeded")
    assert sorted(d.delete_pods) == ["j-worker-0-a0", "j-worker-1-a0"]


def report(step_: int, at: datetime, **kw: Any) -> ProgressReport:
    return ProgressReport(step=step_, total_steps=200, time=format_time(at), **kw)


def test_stall_restarts_as_stalled_and_progress_resets_the_clock() -> None:
    job = running_job()  # Running since T0+1s, stall timeout 120s
    job, d = step(
        job, gang(), T0 + timedelta(seconds=100), progress=report(10, T0 + timedelta(seconds=100))
    )
    assert d.status.state == JobState.RUNNING
    assert d.requeue_after == 120  # the stall deadline (the last progress + 120s)
    # Same step reported again later: the clock does not move.
    job, d = step(
        job, gang(), T0 + timedelta(seconds=200), progress=report(10, T0 + timedelta(seconds=200))
    )
    assert d.status.state == JobState.RUNNING
    assert d.status.progress.updated_at == format_time(T0 + timedelta(seconds=100))
    job, d = step(
        job, gang(), T0 + timedelta(seconds=221), progress=report(10, T0 + timedelta(seconds=200))
    )
    assert (d.status.state, d.status.reason, d.status.restarts) == (
        JobState.RESTARTING,
        "Stalled",
        1,
    )
    assert sorted(d.delete_pods) == ["j-worker-0-a0", "j-worker-1-a0"]


def test_stall_without_any_report_counts_from_running() -> None:
    job = running_job()
    _, d = step(job, gang(), T0 + timedelta(seconds=122))
    assert d.status.reason == "Stalled"


def test_deleted_or_evicted_pod_is_a_failure() -> None:
    job = running_job()
    _, d = step(job, (pod(0), pod(1, deleting=True)), T0 + timedelta(seconds=3))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "PodDeleted")
    assert d.delete_pods == ["j-worker-0-a0"]
    _, d = step(job, (pod(0),), T0 + timedelta(seconds=3))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "PodDeleted")
    _, d = step(job, (pod(0), pod(1, "Failed", reason="Evicted")), T0 + timedelta(seconds=3))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "Evicted")


def test_missing_pod_while_forming_is_recreated_not_a_failure() -> None:
    job, _ = step(make_job())
    _, d = step(job, (pod(0, "Pending"),), T0 + timedelta(seconds=2))
    assert created_pods(d) == ["j-worker-1-a0"]
    assert d.status.restarts == 0


def test_node_not_ready_restarts_the_gang() -> None:
    job = running_job()
    pods = (pod(0, node="n1"), pod(1, node="n2"))
    _, d = step(job, pods, T0 + timedelta(seconds=3), not_ready_nodes=frozenset({"n2"}))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "NodeLost")
    assert "n2" in (d.status.message or "")
    # No kubelet will confirm a graceful deletion on a lost node: force it.
    assert d.force_delete_pods == ["j-worker-1-a0"]
    assert d.delete_pods == ["j-worker-0-a0"]


def test_suspend_deletes_pods_keeps_status_and_resume_starts_a_new_attempt() -> None:
    job = running_job()
    job, _ = step(
        job,
        gang(),
        T0 + timedelta(seconds=5),
        progress=report(
            50,
            T0 + timedelta(seconds=5),
            latest_checkpoint="/output/checkpoints/step-50",
            latest_checkpoint_step=50,
        ),
    )
    job.spec.run_policy.suspend = True
    job, d = step(job, gang(), T0 + timedelta(seconds=10))
    st = d.status
    assert (st.state, st.reason) == (JobState.SUSPENDED, "Suspended")
    assert sorted(d.delete_pods) == ["j-worker-0-a0", "j-worker-1-a0"]
    assert cond.is_true(st.conditions, cond.SUSPENDED)
    assert not cond.is_true(st.conditions, cond.RUNNING)
    assert st.checkpoints is not None
    assert st.checkpoints.latest_step == 50
    assert st.progress is not None
    assert st.progress.step == 50
    job, d = step(job, (), T0 + timedelta(seconds=11))
    assert d.events == []
    assert d.requeue_after is None
    assert d.status.state == JobState.SUSPENDED
    job.spec.run_policy.suspend = False
    job, d = step(job, (), T0 + timedelta(seconds=20))
    st = d.status
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    assert (st.attempt, st.restarts, st.state) == (1, 0, JobState.PENDING)
    assert not cond.is_true(st.conditions, cond.SUSPENDED)
    assert st.checkpoints is not None
    assert st.checkpoints.latest == "/output/checkpoints/step-50"


def test_resume_waits_for_the_old_gang_to_terminate() -> None:
    job = running_job()
    job.spec.run_policy.suspend = True
    job, _ = step(job, gang(), T0 + timedelta(seconds=10))
    job.spec.run_policy.suspend = False
    _, d = step(job, tuple(pod(r, deleting=True) for r in range(2)), T0 + timedelta(seconds=11))
    assert d.create == []
    assert d.status.state == JobState.PENDING


def test_ttl_after_finished_deletes_the_job() -> None:
    job = running_job(ttlSecondsAfterFinished=30)
    job, d = step(job, gang("Succeeded"), T0 + timedelta(seconds=10))
    assert d.requeue_after == pytest.approx(30)
    assert not d.delete_job
    _, d = step(job, gang("Succeeded"), T0 + timedelta(seconds=25))
    assert not d.delete_job
    assert d.requeue_after == pytest.approx(15)
    _, d = step(job, gang("Succeeded"), T0 + timedelta(seconds=40))
    assert d.delete_job
    assert d.events == []


def test_finished_job_stays_finished_and_cleans_up_stragglers() -> None:
    job = running_job()
    job, _ = step(job, (pod(0, "Failed", exit_code=78), pod(1)), T0 + timedelta(seconds=3))
    _, d = step(job, (pod(0, "Failed", exit_code=78), pod(1)), T0 + timedelta(seconds=4))
    assert d.status.state == JobState.FAILED
    assert d.delete_pods == ["j-worker-1-a0"]
    assert d.events == []


def test_active_counts_unfinished_pods_including_the_ones_being_created() -> None:
    job, d = step(make_job())
    assert d.status.active == 2  # this pass creates the gang
    job, d = step(job, gang("Running"), T0 + timedelta(seconds=1))
    assert d.status.active == 2
    job, d = step(job, (pod(0, "Failed", exit_code=78), pod(1)), T0 + timedelta(seconds=3))
    assert d.status.state == JobState.FAILED
    assert d.status.active == 1  # rank 1 still runs, and is being deleted
    _, d = step(job, (pod(0, "Failed", exit_code=78),), T0 + timedelta(seconds=5))
    assert d.status.active == 0


def _wire(job: FineTuneJob) -> dict[str, Any]:
    return job.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_a_finished_job_keeps_its_loop_only_while_something_is_left_to_do() -> None:
    job = running_job()
    assert keeps_reconciling(_wire(job))
    failed, _ = step(job, (pod(0, "Failed", exit_code=78), pod(1)), T0 + timedelta(seconds=3))
    assert keeps_reconciling(_wire(failed))  # rank 1 is still to be deleted
    gone, _ = step(failed, (pod(0, "Failed", exit_code=78),), T0 + timedelta(seconds=5))
    assert not keeps_reconciling(_wire(gone))
    done, _ = step(running_job(), gang("Succeeded"), T0 + timedelta(seconds=10))
    assert not keeps_reconciling(_wire(done))
    with_ttl, _ = step(
        running_job(ttlSecondsAfterFinished=30), gang("Succeeded"), T0 + timedelta(seconds=10)
    )
    assert keeps_reconciling(_wire(with_ttl))  # it has the job to delete later
    # finished before status.active existed: one more pass counts the pods
    legacy = _wire(done)
    del legacy["status"]["active"]
    assert keeps_reconciling(legacy)
    suspended, _ = step(make_job(suspend=True))
    assert suspended.status is not None
    assert suspended.status.state == JobState.SUSPENDED
    assert keeps_reconciling(_wire(suspended))


def test_progress_metrics_parameters_and_checkpoints_reach_status() -> None:
    job = running_job()
    r = ProgressReport(
        step=90,
        total_steps=200,
        epoch=0.45,
        eta_seconds=750,
        samples_per_second=12.5,
        train_loss=0.42,
        eval_loss=0.5,
        accuracy=0.8,
        f1=0.8123,
        trainable_parameters=250,
        total_parameters=1000,
        latest_checkpoint="/o/c/90",
        latest_checkpoint_step=90,
        best_checkpoint="/o/c/80",
        best_metric=0.81,
        time=format_time(T0),
    )
    _, d = step(job, gang(), T0 + timedelta(seconds=2), progress=r)
    st = d.status
    assert st.progress is not None
    assert st.metrics is not None
    assert st.parameters is not None
    assert (st.progress.step, st.progress.percent, st.progress.display, st.progress.eta) == (
        90,
        45,
        "45%",
        "12m30s",
    )
    assert st.metrics.display == "f1=0.81"
    assert st.metrics.train_loss == 0.42
    assert (st.parameters.trainable, st.parameters.total, st.parameters.trainable_percent) == (
        250,
        1000,
        25.0,
    )
    assert st.checkpoints is not None
    assert (st.checkpoints.latest_step, st.checkpoints.best) == (
        90,
        "/o/c/80",
    )


def test_condition_transition_time_moves_only_on_change_and_carries_generation() -> None:
    job = running_job()
    running = cond.get_condition(job.status.conditions, cond.RUNNING)  # type: ignore[union-attr]
    _, d = step(job, gang(), T0 + timedelta(seconds=50))
    again = cond.get_condition(d.status.conditions, cond.RUNNING)
    assert running is not None
    assert again is not None
    assert again.last_transition_time == running.last_transition_time
    assert again.observed_generation == 1
    assert d.status.observed_generation == 1
    types = [c.type for c in d.status.conditions]
    assert len(types) == len(set(types))  # keyed by type


def test_old_attempt_pods_are_ignored_for_the_current_gang() -> None:
    job = running_job()
    job, _ = step(job, (pod(0, "Failed", exit_code=1), pod(1)), T0 + timedelta(seconds=2))
    job, d = step(job, (pod(0, "Failed", exit_code=1),), T0 + timedelta(seconds=13))
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    # The old failed pod does not make the new gang fail again.
    _, d = step(
        job,
        (pod(0, "Failed", exit_code=1), *gang("Running", attempt=1)),
        T0 + timedelta(seconds=14),
    )
    assert d.status.state == JobState.RUNNING
    assert d.status.restarts == 1


def _beats(
    job: FineTuneJob, phase: str, step_: int, seconds: range, *, skew: timedelta = timedelta(0)
) -> tuple[FineTuneJob, Decision]:
    """A heartbeat every 30 s (the default interval) at T0+s, stamped by a clock ``skew``
    off the operator's."""
    d: Decision | None = None
    for s in seconds:
        at = T0 + timedelta(seconds=s)
        job, d = step(job, gang(), at, progress=report(step_, at + skew, phase=phase))
        assert d.status.state == JobState.RUNNING, (s, d.status.message)
    assert d is not None
    return job, d


def test_a_long_evaluation_with_heartbeats_is_not_a_stall() -> None:
    job = running_job()  # stall timeout 120 s, progress interval 30 s
    job, _ = step(job, gang(), T0 + timedelta(seconds=5), progress=report(10, T0, phase="training"))
    # evaluating at step 10 for 10 minutes: the step does not move, the heartbeats come
    job, d = _beats(job, "evaluating", 10, range(30, 630, 30))
    assert d.status.progress is not None
    assert d.status.progress.phase == "evaluating"
    assert d.status.progress.heartbeat_at == format_time(T0 + timedelta(seconds=600))
    assert d.status.progress.updated_at == format_time(T0 + timedelta(seconds=5))
    # the next look is due when the heartbeat would be overdue (120 s after the last one)
    _, d = step(job, gang(), T0 + timedelta(seconds=719))
    assert d.status.state == JobState.RUNNING


def test_heartbeats_that_stop_are_a_stall_in_any_phase() -> None:
    job = running_job()
    job, _ = _beats(job, "caching", 0, range(10, 100, 30))  # last heartbeat at T0+70
    _, d = step(job, gang(), T0 + timedelta(seconds=189))
    assert d.status.state == JobState.RUNNING
    _, d = step(job, gang(), T0 + timedelta(seconds=190))  # 120 s after the last heartbeat
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "Stalled")
    assert "no heartbeat from rank 0 for 120s (phase caching, step 0)" in (d.status.message or "")


def test_training_with_heartbeats_but_no_step_is_a_stall() -> None:
    job = running_job()
    job, _ = step(job, gang(), T0 + timedelta(seconds=5), progress=report(7, T0, phase="training"))
    # a hung collective: the heartbeat thread lives on, the step does not move
    job, _ = _beats(job, "training", 7, range(30, 120, 30))
    _, d = step(
        job, gang(), T0 + timedelta(seconds=125), progress=report(7, T0 + timedelta(seconds=125))
    )
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "Stalled")
    assert "no training step progress (step 7) for 120s" in (d.status.message or "")


def test_heartbeat_clock_is_the_operators_not_the_trainers() -> None:
    """rank 0's node clock is an hour behind: its fresh reports are still heartbeats."""
    job = running_job()
    _, d = _beats(job, "evaluating", 3, range(30, 400, 30), skew=-timedelta(hours=1))
    assert d.status.progress is not None
    assert d.status.progress.heartbeat_at == format_time(T0 + timedelta(seconds=390))


def test_a_slow_heartbeat_interval_widens_the_stall_windows() -> None:
    # progressIntervalSeconds 100 > stallTimeoutSeconds/2: a 120 s window would stall a healthy
    # job between two heartbeats; the windows are 3 and 2 intervals instead
    job = running_job(progressIntervalSeconds=100)
    job, _ = step(job, gang(), T0 + timedelta(seconds=5), progress=report(1, T0, phase="training"))
    _, d = step(job, gang(), T0 + timedelta(seconds=200))
    assert d.status.state == JobState.RUNNING
    _, d = step(job, gang(), T0 + timedelta(seconds=205))
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "Stalled")
    assert "for 200s" in (d.status.message or "")


def test_a_foreign_pod_reason_restarts_the_gang_but_is_counted_as_other() -> None:
    # A failed pod without an exit code keeps whatever reason its kubelet wrote: the status
    # and the condition show it, the restarts-by-reason counter gets the one fixed "Other".
    job = running_job()
    t = T0 + timedelta(seconds=30)
    _, d = step(job, (pod(0, "Running"), pod(1, "Failed", reason="ContainerCannotRun")), t)
    assert (d.status.state, d.status.reason) == (JobState.RESTARTING, "ContainerCannotRun")
    assert d.gang_restart_reason == "Other"


def test_every_restart_reason_the_operator_gives_is_a_fixed_label() -> None:
    import ast
    from pathlib import Path

    from kubegraft_operator import decide as decide_module

    tree = ast.parse(Path(decide_module.__file__).read_text())
    literals = {
        call.args[2].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "_restart"
        and len(call.args) > 2
        and isinstance(call.args[2], ast.Constant)
    }
    assert literals >= {"NodeLost", "PodDeleted", "Stalled"}  # the scan sees the calls
    assert literals <= decide_module.RESTART_REASONS
    for reason in ("OOMKilled", "OOMKilledOrKilled", "Preempted", "Evicted", "WorkerFailed"):
        assert decide_module.restart_reason_label(reason) == reason
    assert decide_module.restart_reason_label("SomethingElse") == "Other"


def _env(d: Decision) -> list[dict[str, Any]]:
    return [
        {e["name"]: e.get("value") for e in o["spec"]["containers"][0]["env"]}
        for o in d.create
        if o["kind"] == "Pod"
    ]


def test_queue_wait_counts_from_creation_suspended_time_included() -> None:
    job = make_job(suspend=True)
    assert job.metadata.model_extra is not None
    job.metadata.model_extra["creationTimestamp"] = format_time(T0 - timedelta(seconds=30))
    job, d = step(job)
    assert (d.status.state, d.queue_wait_seconds) == (JobState.SUSPENDED, None)
    job.spec.run_policy.suspend = False  # admitted (e.g. by Kueue) 100 s after creation
    job, d = step(job, (), T0 + timedelta(seconds=70))
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    assert d.queue_wait_seconds == 100


def test_queue_wait_counts_from_the_resume_of_a_job_that_ran_and_not_restarts() -> None:
    job = running_job()
    job.spec.run_policy.suspend = True
    job, _ = step(job, gang(), T0 + timedelta(seconds=10))
    job.spec.run_policy.suspend = False
    terminating = tuple(pod(r, deleting=True) for r in range(2))
    job, d = step(job, terminating, T0 + timedelta(seconds=11))  # resumed; old gang going
    assert (d.create, d.queue_wait_seconds) == ([], None)
    job, d = step(job, (), T0 + timedelta(seconds=15))
    assert created_pods(d) == ["j-worker-0-a1", "j-worker-1-a1"]
    assert d.queue_wait_seconds == 4
    # A preemption restarts the gang: no queue wait; the new pods know the disruption.
    job, _ = step(job, gang("Running", attempt=1), T0 + timedelta(seconds=16))
    job, d = step(
        job,
        (pod(0, "Running", attempt=1), pod(1, "Failed", attempt=1, exit_code=75)),
        T0 + timedelta(seconds=20),
    )
    assert d.gang_restart_reason == "Preempted"
    job, d = step(job, (pod(1, "Failed", attempt=1, exit_code=75),), T0 + timedelta(seconds=40))
    assert created_pods(d) == ["j-worker-0-a2", "j-worker-1-a2"]
    assert d.queue_wait_seconds is None
    assert [e["KUBEGRAFT_PREEMPTIONS"] for e in _env(d)] == ["1", "1"]
