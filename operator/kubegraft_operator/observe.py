"""Turn raw API objects (pods, nodes) and rank 0's report into typed observations.

Pure functions over plain dicts, so that :mod:`.decide` reasons about a small, typed picture of
the world (which rank of which attempt is in which phase, with which exit code) instead of
walking pod statuses itself, and so that both are unit-tested without an API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from kubegraft.constants import LABEL_ATTEMPT, LABEL_NODE_RANK
from kubegraft.progress import ProgressReport
from kubegraft_operator.kueue import QueueObservation

IMAGE_PROBLEMS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
    }
)
"""Container waiting reasons that mean the image cannot be pulled."""
CONFIG_PROBLEMS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
"""Container waiting reasons that mean the pod spec cannot start (a missing Secret, ...)."""
DISRUPTION_CONDITION = "DisruptionTarget"
"""The pod condition Kubernetes sets on a pod it is about to delete for reasons outside the
workload (preemption by the scheduler, the Eviction API, the taint manager, pod GC of a lost
node, the kubelet's node-pressure eviction); what a Job's pod failure policy matches."""
MESSAGE_LIMIT = 400
"""Characters of a pod's failure message that reach the job's status and Events."""


class PodPhase(StrEnum):
    """A worker pod's phase as the state machine sees it."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class PodObservation:
    """What matters about one worker pod."""

    name: str
    rank: int
    attempt: int
    phase: PodPhase
    created: datetime | None = None
    node_name: str | None = None
    ready: bool = False
    deleting: bool = False
    """deletionTimestamp is set: someone (us, a user, an eviction) is deleting it."""
    exit_code: int | None = None
    """The trainer container's exit code once it terminated."""
    reason: str | None = None
    """Why it is not running: Unschedulable, ImagePullBackOff, Evicted, OOMKilled, ..."""
    message: str = ""
    """A short reason (:func:`short_message`): the full text stays in the pod and its log."""
    owner_uid: str | None = None
    """UID of the pod's controller (ownerReference with controller: true): the job it belongs
    to. A job recreated under the same name has another UID, so the pods of its predecessor
    are never taken for its own."""
    disrupted: bool = False
    """Kubernetes marked it a disruption target (condition DisruptionTarget=True)."""


@dataclass(frozen=True)
class ClaimObservation:
    """The job's output PersistentVolumeClaim, as read just before its pods are created."""

    name: str
    found: bool
    phase: str | None = None
    """Pending, Bound or Lost; Pending (not yet provisioned or bound) is no problem."""
    access_modes: tuple[str, ...] = ()
    """The bound volume's modes (status), else the requested ones (spec)."""


@dataclass(frozen=True)
class Observation:
    """Everything the state machine looks at besides the job itself."""

    pods: tuple[PodObservation, ...] = ()
    not_ready_nodes: frozenset[str] = field(default_factory=frozenset)
    """Nodes whose Ready condition is False or Unknown (a lost kubelet)."""
    progress: ProgressReport | None = None
    """rank 0's latest report (:mod:`.progress_server`)."""
    foreign_pods: tuple[PodObservation, ...] = ()
    """Pods with the job's name label that another owner controls: in practice those of an
    earlier job of the same name, deleted but with pods still terminating. Never counted,
    never adopted; the job waits for them to go (same pod names and hostnames)."""
    output_claim: ClaimObservation | None = None
    """spec.output.persistentVolumeClaim, read by the shell only when a gang is about to be
    created (see :func:`.decide.claim_to_check`); None when it was not read."""
    queue: QueueObservation | None = None
    """Kueue's objects for a job with a queue name (:mod:`.kueue`); None for other jobs."""


def parse_time(value: str | None) -> datetime | None:
    """RFC 3339 (as the API server writes it) to an aware datetime; None stays None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    """An aware datetime as RFC 3339 with second precision, as Kubernetes writes times."""
    return value.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_label(labels: Mapping[str, str], key: str) -> int | None:
    try:
        return int(labels.get(key, ""))
    except ValueError:
        return None


def controller_uid(meta: Mapping[str, Any]) -> str | None:
    """The UID in an object's controller ownerReference, if it has one."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def short_message(text: str | None, limit: int = MESSAGE_LIMIT) -> str:
    """A failure message cut down to what belongs in a status or an Event: the trainer's
    termination message is a JSON record whose ``message`` may hold a whole traceback, so
    only its last line (the exception) is kept, whitespace squeezed, at most ``limit``
    characters. The traceback itself is in the container's log."""
    if not text:
        return ""
    text = text.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            text = record["message"].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = " ".join(lines[-1].split()) if lines else ""
    return last if len(last) <= limit else last[: limit - 3].rstrip() + "..."


def observe_pod(pod: Mapping[str, Any]) -> PodObservation | None:
    """One pod, or None when it does not carry our rank/attempt labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    rank = _int_label(labels, LABEL_NODE_RANK)
    attempt = _int_label(labels, LABEL_ATTEMPT)
    if rank is None or attempt is None:
        return None
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    try:
        phase = PodPhase(status.get("phase") or "Pending")
    except ValueError:
        phase = PodPhase.UNKNOWN
    exit_code: int | None = None
    reason: str | None = status.get("reason")  # Evicted, NodeLost, ... on the pod itself
    message: str = status.get("message") or ""
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if term := state.get("terminated"):
            exit_code = term.get("exitCode")
            reason = reason or term.get("reason")
            message = message or term.get("message") or ""
        elif waiting := state.get("waiting"):
            w = waiting.get("reason")
            if w in IMAGE_PROBLEMS or w in CONFIG_PROBLEMS:
                reason = w
                message = waiting.get("message") or message
    ready = False
    disrupted = False
    for cond in status.get("conditions") or []:
        if cond.get("type") == DISRUPTION_CONDITION and cond.get("status") == "True":
            disrupted = True
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and reason is None:
            reason = cond.get("reason") or "Unschedulable"
            message = cond.get("message") or message
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    return PodObservation(
        name=meta.get("name", ""),
        rank=rank,
        attempt=attempt,
        phase=phase,
        created=parse_time(meta.get("creationTimestamp")),
        node_name=spec.get("nodeName"),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=exit_code,
        reason=reason,
        message=short_message(message),
        owner_uid=controller_uid(meta),
        disrupted=disrupted,
    )


def observe_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[PodObservation, ...]:
    """All worker pods, sorted by (attempt, rank) for stable decisions."""
    seen = [o for p in pods if (o := observe_pod(p)) is not None]
    return tuple(sorted(seen, key=lambda o: (o.attempt, o.rank, o.name)))


def split_by_owner(
    pods: Iterable[PodObservation], uid: str | None
) -> tuple[tuple[PodObservation, ...], tuple[PodObservation, ...]]:
    """(the job's own pods, the others), by controller UID; with no UID to match (a job not
    read from an API server), every pod is the job's."""
    own: list[PodObservation] = []
    other: list[PodObservation] = []
    for p in pods:
        (own if not uid or p.owner_uid == uid else other).append(p)
    return tuple(own), tuple(other)


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """A node counts as ready unless its Ready condition says False or Unknown."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return True


def observe_progress(raw: str | None) -> ProgressReport | None:
    """rank 0's report (its JSON as posted); None when absent, empty or unreadable
    (progress is advisory: a garbled report must not break reconciliation)."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not data:
        return None
    try:
        return ProgressReport.model_validate(data)
    except ValidationError:
        return None


def observe_claim(name: str, pvc: Mapping[str, Any] | None) -> ClaimObservation:
    """The output claim ``name`` from a GET of it (None: 404)."""
    if pvc is None:
        return ClaimObservation(name=name, found=False)
    status = pvc.get("status") or {}
    modes = status.get("accessModes") or (pvc.get("spec") or {}).get("accessModes") or []
    return ClaimObservation(
        name=name,
        found=True,
        phase=status.get("phase"),
        access_modes=tuple(str(m) for m in modes),
    )
