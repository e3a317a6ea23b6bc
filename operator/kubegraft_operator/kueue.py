"""Kueue's Workload contract for FineTuneJobs (Kueue as an external framework). Pure.

Kueue (configured with ``integrations.externalFrameworks: ["FineTuneJob.v1alpha1.kubegraft.io"]``)
queues, admits and preempts *Workloads*; for its built-in jobs its Go ``jobframework`` keeps a
job and its Workload in step. For a FineTuneJob the operator does the same, following
``jobframework.ReconcileGenericJob`` (Kueue v0.17) step by step:

- a job labelled ``kueue.x-k8s.io/queue-name`` gets no pod until its Workload is admitted;
  the operator creates the Workload (:func:`render_workload`: one pod set ``workers``, count =
  ``distributed.nodes``, the worker pod template with its resources and GPUs, the priority of
  ``pod.priorityClassName``; controller reference to the job, so deleting the job deletes it);
- admitted (condition ``Admitted``): the assigned flavors' node labels and tolerations, and
  the admission checks' pod set updates (:func:`pod_set_info`), go into the pods
  (:func:`inject`) and the gang starts;
- evicted (``Evicted``, e.g. preempted by a higher priority) or no longer admitted: the gang is
  stopped (its pods deleted gracefully: SIGTERM, the trainer checkpoints); once no pod is
  active the operator clears the quota reservation and marks the Workload requeued
  (:func:`requeue_patch`, Kueue's ``UnsetQuotaReservationWithCondition`` and
  ``SetRequeuedCondition``); the pod set information is restored by construction: every gang
  is rendered from the spec, and the next admission's flavors are injected afresh;
- finished: the Workload gets ``Finished`` (:func:`finish_patch`) and Kueue releases the quota.

Status writes are JSON merge patches carrying the Workload's ``resourceVersion``: Kueue writes
the same status, and a stale write must fail (409) rather than drop its conditions.

Unlike the jobframework, the Workload gets no ``resource-in-use`` finalizer: nothing of Kueue
runs for FineTuneJobs that would remove it when the job is deleted, so the garbage collector
removes the Workload with the job (Kueue then releases its quota while the pods still finish
their grace period).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubegraft.api.v1alpha1 import KIND, FineTuneJob
from kubegraft.constants import LABEL_JOB_NAME

Obj = dict[str, Any]

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
QUEUE_LABEL = f"{GROUP}/queue-name"
"""On the FineTuneJob's metadata (as on every job kind Kueue manages): the LocalQueue."""
JOB_UID_LABEL = f"{GROUP}/job-uid"
POD_SET = "workers"
WORKLOAD_NAME_LIMIT = 253
HASH_LENGTH = 5

# Workload condition types and the reasons this module writes (Kueue's own names).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
REQUEUED = "Requeued"
FINISHED = "Finished"
REQUEUE_REASONS = frozenset({"Preempted", "NodeFailures"})
"""Eviction reasons after which Kueue's jobframework sets Requeued=True (others: False)."""


def queue_name(job: FineTuneJob) -> str | None:
    """The LocalQueue the job asks for (its metadata label), or None: not managed by Kueue."""
    labels = (job.metadata.model_extra or {}).get("labels") or {}
    value = labels.get(QUEUE_LABEL)
    return str(value) if value else None


def workload_name(job: str, uid: str) -> str:
    """Kueue's own name for a job's Workload (``jobframework.GetWorkloadNameForOwnerWithGVK``):
    ``finetunejob-<job>-<hash>``, the hash over kind, group, name and UID, so a job recreated
    under the same name gets another Workload."""
    digest = hashlib.sha1("\n".join([KIND, "kubegraft.io", job, uid]).encode()).hexdigest()
    prefix = f"{KIND.lower()}-{job}"[: WORKLOAD_NAME_LIMIT - 1 - HASH_LENGTH]
    return f"{prefix}-{digest[:HASH_LENGTH]}"


# ------------------------------------------------------------------------------ observations


@dataclass(frozen=True)
class WorkloadCondition:
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class WorkloadObservation:
    """The parts of a Workload the contract reads."""

    name: str
    resource_version: str | None
    generation: int | None
    owner_uid: str | None
    conditions: tuple[Obj, ...] = ()
    """The raw conditions (the patches rewrite the list)."""
    admission: Obj | None = None
    admission_checks: tuple[Obj, ...] = ()

    def condition(self, type_: str) -> WorkloadCondition | None:
        for c in self.conditions:
            if c.get("type") == type_:
                return WorkloadCondition(
                    str(c.get("status")), str(c.get("reason", "")), str(c.get("message", ""))
                )
        return None

    def is_true(self, type_: str) -> bool:
        c = self.condition(type_)
        return c is not None and c.status == "True"

    @property
    def cluster_queue(self) -> str | None:
        return (self.admission or {}).get("clusterQueue")


def observe_workload(raw: Mapping[str, Any]) -> WorkloadObservation:
    """A Workload (as the API or the watch returns it) reduced to what the contract reads."""
    meta = raw.get("metadata") or {}
    status = raw.get("status") or {}
    owner: Obj = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), {})
    return WorkloadObservation(
        name=str(meta.get("name", "")),
        resource_version=meta.get("resourceVersion"),
        generation=meta.get("generation"),
        owner_uid=owner.get("uid"),
        conditions=tuple(copy.deepcopy(status.get("conditions") or [])),
        admission=copy.deepcopy(status.get("admission")),
        admission_checks=tuple(copy.deepcopy(status.get("admissionChecks") or [])),
    )


@dataclass(frozen=True)
class Flavor:
    """A ResourceFlavor's scheduling constraints (what admission puts into the pods)."""

    node_labels: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()


def observe_flavor(raw: Mapping[str, Any]) -> Flavor:
    spec = raw.get("spec") or {}
    return Flavor(
        node_labels=dict(spec.get("nodeLabels") or {}),
        tolerations=tuple(spec.get("tolerations") or ()),
    )


@dataclass(frozen=True)
class QueueObservation:
    """What the shell read from Kueue's objects for one queue-managed job."""

    workload: WorkloadObservation | None = None
    local_queue_found: bool = True
    cluster_queue: str | None = None
    """The LocalQueue's spec.clusterQueue (read while the job waits)."""
    priority: int | None = None
    """The value of pod.priorityClassName's PriorityClass (read before creating the Workload)."""
    priority_class_found: bool = True
    flavors: Mapping[str, Flavor] = field(default_factory=dict)
    """The admitted flavors by name (read when a gang is about to start)."""


def admitted(wl: WorkloadObservation | None) -> bool:
    """Admitted and not being evicted: the gang may run."""
    return wl is not None and wl.is_true(ADMITTED) and not wl.is_true(EVICTED)


def assigned_flavors(wl: WorkloadObservation | None) -> list[str]:
    """Names of the flavors assigned to the pod set (to read before starting the gang)."""
    if wl is None:
        return []
    names: set[str] = set()
    for psa in (wl.admission or {}).get("podSetAssignments") or []:
        if psa.get("name") == POD_SET:
            names.update(str(v) for v in (psa.get("flavors") or {}).values())
    return sorted(names)


# -------------------------------------------------------------------------------- rendering


def render_workload(
    job: FineTuneJob, *, namespace: str, uid: str, template: Obj, priority: int | None
) -> Obj:
    """The job's Workload: one pod set of ``distributed.nodes`` pods shaped like ``template``
    (the rank-0 worker pod: its resources with the GPUs, node selector, tolerations), in
    the LocalQueue of :func:`queue_name`, with the pods' PriorityClass and its value."""
    from kubegraft_operator.render import owner_reference

    name = job.metadata.name
    meta = template.get("metadata") or {}
    pod_template: Obj = {
        "metadata": {
            k: v
            for k, v in (("labels", meta.get("labels")), ("annotations", meta.get("annotations")))
            if v
        },
        "spec": copy.deepcopy(template["spec"]),
    }
    spec: Obj = {
        "queueName": queue_name(job),
        "podSets": [
            {"name": POD_SET, "count": job.spec.distributed.nodes, "template": pod_template}
        ],
    }
    priority_class = job.spec.pod.priority_class_name
    if priority_class and priority is not None:
        spec["priorityClassRef"] = {
            "group": "scheduling.k8s.io",
            "kind": "PriorityClass",
            "name": priority_class,
        }
        spec["priority"] = priority
    return {
        "apiVersion": API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(name, uid),
            "namespace": namespace,
            "labels": {LABEL_JOB_NAME: name, JOB_UID_LABEL: uid},
            "ownerReferences": [owner_reference(name, uid)],
        },
        "spec": spec,
    }


@dataclass(frozen=True)
class PodSetInfo:
    """What an admission adds to the pods (Kueue's ``podset.PodSetInfo``)."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


def pod_set_info(wl: WorkloadObservation, flavors: Mapping[str, Flavor]) -> PodSetInfo:
    """The admitted flavors' node labels and tolerations plus the admission checks' pod set
    updates, as ``jobframework.getPodSetsInfoFromStatus`` gathers them."""
    selector: dict[str, str] = {}
    tolerations: list[Obj] = []
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    for name in assigned_flavors(wl):
        flavor = flavors.get(name, Flavor())
        selector.update(flavor.node_labels)
        tolerations.extend(t for t in flavor.tolerations if t not in tolerations)
    for check in wl.admission_checks:
        for update in check.get("podSetUpdates") or []:
            if update.get("name") != POD_SET:
                continue
            selector.update(update.get("nodeSelector") or {})
            tolerations.extend(t for t in update.get("tolerations") or [] if t not in tolerations)
            labels.update(update.get("labels") or {})
            annotations.update(update.get("annotations") or {})
    return PodSetInfo(selector, tuple(tolerations), labels, annotations)


def inject(pod: Obj, info: PodSetInfo) -> Obj:
    """``pod`` with the admission's node selector, tolerations, labels and annotations merged
    in (Kueue's ``RunWithPodSetsInfo``); the pod itself is changed and returned."""
    spec, meta = pod["spec"], pod["metadata"]
    if info.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **info.node_selector}
    if info.tolerations:
        have = list(spec.get("tolerations") or [])
        spec["tolerations"] = have + [t for t in info.tolerations if t not in have]
    if info.labels:
        meta["labels"] = {**(meta.get("labels") or {}), **info.labels}
    if info.annotations:
        meta["annotations"] = {**(meta.get("annotations") or {}), **info.annotations}
    return pod


# ---------------------------------------------------------------------------- status patches


def _set_condition(
    conditions: list[Obj],
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None,
) -> None:
    """``apimeta.SetStatusCondition``: the transition time moves only when the status does."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    new: Obj = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": now,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    if old is not None:
        if old.get("status") == status:
            new["lastTransitionTime"] = old.get("lastTransitionTime", now)
        conditions[conditions.index(old)] = new
    else:
        conditions.append(new)


def _patch(wl: WorkloadObservation, conditions: list[Obj], **status: Any) -> Obj:
    return {
        "metadata": {"resourceVersion": wl.resource_version},
        "status": {"conditions": conditions, **status},
    }


def requeue_patch(wl: WorkloadObservation, *, now: str) -> Obj:
    """After an eviction, once the gang is stopped: Requeued (True for preemption and node
    failures), QuotaReserved False ``Pending``, Admitted False ``NoReservation``, and no
    admission: the Workload waits in its queue again."""
    ev = wl.condition(EVICTED) or WorkloadCondition("True", "Evicted", "")
    conditions = [copy.deepcopy(c) for c in wl.conditions]
    gen = wl.generation
    _set_condition(
        conditions,
        REQUEUED,
        "True" if ev.reason in REQUEUE_REASONS else "False",
        ev.reason,
        ev.message,
        now=now,
        generation=gen,
    )
    _set_condition(
        conditions, QUOTA_RESERVED, "False", "Pending", ev.message, now=now, generation=gen
    )
    if wl.condition(ADMITTED) is not None:
        _set_condition(
            conditions,
            ADMITTED,
            "False",
            "NoReservation",
            "The workload has no reservation",
            now=now,
            generation=gen,
        )
    return _patch(wl, conditions, admission=None)


def needs_requeue(wl: WorkloadObservation) -> bool:
    """Evicted while it still holds a quota reservation: to clear once the gang is stopped."""
    return wl.is_true(EVICTED) and wl.is_true(QUOTA_RESERVED)


def finish_patch(wl: WorkloadObservation, *, succeeded: bool, message: str, now: str) -> Obj:
    """Finished=True, reason Succeeded or Failed (``workload.Finish``): Kueue frees the quota."""
    conditions = [copy.deepcopy(c) for c in wl.conditions]
    _set_condition(
        conditions,
        FINISHED,
        "True",
        "Succeeded" if succeeded else "Failed",
        message,
        now=now,
        generation=wl.generation,
    )
    return _patch(wl, conditions)


# --------------------------------------------------------------------------------- messages


def waiting_message(job: FineTuneJob, q: QueueObservation) -> tuple[str, str]:
    """(reason, message) of a job waiting in its queue: which LocalQueue and ClusterQueue,
    and Kueue's own word on why (the QuotaReserved condition's message)."""
    lq = queue_name(job)
    ns = job.metadata.namespace or "default"
    if not q.local_queue_found:
        return (
            "LocalQueueNotFound",
            f"metadata.labels[{QUEUE_LABEL}]: LocalQueue {ns}/{lq} does not exist; the job "
            "waits (looking again every minute) until it is created",
        )
    where = f"LocalQueue {ns}/{lq}, ClusterQueue {q.cluster_queue or '(unknown)'}"
    wl = q.workload
    if wl is None:
        return "WorkloadCreated", f"waiting for Kueue to admit the job ({where})"
    if wl.is_true(EVICTED):
        ev = wl.condition(EVICTED)
        assert ev is not None
        reason = "Preempted" if ev.reason == "Preempted" else "Evicted"
        return reason, f"evicted by Kueue ({ev.reason}: {ev.message}); requeued in {where}"
    reserved = wl.condition(QUOTA_RESERVED)
    detail = f": {reserved.message}" if reserved is not None and reserved.message else ""
    return "WaitingForQuota", f"waiting for quota in {where}{detail}"
