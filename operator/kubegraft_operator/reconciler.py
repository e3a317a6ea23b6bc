"""One FineTuneJob's control loop: observe -> decide -> apply -> one status write -> Events.

kopf runs :meth:`Reconciler.run_job` as a daemon per job (see :mod:`.main`). The loop waits on
the job's wake-up (set by the pod/ConfigMap/node watches and by spec changes) or on the
requeue delay the decision asked for, so nothing ever sleeps blindly and nothing polls fast.

The status a decision starts from must be the newest one: the daemon is the only writer of
the status, so the object returned by its own last status patch is used until the watch
delivers something at least as new (compared by resourceVersion).

Errors never kill the loop: API errors are counted, logged and retried after a back-off (a
restarted kube-apiserver, a 409 or a 404 heal on the next pass). Pod creation that the API
server refuses for a reason retrying cannot fix (422 Invalid) fails the job with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from kubegraft.api.v1alpha1 import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, JobState
from kubegraft_operator import codec, kueue, metrics, settings, status_writes
from kubegraft_operator import conditions as cond
from kubegraft_operator.apply import Api, merge_patch
from kubegraft_operator.decide import (
    CONFIRM_SECONDS,
    RESYNC_SECONDS,
    Decision,
    Event,
    claim_to_check,
    decide,
)
from kubegraft_operator.events import event_body
from kubegraft_operator.observe import (
    Observation,
    controller_uid,
    format_time,
    observe_claim,
    short_message,
)
from kubegraft_operator.progress_server import Endpoint, endpoint_env
from kubegraft_operator.store import Key, Store, newer_or_equal

Obj = dict[str, Any]
log = logging.getLogger(__name__)

ERROR_BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Seconds to wait after consecutive failed reconciles."""


@dataclass
class Outcome:
    """What one pass did, for the daemon loop."""

    requeue_after: float | None
    events: list[Event] = field(default_factory=list)
    written: Obj | None = None
    """The job as returned by the status patch, when one was made."""
    state: str | None = None
    deleted: bool = False
    held: bool = False
    """The status change only moved pod counters and waits (:mod:`.status_writes`)."""
    pods: list[Obj] = field(default_factory=list)
    """Pods as the API answered our creates/deletes, to feed into the cache at once."""
    workloads: list[Obj] = field(default_factory=list)
    """The Kueue Workload as the API answered our create or status patch, likewise."""


def _clean_status(raw: Mapping[str, Any] | None) -> Obj:
    return dict(raw or {})


def _job_from(raw: Mapping[str, Any], spec: FineTuneJobSpec | None = None) -> FineTuneJob:
    """The job as a model; ``spec``: its spec validated already (:class:`ValidSpecs`)."""
    given: FineTuneJobSpec | dict[str, Any] | None = spec
    if given is None:
        given = settings.with_default_image(dict(raw.get("spec") or {}), settings.trainer_image())
    return FineTuneJob.model_validate(
        {
            "apiVersion": raw.get("apiVersion"),
            "kind": raw.get("kind"),
            "metadata": dict(raw.get("metadata") or {}),
            "spec": given,
            "status": FineTuneJobStatus.model_validate(raw.get("status") or {}),
        }
    )


class ValidSpecs:
    """Each job's spec, validated once per generation rather than on every pass.

    Validating the spec (pydantic, with the Python twins of the CRD's CEL rules) was 5-6 % of
    the operator's GIL-holding samples at 1000 jobs (bench/operator_scale.py, issue 12), for a
    spec that only changes with ``metadata.generation``. The model is shared by the job's
    passes and never changed: decisions copy the status they change, and rendered objects
    share nothing with it (``tests/unit/test_render.py``). Entries go when the job's daemon
    stops; passes of one job never overlap (one daemon), so no lock is needed.
    """

    def __init__(self) -> None:
        self._by_uid: dict[str, tuple[Any, str | None, FineTuneJobSpec]] = {}

    def job(self, raw: Mapping[str, Any]) -> FineTuneJob:
        """The job as a model (raises ValidationError as :func:`_job_from` does)."""
        meta = raw.get("metadata") or {}
        uid, generation, image = meta.get("uid"), meta.get("generation"), settings.trainer_image()
        hit = self._by_uid.get(uid) if uid else None
        if hit is not None and hit[:2] == (generation, image):
            return _job_from(raw, hit[2])
        job = _job_from(raw)  # the whole object: errors name the field from ``spec.`` on
        if uid and generation is not None:
            self._by_uid[uid] = (generation, image, job.spec)
        return job

    def forget(self, uid: str | None) -> None:
        if uid:
            self._by_uid.pop(uid, None)


def _invalid_spec_status(
    raw: Mapping[str, Any], error: Exception, now: datetime
) -> FineTuneJobStatus:
    status = FineTuneJobStatus.model_validate(raw.get("status") or {})
    if status.state == JobState.FAILED:
        return status
    now_s = format_time(now)
    gen = (raw.get("metadata") or {}).get("generation")
    message = f"the spec cannot be used: {error}"[:4000]
    status.state, status.reason, status.message = JobState.FAILED, "InvalidSpec", message
    status.completion_time = now_s
    status.observed_generation = gen
    status.conditions = cond.set_condition(
        status.conditions, cond.FAILED, "True", "InvalidSpec", message, now=now_s, generation=gen
    )
    return status


class Reconciler:
    """Holds the API wrapper and the watch caches; one instance per operator process."""

    def __init__(self, api: Api, store: Store, endpoint: Endpoint | None = None) -> None:
        self.api = api
        self.store = store
        self.endpoint = endpoint
        threads = settings.reconcile_threads()
        # Our own pools for the blocking API calls of reconciles: asyncio's default executor
        # has min(32, cpus + 4) threads (6 on 2 cores), which capped parallel reconciles and
        # left new jobs waiting seconds for a thread at scale (bench/operator_scale.py).
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reconcile")
        # A job's first pass (nothing created yet) has its own pool, so that new jobs get
        # their pods while hundreds of running jobs queue status updates in the other one.
        self.starter = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="start")
        # The creates of one wave go out in parallel (one round trip instead of N). Their own
        # pool: a reconcile waiting on tasks queued in its own executor could deadlock it.
        self.fanout = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="create")
        # Events go out on threads of their own, the pass does not wait for them: posted in
        # the pass, each one held a reconcile thread for one more round trip, and when a
        # burst's gangs turn Running together the passes queued for threads (status Running
        # p99 0.8-3.3 s -> 5.0-5.8 s after all pods ran, bench/README.md).
        self.poster = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="event")
        self.instance = settings.reporting_instance()  # who reports this process's Events
        self.specs = ValidSpecs()

    # -------------------------------------------------------------- sync part
    def seed(self, key: Key) -> list[Obj]:
        """A fresh LIST of the job's pods (first pass after the daemon started: the watch
        cache may not have caught up yet)."""
        ns, name = key
        return self.api.list_job_pods(ns, name)

    def reconcile_once(
        self, raw: Obj, observed: Observation, now: datetime, held_for: float | None = None
    ) -> Outcome:
        """Decide, apply, write the status, then hand the pass's Events to the Event threads
        (only once all that succeeded); runs in a worker thread with snapshots only.
        ``held_for``: how long a counters-only status change has been waiting
        (:mod:`.status_writes`)."""
        outcome = self._decide_and_apply(raw, observed, now, held_for)
        if outcome.events:
            # Stamped now, by the pass, so that ``kubectl events`` orders them by when they
            # happened, however late a busy API server takes them.
            stamp = datetime.now(UTC)
            bodies = [event_body(raw, e, now=stamp, instance=self.instance) for e in outcome.events]
            self.poster.submit(self._post_events, bodies)
        return outcome

    def _post_events(self, bodies: list[Obj]) -> None:
        """Our own requests (:mod:`.events`), not kopf's poster; a failure is logged only."""
        for body in bodies:
            try:
                self.api.create_event(body)
            except Exception as e:
                what = f"{body['reason']} on {body['involvedObject']['name']}"
                log.warning(f"posting the Event {what} failed ({_summary(e)})")

    def _decide_and_apply(
        self, raw: Obj, observed: Observation, now: datetime, held_for: float | None
    ) -> Outcome:
        meta = raw.get("metadata") or {}
        ns, name = meta["namespace"], meta["name"]
        try:
            job = self.specs.job(raw)
        except ValidationError as e:
            status = _invalid_spec_status(raw, e, now)
            written = self._write_status(ns, name, raw, status)
            ev = [Event("Warning", "InvalidSpec", status.message or "")] if written else []
            return Outcome(requeue_after=None, events=ev, written=written, state=str(status.state))
        claim = claim_to_check(job, observed)
        if claim is not None:  # a gang may be created: read the output claim first
            observed = dataclasses.replace(
                observed, output_claim=observe_claim(claim, self.api.get_claim(ns, claim))
            )
        if kueue.queue_name(job) is not None:
            observed = dataclasses.replace(observed, queue=self._observe_queue(job, observed))
        decision = decide(job, observed, now)
        workloads: list[Obj] = []
        pods = self._apply(decision, ns, workloads)
        patch = merge_patch(_clean_status(raw.get("status")), decision.status.to_wire())
        hold = status_writes.hold_for(patch, held_for)
        written = None if hold is not None else self._send_status(ns, name, patch)
        if decision.gang_restart_reason:
            metrics.GANG_RESTARTS.labels(reason=decision.gang_restart_reason).inc()
        if decision.queue_wait_seconds is not None:  # the gang's pods are all created now
            metrics.QUEUE_WAIT_SECONDS.observe(decision.queue_wait_seconds)
        if decision.delete_job:
            self.api.delete_job(ns, name)
        state = decision.status.state
        requeue = decision.requeue_after
        if hold is not None:
            requeue = hold if requeue is None else min(requeue, hold)
        uid = meta.get("uid")
        if decision.workload_patch is not None and not workloads:
            # 409: Kueue changed the Workload meanwhile; its watch event brings the new one.
            requeue = CONFIRM_SECONDS if requeue is None else min(requeue, CONFIRM_SECONDS)
        if uid and any(controller_uid(p.get("metadata") or {}) != uid for p in pods):
            # A create found a pod of an earlier job of this name (the cache did not know it):
            # the next pass, with it in the cache, says so and waits for it.
            requeue = CONFIRM_SECONDS if requeue is None else min(requeue, CONFIRM_SECONDS)
        return Outcome(
            requeue_after=requeue,
            events=decision.events,
            written=written,
            state=str(state) if state else None,
            deleted=decision.delete_job,
            held=hold is not None,
            pods=pods,
            workloads=workloads,
        )

    def _observe_queue(self, job: FineTuneJob, observed: Observation) -> kueue.QueueObservation:
        """Kueue's objects the contract needs in this pass: the Workload when the watch cache
        has none, the LocalQueue while the job waits (the ClusterQueue to name), the
        PriorityClass before the Workload is created (its value), the admitted flavors before a
        gang starts."""
        q = observed.queue or kueue.QueueObservation()
        status = job.status or FineTuneJobStatus()
        ns = job.metadata.namespace or "default"
        if q.workload is None:
            # Not (yet) in the watch cache, e.g. right after an operator restart: a finished
            # job must not conclude that there is no Workload to mark Finished.
            uid = str((job.metadata.model_extra or {}).get("uid") or "")
            raw = self.api.get_workload(ns, kueue.workload_name(job.metadata.name, uid))
            if raw is not None:
                q = dataclasses.replace(q, workload=kueue.observe_workload(raw))
        if status.state in (JobState.SUCCEEDED, JobState.FAILED):
            return q
        wl = q.workload
        if not kueue.admitted(wl):
            lq = self.api.get_local_queue(ns, kueue.queue_name(job) or "")
            q = dataclasses.replace(
                q,
                local_queue_found=lq is not None,
                cluster_queue=((lq or {}).get("spec") or {}).get("clusterQueue"),
            )
            pc_name = job.spec.pod.priority_class_name
            if wl is None and pc_name:
                pc = self.api.get_cluster_object(
                    f"/apis/scheduling.k8s.io/v1/priorityclasses/{pc_name}"
                )
                q = dataclasses.replace(
                    q,
                    priority_class_found=pc is not None,
                    priority=None if pc is None else int(pc.get("value", 0)),
                )
            return q
        ranks = {p.rank for p in observed.pods if p.attempt == status.attempt}
        if len(ranks) < job.spec.distributed.nodes:  # a gang may be created: its flavors
            flavors = {}
            for name in kueue.assigned_flavors(wl):
                raw = self.api.get_cluster_object(
                    f"/apis/{kueue.API_VERSION}/resourceflavors/{name}"
                )
                flavors[name] = kueue.observe_flavor(raw or {})
            q = dataclasses.replace(q, flavors=flavors)
        return q

    def _apply(self, decision: Decision, ns: str, workloads: list[Obj]) -> list[Obj]:
        """Deletes first (a restart frees GPUs), then every create at once; returns the pods
        the API answered with (a created or patched Workload goes to ``workloads``).

        One parallel wave: one round trip for the config ConfigMap, the Service and the pods
        together. A pod created a moment before its ConfigMap is fine (the kubelet waits for a
        volume's ConfigMap), and the Service only matters once the trainer runs (rendezvous
        retries). As few round trips as possible: when the API server is the bottleneck
        (1000 jobs at once), every one queued before a job's pods delays them
        (bench/operator_scale.py). rank 0's pod gets the progress endpoint's URL and CA
        (:func:`.progress_server.endpoint_env`)."""
        pods: list[Obj] = []
        deletes = [(n, False) for n in decision.delete_pods]
        deletes += [(n, True) for n in decision.force_delete_pods]
        for pod_name, force in deletes:
            gone = self.api.delete_pod(ns, pod_name, force=force)
            if gone is not None:
                pods.append(gone)
        if decision.workload_patch is not None:
            patched = self.api.patch_workload_status(ns, *decision.workload_patch)
            if patched is not None:
                workloads.append(patched)
        wave = [
            endpoint_env(o, self.endpoint) if o["kind"] == "Pod" else o for o in decision.create
        ]
        wave.sort(key=lambda o: o["kind"] != "Pod")  # stable: pods first, in rank order
        for obj, answer in self._create_wave(decision, wave):
            # Created or found (a pod left by an operator that died, or by an earlier job of
            # the same name): either way the cache must know it at once.
            if obj["kind"] == "Pod":
                pods.append(answer)
            elif obj["kind"] == "Workload":
                workloads.append(answer)
        return pods

    def _create_wave(self, decision: Decision, wave: list[Obj]) -> list[tuple[Obj, Obj]]:
        """Create-if-absent every object of ``wave`` at once and wait for all of them.
        A pod the API server refuses (400/403/422) goes to :meth:`_pod_refused`; any other
        error is raised after the whole wave finished."""
        if not wave:
            return []
        futures = [self.fanout.submit(self.api.create_if_absent, obj) for obj in wave]
        results: list[tuple[Obj, Obj]] = []
        refused: tuple[Obj, ApiException] | None = None
        error: Exception | None = None
        for obj, future in zip(wave, futures, strict=True):
            try:
                results.append((obj, future.result()[0]))  # waits for every create
            except ApiException as e:
                if obj["kind"] == "Pod" and e.status in (400, 403, 422):
                    refused = refused or (obj, e)
                else:
                    error = error or e
            except Exception as e:
                error = error or e
        if error is not None:
            raise error
        if refused is not None:
            self._pod_refused(decision, *refused)
        return results

    def _pod_refused(self, decision: Decision, obj: Obj, e: ApiException) -> None:
        """The API server refused a worker pod: 422/400 can never succeed (fail the job),
        403 may (a quota, a ServiceAccount created later): say so and retry."""
        st = decision.status
        now = datetime.now(UTC)
        now_s = format_time(now)
        gen = st.observed_generation
        # The API's own message (the Status object's), not the whole answer.
        body = e.body if isinstance(e.body, str) else ""
        detail = short_message(body, limit=1000) or str(e.reason)
        if e.status == 403:
            st.state, st.reason = JobState.PENDING, "PodCreationForbidden"
            st.message = f"creating {obj['metadata']['name']} was refused (403): {detail}"
            decision.events = [Event("Warning", st.reason, st.message)]
            decision.requeue_after = 10.0
            return
        st.state, st.reason = JobState.FAILED, "InvalidPodSpec"
        st.message = f"creating {obj['metadata']['name']} was refused ({e.status}): {detail}"
        st.completion_time = now_s
        st.conditions = cond.set_condition(
            st.conditions, cond.FAILED, "True", st.reason, st.message, now=now_s, generation=gen
        )
        decision.events = [Event("Warning", st.reason, st.message)]
        decision.requeue_after = None

    def _write_status(self, ns: str, name: str, raw: Obj, status: FineTuneJobStatus) -> Obj | None:
        return self._send_status(
            ns, name, merge_patch(_clean_status(raw.get("status")), status.to_wire())
        )

    def _send_status(self, ns: str, name: str, patch: Obj) -> Obj | None:
        if not patch:
            return None
        try:
            return self.api.patch_status(ns, name, patch)
        except ApiException as e:
            if e.status == 404:  # deleted under us: the daemon is about to stop
                return None
            raise

    # ------------------------------------------------------------- async part
    async def run_job(
        self,
        key: Key,
        live_body: Mapping[str, Any],
        stopped: Any,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        """The per-job loop (a kopf daemon); returns when kopf stops the daemon."""
        wake = self.store.wakeup(key)
        last_written: Obj | None = None
        held_since: float | None = None  # a counters-only status change waits since then
        failures = 0
        # A job that never had a status was never reconciled: nothing of it can be in the
        # API server that the watches will not deliver, and a leftover from an operator that
        # died half-way is a 409 on create. Only jobs with a status start with a fresh LIST.
        seeded = not live_body.get("status")
        uid = (live_body.get("metadata") or {}).get("uid")
        watcher = asyncio.create_task(_wake_when_stopped(stopped, wake), name=f"stop of {key}")
        try:
            while not stopped and not self.store.is_deleted(uid):
                wake.clear()
                started = time.monotonic()
                delay: float | None
                try:
                    if not seeded:
                        await self._seed(key)
                        seeded = True
                    # Shielded: the status write of a finishing pass makes kopf stop this
                    # daemon (its filter) and may cancel it before the pass has posted its
                    # Events; the pass completes regardless.
                    held_for = None if held_since is None else started - held_since
                    outcome = await asyncio.shield(
                        self._pass(key, live_body, last_written, held_for)
                    )
                    if outcome is None:  # being deleted
                        return
                    if outcome.written is not None:
                        last_written = _version_and_status(outcome.written)
                    if not outcome.held:
                        held_since = None
                    elif held_since is None:
                        held_since = started
                    metrics.RECONCILES.labels(result="ok").inc()
                    failures = 0
                    delay = outcome.requeue_after
                    if outcome.deleted:
                        return
                    del outcome  # nothing of a pass stays alive while the daemon waits
                except Exception as e:
                    metrics.RECONCILES.labels(result="error").inc()
                    delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                    failures += 1
                    logger.warning(f"reconcile failed ({_summary(e)}); retrying in {delay:g}s")
                finally:
                    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
                timeout = RESYNC_SECONDS if delay is None else min(delay, RESYNC_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=timeout)
        finally:
            watcher.cancel()
            reason = getattr(stopped, "reason", None)
            if reason is not None and reason & kopf.DaemonStoppingReason.OPERATOR_PAUSING:
                metrics.forget_all_jobs()  # the leader reports now
            elif reason is None or not reason & kopf.DaemonStoppingReason.FILTERS_MISMATCH:
                metrics.set_job_state(key, None)  # gone (a finished job stays counted)
            self.store.forget(key, wake)
            self.specs.forget(uid)

    async def _seed(self, key: Key) -> None:
        pods = await asyncio.get_running_loop().run_in_executor(self.executor, self.seed, key)
        self.store.replace_pods(key, pods)

    async def _pass(
        self,
        key: Key,
        live_body: Mapping[str, Any],
        last_written: Obj | None,
        held_for: float | None = None,
    ) -> Outcome | None:
        """One observe -> decide -> apply pass in a worker thread; None when the job is being
        deleted. The status it starts from is the newer of the watched body's and our own
        last write's."""
        raw = _snapshot(live_body)
        if last_written is not None and newer_or_equal(last_written, raw):
            raw["status"] = codec.copy(last_written.get("status") or {})
        if (raw.get("metadata") or {}).get("deletionTimestamp"):
            return None
        pool = self.starter if not raw.get("status") else self.executor
        # The job's own pods and report only: matched by our UID, not by the name label.
        uid = (raw.get("metadata") or {}).get("uid")
        observed = self.store.observation(key, uid)
        if (wl := self.store.workload(key, uid)) is not None:
            observed = dataclasses.replace(observed, queue=kueue.QueueObservation(workload=wl))
        outcome = await asyncio.get_running_loop().run_in_executor(
            pool, self.reconcile_once, raw, observed, datetime.now(UTC), held_for
        )
        for pod in outcome.pods:
            self.store.put_pod(pod)
        for workload in outcome.workloads:
            self.store.put_workload(workload)
        metrics.set_job_state(key, outcome.state)
        return outcome


def _summary(e: Exception) -> str:
    """An error in one line for the log: its type, and an API error's status and reason."""
    return f"{type(e).__name__}: {getattr(e, 'status', '')} {getattr(e, 'reason', e)}"


async def _wake_when_stopped(stopped: Any, wake: asyncio.Event) -> None:
    """Wake the daemon when kopf asks it to stop (the job finished, the operator exits or
    pauses), so that it returns by itself: a daemon still waiting on its wake-up is cancelled
    by kopf (a WARNING per job at every operator stop) and leaves its pass's bookkeeping
    undone."""
    await stopped.wait()
    wake.set()


def _snapshot(body: Mapping[str, Any]) -> Obj:
    """A private copy of the job for a pass in a worker thread (kopf keeps updating the live
    body), without ``managedFields``: no pass reads them, and they were the bulk of the copy."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return codec.copy(  # type: ignore[no-any-return]
        {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": meta,
            "spec": body.get("spec"),
            "status": body.get("status") or {},
        }
    )


def _version_and_status(job: Mapping[str, Any]) -> Obj:
    """What the daemon keeps of its own last status write: the whole answer (managedFields,
    spec) would be a second copy of every job in memory."""
    meta = job.get("metadata") or {}
    return {
        "metadata": {"resourceVersion": meta.get("resourceVersion")},
        "status": job.get("status"),
    }
