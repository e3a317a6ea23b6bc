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


def job_states() -> dict[tuple[str, str], list[str]]:
    """(namespace, job) -> the states with a series, from the exposition as scraped."""
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], list[str]] = {}
    for fam in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if fam.name == "kubegraft_operator_job_state":
            for s in fam.samples:
                assert s.value == 1
                key = (s.labels["namespace"], s.labels["finetunejob"])
                out.setdefault(key, []).append(s.labels["state"])
    return out


def test_one_series_per_job_for_its_current_state_gone_on_delete_and_pause() -> None:
    metrics.set_job_state(("ns", "a"), "Pending")
    metrics.set_job_state(("ns", "a"), "Failed")
    metrics.set_job_state(("other", "a"), "Running")
    metrics.set_job_state(("ns", "c"), "SomethingNew")
    assert job_states() == {
        ("ns", "a"): ["Failed"],
        ("other", "a"): ["Running"],
        ("ns", "c"): ["Unknown"],
    }
    metrics.set_job_state(("ns", "a"), None)  # deleted
    assert ("ns", "a") not in job_states()
    metrics.forget_all_jobs()  # paused for a peer: the leader reports
    assert job_states() == {}
