"""The FineTuneJob state machine: ``decide(job, observed, now) -> Decision``. Pure.

One call looks at the job (spec and the status written last time), the observed pods, nodes
and progress report, and the clock, and returns everything the shell must do: the complete
new status (written in ONE patch), objects to create if absent, pods to delete, Events to emit
after the write, and when to look again. No I/O and no clock reads here, so every path
(gang restart, back-off, stall, startup timeout, deadline, suspend, TTL) is a unit test.

States (``status.state``) and how they move::

    (new) -> Pending --all workers Running--> Running --all exit 0--> Succeeded
               |  \\_ startupTimeout (Unschedulable, ImagePullBackOff, StartupTimeout) -> Failed
               v
    any retryable failure (exit 1/137.., OOMKilled, stall)
        -> Restarting (old gang deleted, back-off base*2^(n-1)) -> Pending (attempt+1) -> ...
        -> Failed BackoffLimitExceeded once restarts == backoffLimit
    a disruption (exit 75 preemption, eviction, DisruptionTarget, node NotReady, pod deleted)
        -> Restarting likewise, counted in disruptions, not restarts
        -> Failed MaxDisruptionsExceeded once disruptions == maxDisruptions
    exit 78 (CONFIG_ERROR) -> Failed ConfigurationError at once
    output claim missing, or not ReadWriteMany with nodes > 1 -> Failed OutputClaim* (no pods)
    activeDeadlineSeconds of time not suspended since startTime -> Failed DeadlineExceeded
    suspend: true -> Suspended (pods deleted, status kept); false -> Pending (attempt+1)
    a queue name (Kueue, :mod:`.kueue`): Queued (no pods, the Workload created) until Kueue
        admits it -> Pending (flavors injected); evicted/preempted -> Queued (gang stopped,
        attempt+1, reservation cleared); finished -> the Workload marked Finished
    pods of an earlier job of the same name (other owner UID) -> Pending WaitingForPreviousJob

Clocks come from the status itself, so a restarted operator resumes them: the back-off from
the Restarting condition's lastTransitionTime, the startup timeout from the current attempt's
pod creation times, the stall clocks from ``progress.heartbeatAt`` (rank 0's last report) and
``progress.updatedAt`` (its step's last change) or the Running condition's lastTransitionTime
(:func:`~kubegraft_operator.progress_status.stall_clock`), the deadline from ``startTime``
plus ``suspendedSeconds`` (the Suspended condition's lastTransitionTime says when a
suspension began).

Disruptions are kept apart from failures as a Kubernetes Job's pod failure policy ignores
pods with the DisruptionTarget condition: a preempted, evicted or deleted pod, or one on a
lost node, says nothing about the job, so it must not use up ``backoffLimit`` (a busy cluster
would otherwise fail healthy jobs). In a gang one disrupted pod makes its peers fail too (a
lost rendezvous peer, NCCL errors): when any pod of the failing gang was disrupted, the
restart is a disruption.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kubegraft.api.v1alpha1 import FineTuneJob, FineTuneJobStatus, JobState
from kubegraft.exitcodes import ExitCode, describe, is_permanent
from kubegraft_operator import conditions as cond
from kubegraft_operator import kueue, names
from kubegraft_operator.observe import (
    CONFIG_PROBLEMS,
    IMAGE_PROBLEMS,
    ClaimObservation,
    Observation,
    PodObservation,
    PodPhase,
    format_time,
    parse_time,
)
from kubegraft_operator.progress_status import fold_progress, stall_clock
from kubegraft_operator.render import render_infrastructure, render_pod

Obj = dict[str, Any]

RESYNC_SECONDS = 600.0
"""Look again at least this often even when nothing happens (a missed watch event heals).
Every input a pass reads is watched (the job, its pods, nodes, Workloads) or pushed (rank 0's
report), and every clock (startup, stall, deadline, TTL, back-off) asks for its own requeue,
so this is a safety net, not a poll: at 60 s it cost 3 % of a core for 1000 idle jobs
(bench/README.md, ``--quiet``); controller-runtime's default is 10 hours."""
QUEUE_RECHECK_SECONDS = 60.0
"""Look again this often while a queued job's LocalQueue or PriorityClass does not exist:
neither is watched, so nothing else wakes the job when it is created."""
CONFIRM_SECONDS = 2.0
"""Look again soon while waiting for pods we deleted to go away."""
ACTIVE = frozenset({PodPhase.PENDING, PodPhase.RUNNING, PodPhase.UNKNOWN})

DISRUPTION_REASONS = frozenset({"Evicted", "Preempting", "NodeLost", "Terminated"})
"""Pod-level status reasons that mean the pod was taken away: the kubelet's node-pressure
eviction, preemption by a critical pod, a lost node, a graceful node shutdown (container
termination reasons never use these names)."""
OOM_KILLED = "OOMKilled"
RESTART_REASONS = frozenset(
    {
        *DISRUPTION_REASONS,
        OOM_KILLED,
        "NodeLost",
        "PodDeleted",
        "Stalled",
        *(describe(code) for code in (*ExitCode, 137, 143)),
    }
)
"""The gang-restart reasons this module gives (``_restart``'s callers); a failed pod's own
status reason that is none of them (any string a kubelet or another controller may write) is
counted as OTHER_REASON, so the restarts-by-reason counter has a bounded set of series."""
OTHER_REASON = "Other"


def restart_reason_label(reason: str) -> str:
    """The restart counter's ``reason`` label: the reason when it is one of ours, else Other."""
    return reason if reason in RESTART_REASONS else OTHER_REASON


WORKLOAD_FINISHED = "WorkloadFinished"
"""The Admitted condition's reason once the job's Kueue Workload is Finished (or gone)."""

WARNING_REASONS = frozenset(
    {
        "Unschedulable",
        "ImagePullBackOff",
        "CreateContainerConfigError",
        "StartupTimeout",
        "WaitingForPreviousJob",
    }
)


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the job after the status write succeeded."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Decision:
    """What one reconcile must do."""

    status: FineTuneJobStatus
    """The complete new status (the shell writes it only when it differs from the old one)."""
    create: list[Obj] = field(default_factory=list)
    """Objects to create if absent, in order (a 409 AlreadyExists is success)."""
    delete_pods: list[str] = field(default_factory=list)
    """Pod names to delete (a 404 is success)."""
    force_delete_pods: list[str] = field(default_factory=list)
    """Pods on NotReady nodes: deleted with grace period 0, since no kubelet will confirm a
    graceful deletion and the next gang must not wait for them forever."""
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = RESYNC_SECONDS
    """Seconds until the next look even without a watch event."""
    delete_job: bool = False
    """ttlSecondsAfterFinished has passed: delete the FineTuneJob itself."""
    gang_restart_reason: str | None = None
    """Set when this decision restarts the gang, for the restarts-by-reason counter: one of
    RESTART_REASONS or OTHER_REASON (the condition and the Event keep the pod's own reason)."""
    queue_wait_seconds: float | None = None
    """Set when this decision creates a whole gang that was waiting, not restarting: seconds
    since the job's creation (first gang; suspended or queued time included) or its resume (a
    job that had run, suspended and resumed). For the queue-wait histogram."""
    workload_patch: tuple[str, Obj] | None = None
    """(Workload name, merge patch of its status): clear the reservation after an eviction, or
    mark it Finished (:mod:`.kueue`)."""


@dataclass
class _Ctx:
    job: FineTuneJob
    obs: Observation
    now: datetime
    now_s: str
    generation: int | None
    namespace: str
    uid: str
    status: FineTuneJobStatus
    decision: Decision = field(init=False)

    def __post_init__(self) -> None:
        self.decision = Decision(status=self.status)

    def set(self, type_: str, status: cond.Status, reason: str, message: str = "") -> None:
        self.status.conditions = cond.set_condition(
            self.status.conditions,
            type_,
            status,
            reason,
            message,
            now=self.now_s,
            generation=self.generation,
        )

    def clear(self, type_: str, reason: str, message: str = "") -> None:
        """Set a condition False, but only if it exists (absent conditions stay absent)."""
        if cond.get_condition(self.status.conditions, type_) is not None:
            self.set(type_, "False", reason, message)

    def state(self, state: JobState, reason: str, message: str) -> None:
        self.status.state = state
        self.status.reason = reason
        self.status.message = message

    def requeue(self, seconds: float | None) -> None:
        """Keep the earliest requested requeue."""
        if seconds is None:
            return
        seconds = max(0.5, seconds)
        cur = self.decision.requeue_after
        self.decision.requeue_after = seconds if cur is None else min(cur, seconds)

    def delete_active(self, pods: list[PodObservation]) -> None:
        lost = self.obs.not_ready_nodes
        for p in pods:
            if p.phase not in ACTIVE:
                continue
            if p.node_name and p.node_name in lost:
                if p.name not in self.decision.force_delete_pods:
                    self.decision.force_delete_pods.append(p.name)
            elif not p.deleting and p.name not in self.decision.delete_pods:
                self.decision.delete_pods.append(p.name)


def _meta_extra(job: FineTuneJob, key: str) -> Any:
    return (job.metadata.model_extra or {}).get(key)


def keeps_reconciling(job: Mapping[str, Any]) -> bool:
    """Whether a FineTuneJob (a raw object) still needs its reconcile loop (the kopf daemon's
    filter). A finished job with no active pod and no TTL to honour has nothing left to do:
    kopf then stops its daemon and, since no other handler needs one, drops the finalizer, so
    finished jobs can be deleted (or the CRD removed) with no operator running. A job that
    finished before ``status.active`` existed keeps its loop until a pass has counted them."""
    status = job.get("status") or {}
    if status.get("state") not in (JobState.SUCCEEDED.value, JobState.FAILED.value):
        return True
    admitted = next(
        (c for c in status.get("conditions") or [] if c.get("type") == cond.ADMITTED), None
    )
    if admitted is not None and admitted.get("reason") != WORKLOAD_FINISHED:
        return True  # Kueue's Workload is still to be marked Finished (its quota released)
    ttl = ((job.get("spec") or {}).get("runPolicy") or {}).get("ttlSecondsAfterFinished")
    return ttl is not None or status.get("active") != 0


def claim_to_check(job: FineTuneJob, observed: Observation) -> str | None:
    """The output claim the shell must read before deciding: the job names one and a gang
    may be created in this pass (it is not finished and some rank of its current attempt has
    no pod). Reading it only then keeps a running job's passes free of extra requests."""
    claim = job.spec.output.persistent_volume_claim
    status = job.status or FineTuneJobStatus()
    if claim is None or status.state in (JobState.SUCCEEDED, JobState.FAILED):
        return None
    ranks = {p.rank for p in observed.pods if p.attempt == status.attempt}
    return claim if len(ranks) < job.spec.distributed.nodes else None


def claim_problem(job: FineTuneJob, claim: ClaimObservation | None) -> tuple[str, str] | None:
    """(reason, message) when the output claim cannot hold the job's output; None when it
    can or was not read. The CRD cannot see another object, so this is checked here: the
    claim must exist, and with nodes > 1 be ReadWriteMany, since every node writes its part
    of each checkpoint into it. A claim still Pending (being provisioned) is fine."""
    if claim is None:
        return None
    field = "spec.output.persistentVolumeClaim"
    ns = job.metadata.namespace or "default"
    if not claim.found:
        return (
            "OutputClaimNotFound",
            f"{field}: PersistentVolumeClaim {ns}/{claim.name} does not exist; create it "
            "(ReadWriteMany when distributed.nodes > 1), then recreate the job",
        )
    nodes = job.spec.distributed.nodes
    if nodes > 1 and "ReadWriteMany" not in claim.access_modes:
        modes = ", ".join(claim.access_modes) or "none"
        return (
            "OutputClaimNotReadWriteMany",
            f"{field}: PersistentVolumeClaim {ns}/{claim.name} has access modes [{modes}]; "
            f"a job on {nodes} nodes needs ReadWriteMany (every node writes its part of each "
            "checkpoint to the shared output)",
        )
    return None


def backoff_seconds(base: int, restarts: int) -> float:
    """Delay before gang restart number ``restarts`` (1-based): base * 2^(restarts-1), capped
    at one hour."""
    return float(min(3600, base * (2 ** max(0, restarts - 1))))


def decide(job: FineTuneJob, observed: Observation, now: datetime) -> Decision:
    """The next step for ``job`` given what is observed at ``now``."""
    old = job.status or FineTuneJobStatus()
    status = old.model_copy(deep=True)
    ctx = _Ctx(
        job=job,
        obs=observed,
        now=now,
        now_s=format_time(now),
        generation=_meta_extra(job, "generation"),
        namespace=job.metadata.namespace or "default",
        uid=str(_meta_extra(job, "uid") or ""),
        status=status,
    )
    spec = job.spec
    n = spec.distributed.nodes
    status.nodes = n
    status.observed_generation = ctx.generation
    ctx.status = status = fold_progress(
        status, observed.progress, main_metric=spec.training.metric_for_best, now=ctx.now_s
    )
    ctx.decision.status = status

    _step(ctx)
    if kueue.queue_name(job) is not None and status.state in (JobState.SUCCEEDED, JobState.FAILED):
        _release_workload(ctx)

    # Infrastructure numbers, after the step (a restart moves to a new attempt).
    current = [p for p in observed.pods if p.attempt == status.attempt]
    ready = sum(1 for p in current if p.phase == PodPhase.RUNNING and not p.deleting)
    if status.state in (JobState.SUCCEEDED,):
        ready = 0
    status.ready_nodes = ready
    status.nodes_ready = f"{ready}/{n}"
    created = sum(1 for o in ctx.decision.create if o.get("kind") == "Pod")
    status.active = created + sum(1 for p in observed.pods if p.phase in ACTIVE)

    if (old.state, old.reason) != (status.state, status.reason) and status.state is not None:
        ctx.decision.events.append(_event_for(status))
    return ctx.decision


def _event_for(status: FineTuneJobStatus) -> Event:
    reason = status.reason or str(status.state)
    warn = status.state in (JobState.FAILED, JobState.RESTARTING) or reason in WARNING_REASONS
    return Event(type="Warning" if warn else "Normal", reason=reason, message=status.message or "")


def _step(ctx: _Ctx) -> None:
    st = ctx.status
    spec = ctx.job.spec
    rp = spec.run_policy
    pods = list(ctx.obs.pods)

    if st.state in (JobState.SUCCEEDED, JobState.FAILED):
        _finished(ctx, pods)
        return

    if rp.suspend:
        ctx.delete_active(pods)
        if st.state != JobState.SUSPENDED:
            ctx.state(
                JobState.SUSPENDED,
                "Suspended",
                "job suspended: pods deleted, status and checkpoints kept",
            )
        ctx.set(cond.SUSPENDED, "True", "Suspended", "runPolicy.suspend is true")
        ctx.clear(cond.RUNNING, "Suspended", "job suspended")
        active = [p for p in pods if p.phase in ACTIVE]
        ctx.decision.requeue_after = CONFIRM_SECONDS if active else None
        return

    if st.state == JobState.SUSPENDED:
        # Resume: a fresh attempt (new pod names), from the latest checkpoint; not a restart.
        _count_paused_time(ctx, cond.SUSPENDED, "True")
        st.attempt += 1
        ctx.state(JobState.PENDING, "Resumed", f"job resumed as attempt {st.attempt}")
        ctx.set(cond.SUSPENDED, "False", "Resumed", "runPolicy.suspend is false")

    if kueue.queue_name(ctx.job) is not None and not _admitted(ctx, pods):
        return  # queued: no gang, and the deadline clock does not run

    if st.start_time and rp.active_deadline_seconds is not None:
        started = parse_time(st.start_time)
        if started is not None:
            deadline = started + timedelta(
                seconds=rp.active_deadline_seconds + st.suspended_seconds
            )
            if ctx.now >= deadline:
                _fail(
                    ctx,
                    pods,
                    "DeadlineExceeded",
                    "job was active longer than activeDeadlineSeconds="
                    f"{rp.active_deadline_seconds} (time suspended not counted)",
                )
                return
            ctx.requeue((deadline - ctx.now).total_seconds())

    current = [p for p in pods if p.attempt == st.attempt]
    stale = [p for p in pods if p.attempt != st.attempt]

    # Failures of the current gang, permanent ones first.
    failed = [p for p in current if p.phase == PodPhase.FAILED]
    for p in failed:
        if p.exit_code is not None and is_permanent(p.exit_code) and not _disrupted(p):
            _fail(
                ctx,
                pods,
                describe(p.exit_code),
                f"worker {p.rank} ({p.name}) exited with code {p.exit_code}: the job cannot "
                f"succeed by retrying; fix the spec{_detail(p)}",
            )
            return
    lost_node = [p for p in current if p.phase in ACTIVE and p.node_name in ctx.obs.not_ready_nodes]
    deleted = [p for p in current if p.deleting and p.phase != PodPhase.FAILED]
    present = {p.rank for p in current}
    missing = sorted(set(range(spec.distributed.nodes)) - present)
    # A disruption explains its peers' failures: it wins as the cause of the restart.
    disrupted = [p for p in failed if _disrupted(p)]
    if disrupted:
        p = disrupted[0]
        _restart(ctx, pods, *_failure(p), disruption=True)
        return
    if lost_node:
        p = lost_node[0]
        _restart(
            ctx,
            pods,
            "NodeLost",
            f"node {p.node_name} of worker {p.rank} ({p.name}) is NotReady",
            disruption=True,
        )
        return
    if deleted:
        p = deleted[0]
        _restart(
            ctx,
            pods,
            "PodDeleted",
            f"worker {p.rank} ({p.name}) was deleted or evicted",
            disruption=True,
        )
        return
    if failed:
        _restart(ctx, pods, *_failure(failed[0]))
        return
    if missing and st.state == JobState.RUNNING:
        _restart(
            ctx,
            pods,
            "PodDeleted",
            f"worker pod(s) of rank {missing} disappeared",
            disruption=True,
        )
        return
    if current and not missing and all(p.phase == PodPhase.SUCCEEDED for p in current):
        _succeed(ctx, pods)
        return

    if st.state == JobState.RESTARTING:
        restarting = cond.get_condition(st.conditions, cond.RESTARTING)
        began = parse_time(restarting.last_transition_time if restarting else None) or ctx.now
        ready_at = began + timedelta(
            seconds=backoff_seconds(rp.restart_backoff_seconds, st.restarts)
        )
        if ctx.now < ready_at:
            ctx.delete_active(stale)
            ctx.requeue((ready_at - ctx.now).total_seconds())
            return

    if missing:
        _create_gang(ctx, stale, missing)
        return

    _forming_or_running(ctx, current)


def _disrupted(p: PodObservation) -> bool:
    """Whether the pod was taken away rather than failing by itself: the trainer's
    preemption exit (75, it saved a checkpoint on SIGTERM), the DisruptionTarget condition,
    a kubelet eviction, or a deletion by someone else (the operator deletes only pods of
    attempts it has moved past, so a current pod being deleted was not deleted by it)."""
    return (
        p.disrupted
        or p.deleting
        or p.exit_code == ExitCode.PREEMPTED
        or p.reason in DISRUPTION_REASONS
    )


def _failure(p: PodObservation) -> tuple[str, str]:
    """(reason, message) of a failed worker; an OOM kill says OOMKilled in the reason."""
    if p.reason == OOM_KILLED:
        return OOM_KILLED, f"worker {p.rank} ({p.name}) was OOMKilled (exit code {p.exit_code})"
    if p.reason in DISRUPTION_REASONS:  # the pod's own verdict names the cause, not the code
        return p.reason or "", f"worker {p.rank} ({p.name}) failed{_detail(p)}"
    if p.exit_code is not None:
        return (
            describe(p.exit_code),
            f"worker {p.rank} ({p.name}) exited with code {p.exit_code}{_detail(p)}",
        )
    return p.reason or "WorkerFailed", f"worker {p.rank} ({p.name}) failed{_detail(p)}"


def _count_paused_time(ctx: _Ctx, type_: str, paused: cond.Status) -> None:
    """On resume or admission: add the pause that is ending (condition ``type_`` in status
    ``paused`` since its transition: Suspended True, Admitted False) to ``suspendedSeconds``
    when the deadline clock was running (the job had started), so activeDeadlineSeconds counts
    only time not suspended or queued, and a resumed job continues its budget where the pause
    stopped it."""
    st = ctx.status
    started = parse_time(st.start_time)
    suspended = cond.get_condition(st.conditions, type_)
    since = parse_time(suspended.last_transition_time) if suspended is not None else None
    if started is None or since is None or suspended is None or suspended.status != paused:
        return
    since = max(since, started)
    if ctx.now > since:
        st.suspended_seconds += int((ctx.now - since).total_seconds())


def _admitted(ctx: _Ctx, pods: list[PodObservation]) -> bool:
    """Kueue's gate for a job with a queue name: True when its Workload is admitted (the gang
    may run; the pods get the flavors, see :func:`_create_gang`). Otherwise the job is Queued:
    no pod runs (a running gang is stopped gracefully, so the trainer checkpoints, and the
    next admission starts a new attempt), the Workload is created when missing, and after an
    eviction the reservation is cleared once no pod is active (:mod:`.kueue`)."""
    st = ctx.status
    q = ctx.obs.queue or kueue.QueueObservation()
    wl = q.workload
    if wl is not None and wl.is_true(kueue.FINISHED):
        finished = wl.condition(kueue.FINISHED)
        detail = f"{finished.reason}: {finished.message}" if finished else ""
        _fail(
            ctx, pods, WORKLOAD_FINISHED, f"Kueue declared Workload {wl.name} finished ({detail})"
        )
        return False
    if kueue.admitted(wl):
        assert wl is not None
        message = f"Workload {wl.name} admitted by ClusterQueue {wl.cluster_queue}"
        if st.state == JobState.QUEUED:
            _count_paused_time(ctx, cond.ADMITTED, "False")
            ctx.state(JobState.PENDING, "Admitted", message)
        ctx.set(cond.ADMITTED, "True", "Admitted", message)
        return True
    active = [p for p in pods if p.phase in ACTIVE and not p.deleting]
    if any(p.attempt == st.attempt for p in pods):
        st.attempt += 1  # the gang of this attempt is being stopped; admission starts a new one
    ctx.delete_active(pods)
    reason, message = kueue.waiting_message(ctx.job, q)
    if wl is None and not q.priority_class_found:
        reason = "PriorityClassNotFound"
        message = (
            f"spec.pod.priorityClassName: PriorityClass {ctx.job.spec.pod.priority_class_name} "
            "does not exist; the Workload is created once it does"
        )
    if active:
        message = (
            f"stopping {len(active)} worker pod(s) (SIGTERM: the trainer checkpoints); {message}"
        )
    ctx.state(JobState.QUEUED, reason, message)
    ctx.set(cond.ADMITTED, "False", reason, message)
    ctx.clear(cond.RUNNING, reason, message)
    stopping = [p for p in pods if p.phase in ACTIVE]
    if stopping:
        ctx.requeue(CONFIRM_SECONDS)
        return False
    if wl is None and q.priority_class_found and q.local_queue_found:
        template = render_pod(
            ctx.job, namespace=ctx.namespace, uid=ctx.uid, rank=0, attempt=st.attempt
        )
        ctx.decision.create.append(
            kueue.render_workload(
                ctx.job,
                namespace=ctx.namespace,
                uid=ctx.uid,
                template=template,
                priority=q.priority,
            )
        )
    elif wl is not None and kueue.needs_requeue(wl):
        ctx.decision.workload_patch = (wl.name, kueue.requeue_patch(wl, now=ctx.now_s))
    if wl is None and not (q.priority_class_found and q.local_queue_found):
        ctx.requeue(QUEUE_RECHECK_SECONDS)
    # Otherwise Kueue's changes to the Workload wake the job (the operator watches Workloads).
    return False


def _release_workload(ctx: _Ctx) -> None:
    """A finished job with a queue name: mark its Workload Finished, so Kueue frees the quota;
    once it is (or the Workload is gone) the Admitted condition says so, and the job needs no
    more reconciling (:func:`keeps_reconciling`)."""
    st = ctx.status
    q = ctx.obs.queue
    wl = q.workload if q is not None else None
    done = f"the job {st.state}; its Workload is finished"
    if wl is None or wl.is_true(kueue.FINISHED):
        ctx.clear(cond.ADMITTED, WORKLOAD_FINISHED, done)
        return
    ctx.decision.workload_patch = (
        wl.name,
        kueue.finish_patch(
            wl, succeeded=st.state == JobState.SUCCEEDED, message=st.message or "", now=ctx.now_s
        ),
    )
    ctx.requeue(CONFIRM_SECONDS)


def _detail(p: PodObservation) -> str:
    bits = [b for b in (p.reason, p.message) if b]
    return f" ({': '.join(bits)})" if bits else ""


def _create_gang(ctx: _Ctx, stale: list[PodObservation], missing: list[int]) -> None:
    """Create the missing pods of the current attempt, once the previous gang is gone (and
    the pods of an earlier job of the same name, which share the names and hostnames)."""
    st = ctx.status
    if _waiting_for_previous_job(ctx, missing):
        return
    waited = _queue_wait(ctx) if len(missing) == ctx.job.spec.distributed.nodes else None
    old_active = [p for p in stale if p.phase in ACTIVE]
    if old_active:
        # Same hostnames: let the old gang go first so DNS never points at two rank 0s.
        ctx.delete_active(old_active)
        if st.state not in (JobState.RESTARTING,):
            ctx.state(
                JobState.PENDING,
                "WaitingForPreviousGang",
                f"waiting for {len(old_active)} pod(s) of the previous attempt to terminate",
            )
        ctx.requeue(CONFIRM_SECONDS)
        return
    problem = claim_problem(ctx.job, ctx.obs.output_claim)
    if problem is not None:
        _fail(ctx, list(ctx.obs.pods), *problem)  # no pods created
        return
    d = ctx.decision
    # Infrastructure too, every time a gang is created: create-if-absent makes it cheap, and a
    # half-finished first reconcile (operator killed) heals itself.
    d.create.extend(render_infrastructure(ctx.job, namespace=ctx.namespace, uid=ctx.uid))
    q = ctx.obs.queue
    admission = (
        kueue.pod_set_info(q.workload, q.flavors)
        if q is not None and q.workload is not None and kueue.queue_name(ctx.job)
        else None
    )
    for rank in missing:
        pod = render_pod(
            ctx.job,
            namespace=ctx.namespace,
            uid=ctx.uid,
            rank=rank,
            attempt=st.attempt,
            disruptions=st.disruptions,
        )
        d.create.append(kueue.inject(pod, admission) if admission is not None else pod)
    d.queue_wait_seconds = waited
    n = ctx.job.spec.distributed.nodes
    ctx.set(
        cond.CREATED, "True", "PodsCreated", f"created {n} worker pod(s) for attempt {st.attempt}"
    )
    ctx.state(JobState.PENDING, "WaitingForGang", f"0/{n} workers running (attempt {st.attempt})")
    ctx.requeue(float(ctx.job.spec.run_policy.startup_timeout_seconds))


def _queue_wait(ctx: _Ctx) -> float | None:
    """Seconds the gang about to be created has waited: since the job's creation when it never
    ran, since its resume when it ran before; None for a gang restart (its own counter says
    why) or without the time it counts from."""
    st = ctx.status
    if st.state == JobState.RESTARTING:
        return None
    if st.start_time is None:
        since = parse_time((ctx.job.metadata.model_extra or {}).get("creationTimestamp"))
    else:
        resumed = cond.get_condition(st.conditions, cond.SUSPENDED)
        if resumed is None or resumed.status != "False" or resumed.reason != "Resumed":
            return None
        since = parse_time(resumed.last_transition_time)
    return max((ctx.now - since).total_seconds(), 0.0) if since is not None else None


def _waiting_for_previous_job(ctx: _Ctx, missing: list[int]) -> bool:
    """Whether pods of another owner under this job's name (a deleted job of the same name,
    its pods still terminating) keep the gang from being created: while one is active it
    answers to the gang's hostnames and the Service's selector, and any with the name of a
    pod to create blocks that name. They are not ours to delete; the garbage collector is
    removing them, and their deletion events wake the job."""
    mine = {names.pod(ctx.job.metadata.name, r, ctx.status.attempt) for r in missing}
    blocking = [p for p in ctx.obs.foreign_pods if p.phase in ACTIVE or p.name in mine]
    if not blocking:
        return False
    owners = sorted({p.owner_uid or "none" for p in blocking})
    ctx.state(
        JobState.PENDING,
        "WaitingForPreviousJob",
        f"waiting for {len(blocking)} pod(s) of an earlier job named {ctx.job.metadata.name} "
        f"(owner uid {', '.join(owners)}) to terminate: " + ", ".join(p.name for p in blocking[:5]),
    )
    ctx.requeue(CONFIRM_SECONDS * 5)
    return True


def _forming_or_running(ctx: _Ctx, current: list[PodObservation]) -> None:
    st = ctx.status
    rp = ctx.job.spec.run_policy
    n = ctx.job.spec.distributed.nodes
    up = [p for p in current if p.phase in (PodPhase.RUNNING, PodPhase.SUCCEEDED)]
    if len(up) == n:
        if st.state != JobState.RUNNING:
            ctx.state(
                JobState.RUNNING, "GangRunning", f"all {n} workers running (attempt {st.attempt})"
            )
        if st.start_time is None:
            st.start_time = ctx.now_s
            if rp.active_deadline_seconds is not None:
                ctx.requeue(float(rp.active_deadline_seconds))
        ctx.set(
            cond.RUNNING, "True", "GangRunning", f"all {n} workers running (attempt {st.attempt})"
        )
        ctx.clear(cond.RESTARTING, "GangRunning", f"gang running again (attempt {st.attempt})")
        # Stall: rank 0's heartbeats stopped, or it trains and the step does not move.
        running = cond.get_condition(st.conditions, cond.RUNNING)
        stall = stall_clock(
            st.progress,
            running_since=parse_time(running.last_transition_time if running else None) or ctx.now,
            stall_timeout=rp.stall_timeout_seconds,
            progress_interval=rp.progress_interval_seconds,
        )
        if ctx.now >= stall.at:
            _restart(ctx, list(ctx.obs.pods), "Stalled", stall.reason)
            return
        ctx.requeue((stall.at - ctx.now).total_seconds())
        return

    # The gang is forming: say why it is not running yet, and give up after the timeout.
    reason, message = "WaitingForGang", f"{len(up)}/{n} workers running (attempt {st.attempt})"
    gated = False
    for p in current:
        if p.phase in (PodPhase.RUNNING, PodPhase.SUCCEEDED):
            continue
        if p.reason == "SchedulingGated":
            # Held by a queue (Kueue's pod integration): waiting for admission is not a
            # startup failure, so the startup clock does not run.
            gated = True
            reason = "SchedulingGated"
            message = (
                f"{len(up)}/{n} workers running; worker {p.rank} is held by a scheduling gate "
                "(a Kueue pod group waiting for admission)"
            )
            break
        if p.reason in IMAGE_PROBLEMS:
            reason, message = (
                "ImagePullBackOff",
                f"worker {p.rank}: {p.reason}: {p.message}".rstrip(": "),
            )
            break
        if p.reason in CONFIG_PROBLEMS:
            reason, message = (
                "CreateContainerConfigError",
                f"worker {p.rank}: {p.reason}: {p.message}",
            )
            break
        if p.reason == "Unschedulable":
            reason = "Unschedulable"
            message = (
                f"{len(up)}/{n} workers running; worker {p.rank} cannot be scheduled: {p.message}"
            )
            break
    ctx.state(JobState.QUEUED if gated else JobState.PENDING, reason, message)
    if gated:
        return
    created = [p.created for p in current if p.created is not None]
    first = min(created) if created else ctx.now
    deadline = first + timedelta(seconds=rp.startup_timeout_seconds)
    if ctx.now >= deadline:
        _fail(
            ctx,
            list(ctx.obs.pods),
            reason if reason != "WaitingForGang" else "StartupTimeout",
            f"workers did not all start within startupTimeoutSeconds="
            f"{rp.startup_timeout_seconds}: {message}",
        )
        return
    ctx.requeue((deadline - ctx.now).total_seconds())


def _restart(
    ctx: _Ctx,
    pods: list[PodObservation],
    reason: str,
    message: str,
    *,
    disruption: bool = False,
) -> None:
    """Restart the whole gang (next attempt, from the last checkpoint), or fail when the
    budget is used up: ``backoffLimit`` for failures, ``maxDisruptions`` for disruptions."""
    st = ctx.status
    rp = ctx.job.spec.run_policy
    if disruption and st.disruptions >= rp.max_disruptions:
        _fail(
            ctx,
            pods,
            "MaxDisruptionsExceeded",
            f"{reason}: {message}; gang restarted {st.disruptions} time(s) after "
            f"disruptions, maxDisruptions={rp.max_disruptions}",
        )
        return
    if not disruption and st.restarts >= rp.backoff_limit:
        _fail(
            ctx,
            pods,
            "BackoffLimitExceeded",
            f"{reason}: {message}; gang restarted {st.restarts} time(s), "
            f"backoffLimit={rp.backoff_limit}",
        )
        return
    ctx.delete_active(pods)
    if disruption:
        st.disruptions += 1
        count = f"disruption {st.disruptions}/{rp.max_disruptions}"
    else:
        st.restarts += 1
        count = f"restart {st.restarts}/{rp.backoff_limit}"
    st.attempt += 1
    st.last_restart_reason = reason
    # The back-off grows with failures only (as the Job controller's): a disruption waits the
    # delay the failures so far have reached.
    delay = backoff_seconds(rp.restart_backoff_seconds, st.restarts)
    ctx.state(
        JobState.RESTARTING,
        reason,
        f"{message}; restarting the gang as attempt {st.attempt} in {delay:g}s ({count})",
    )
    ctx.set(cond.RESTARTING, "True", reason, message)
    ctx.clear(cond.RUNNING, reason, message)
    ctx.decision.gang_restart_reason = restart_reason_label(reason)
    ctx.requeue(delay if delay > 0 else CONFIRM_SECONDS)


def _fail(ctx: _Ctx, pods: list[PodObservation], reason: str, message: str) -> None:
    st = ctx.status
    ctx.delete_active(pods)
    ctx.state(JobState.FAILED, reason, message)
    st.completion_time = ctx.now_s
    ctx.set(cond.FAILED, "True", reason, message)
    ctx.clear(cond.RUNNING, reason, message)
    ctx.clear(cond.RESTARTING, reason, message)
    _ttl(ctx)


def _succeed(ctx: _Ctx, pods: list[PodObservation]) -> None:
    st = ctx.status
    n = ctx.job.spec.distributed.nodes
    ctx.delete_active(pods)  # stragglers of older attempts, if any
    message = f"all {n} workers exited 0 (attempt {st.attempt})"
    ctx.state(JobState.SUCCEEDED, "Completed", message)
    st.completion_time = ctx.now_s
    if st.start_time is None:
        st.start_time = ctx.now_s
    ctx.set(cond.SUCCEEDED, "True", "Completed", message)
    ctx.clear(cond.RUNNING, "Completed", message)
    ctx.clear(cond.RESTARTING, "Completed", message)
    _ttl(ctx)


def _finished(ctx: _Ctx, pods: list[PodObservation]) -> None:
    """A finished job: make sure nothing still runs, and honour ttlSecondsAfterFinished."""
    ctx.delete_active(pods)
    ctx.decision.requeue_after = CONFIRM_SECONDS if _deleting(ctx) else None
    _ttl(ctx)


def _deleting(ctx: _Ctx) -> bool:
    return bool(ctx.decision.delete_pods or ctx.decision.force_delete_pods)


def _ttl(ctx: _Ctx) -> None:
    ttl = ctx.job.spec.run_policy.ttl_seconds_after_finished
    done = parse_time(ctx.status.completion_time)
    if ttl is None or done is None:
        if ctx.status.state in (JobState.SUCCEEDED, JobState.FAILED):
            ctx.decision.requeue_after = CONFIRM_SECONDS if _deleting(ctx) else None
        return
    expires = done + timedelta(seconds=ttl)
    if ctx.now >= expires:
        ctx.decision.delete_job = True
        ctx.decision.requeue_after = None
    else:
        ctx.decision.requeue_after = None
        ctx.requeue((expires - ctx.now).total_seconds())
