"""Counters-only status changes wait (:mod:`kubegraft_operator.status_writes`); nothing else
does, and nothing waits longer than the window."""

from __future__ import annotations

import pytest

from kubegraft_operator.status_writes import COALESCE_SECONDS, can_wait, hold_for

pytestmark = pytest.mark.unit


def test_only_the_pod_counters_may_wait() -> None:
    assert can_wait({"nodesReady": "2/4", "readyNodes": 2})
    assert can_wait({"active": 3})
    assert not can_wait({})  # nothing to write, nothing to hold
    assert not can_wait({"nodesReady": "4/4", "state": "Running"})
    assert not can_wait({"readyNodes": 1, "conditions": []})
    assert not can_wait({"progress": {"step": 3}})
    # the message spells the counters out within one reason; a new reason never waits
    assert can_wait({"readyNodes": 3, "message": "3/4 workers running (attempt 0)"})
    assert not can_wait({"reason": "Unschedulable", "message": "worker 3 cannot be scheduled"})


def test_a_held_change_is_written_once_the_window_is_over() -> None:
    counters = {"nodesReady": "1/4", "readyNodes": 1}
    assert hold_for(counters, None) == COALESCE_SECONDS
    assert hold_for(counters, 2.0) == pytest.approx(COALESCE_SECONDS - 2.0)
    assert hold_for(counters, COALESCE_SECONDS) is None
    assert hold_for({"state": "Running"}, None) is None
    assert hold_for({"state": "Running"}, 1.0) is None
