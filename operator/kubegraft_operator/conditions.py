"""Conditions per the Kubernetes API conventions, keyed by type.

``set_condition`` keeps ``lastTransitionTime`` when the status does not change (only a real
transition moves it), which is what lets the state machine use a condition's transition time
as a clock (e.g. when a gang restart began, for its back-off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from kubegraft.api.v1alpha1 import Condition

CREATED = "Created"
ADMITTED = "Admitted"
"""Kueue admitted the job's Workload (jobs with a queue name only)."""
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
ORDER = (CREATED, ADMITTED, RUNNING, RESTARTING, SUSPENDED, SUCCEEDED, FAILED)

Status = Literal["True", "False", "Unknown"]


def get_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: Sequence[Condition], type_: str) -> bool:
    """Whether the condition of that type is present and True."""
    c = get_condition(conditions, type_)
    return c is not None and c.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """A new list with the condition of ``type_`` set; others unchanged, sorted by ORDER."""
    old = get_condition(conditions, type_)
    transition = now if old is None or old.status != status else old.last_transition_time
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=transition,
        observed_generation=generation,
    )
    rest = [c for c in conditions if c.type != type_]
    out = [*rest, new]
    return sorted(
        out, key=lambda c: (ORDER.index(c.type) if c.type in ORDER else len(ORDER), c.type)
    )
