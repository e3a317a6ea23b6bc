"""Turn raw API objects (pods, nodes, the progress ConfigMap) into typed observations.

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
from kubegraft.progress import CONFIGMAP_KEY, ProgressReport

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
    """rank 0's latest report, from the progress ConfigMap."""
    output_claim: ClaimObservation | None = None
    """spec.output.persistentVolumeClaim, read by the shell only when a gang is about to be
    created (see :func:`.decide.claim_to_check`); None when it was not read."""


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
    for cond in status.get("conditions") or []:
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
        message=message,
    )


def observe_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[PodObservation, ...]:
    """All worker pods, sorted by (attempt, rank) for stable decisions."""
    seen = [o for p in pods if (o := observe_pod(p)) is not None]
    return tuple(sorted(seen, key=lambda o: (o.attempt, o.rank, o.name)))


def node_is_ready(node: Mapping[str, Any]) -> bool:
    """A node counts as ready unless its Ready condition says False or Unknown."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return True


def observe_progress(config_map: Mapping[str, Any] | None) -> ProgressReport | None:
    """rank 0's report from the progress ConfigMap; None when absent, empty or unreadable
    (progress is advisory: a garbled report must not break reconciliation)."""
    if not config_map:
        return None
    raw = (config_map.get("data") or {}).get(CONFIGMAP_KEY)
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
