"""The operator's jobs-by-state gauge: kept incrementally from job events and reconciles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubegraft_operator import metrics

pytestmark = pytest.mark.unit


def gauge(state: str) -> float:
    return float(metrics.JOBS.labels(state=state)._value.get())


@pytest.fixture(autouse=True)
def empty_gauge() -> Iterator[None]:
    metrics.forget_all_jobs()
    yield
    metrics.forget_all_jobs()


def test_states_move_between_labels_and_deleted_jobs_leave() -> None:
    assert gauge("Pending") == 0
    assert gauge("Succeeded") == 0
    metrics.set_job_state(("ns", "a"), "Pending")
    metrics.set_job_state(("ns", "b"), "Pending")
    metrics.set_job_state(("ns", "a"), "Running")
    metrics.set_job_state(("ns", "a"), "Running")  # the same state again: no double count
    assert (gauge("Pending"), gauge("Running")) == (1, 1)
    metrics.set_job_state(("ns", "a"), "Succeeded")
    metrics.set_job_state(("ns", "b"), None)
    assert (gauge("Pending"), gauge("Running"), gauge("Succeeded")) == (0, 0, 1)
    metrics.set_job_state(("ns", "c"), "SomethingNew")
    assert gauge("Unknown") == 1


def test_a_paused_operator_reports_no_jobs() -> None:
    for i, state in enumerate(["Running", "Succeeded", "Failed"]):
        metrics.set_job_state(("ns", str(i)), state)
    metrics.forget_all_jobs()
    assert [gauge(s) for s in ("Running", "Succeeded", "Failed")] == [0, 0, 0]
    metrics.set_job_state(("ns", "0"), "Running")  # re-listed after resuming
    assert gauge("Running") == 1
