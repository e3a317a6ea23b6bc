"""Which status writes can wait: the rule that coalesces a gang's pod counters.

A FineTuneJob write is the most expensive request the operator makes (the API server runs the
CRD's schema and CEL rules on every one, and every watcher of jobs gets the object again), and
a gang's pods turn Running one by one: writing ``nodesReady`` 1/4, 2/4, 3/4 as they do cost
about two extra writes per job on the way to Running (bench/operator_scale.py, issue 12).

So a patch that moves nothing but the pod counters (``readyNodes``, ``nodesReady``,
``active``, and the message that spells them out, "2/4 workers running") is held back for up
to :data:`COALESCE_SECONDS`: the pass that sees the last pod run changes the state and writes
everything at once; a gang that stays partly up is shown after the window (the counters are
never hidden for long). Everything else (a new state, a reason, a condition, progress, a
failure) is written at once, so nothing a user or a rule acts on is delayed. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COUNTER_FIELDS = frozenset({"readyNodes", "nodesReady", "active", "message"})
"""Status fields (wire names) whose change alone may wait for the next write. ``message``
is among them because it follows the counters within a reason (a new reason, or state, is
never held)."""

COALESCE_SECONDS = 5.0
"""The longest a counters-only change waits before it is written anyway."""


def can_wait(patch: Mapping[str, Any]) -> bool:
    """Whether a status merge patch only moves the pod counters (and so may wait)."""
    return bool(patch) and set(patch) <= COUNTER_FIELDS


def hold_for(patch: Mapping[str, Any], held_for: float | None) -> float | None:
    """Seconds more to hold ``patch`` back, or None to write it now. ``held_for`` is how long
    the counters have been waiting already (None: nothing waits)."""
    if not can_wait(patch):
        return None
    remaining = COALESCE_SECONDS - (held_for or 0.0)
    return remaining if remaining > 0 else None
