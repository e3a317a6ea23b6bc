"""The Event a pass posts about its job (:func:`kubegraft_operator.events.event_body`): what
``kubectl describe`` and ``kubectl events`` show, and the core/v1 fields the API server
requires of an Event with an ``eventTime`` (the integration tests post them for real)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubegraft_operator.decide import Event
from kubegraft_operator.events import MAX_MESSAGE, event_body

pytestmark = pytest.mark.unit

JOB = {
    "apiVersion": "kubegraft.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "bert", "namespace": "team-a", "uid": "u-1", "generation": 3},
    "spec": {},
}
NOW = datetime(2026, 12, 3, 12, 0, 1, 250000, tzinfo=UTC)


def test_an_event_names_the_job_and_the_operator_that_reported_it() -> None:
    body = event_body(
        JOB, Event("Warning", "OOMKilled", "worker 2 ran out"), now=NOW, instance="op-0"
    )
    assert body["metadata"] == {"namespace": "team-a", "generateName": "bert."}
    assert body["involvedObject"] == {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "bert",
        "namespace": "team-a",
        "uid": "u-1",
    }
    assert (body["type"], body["reason"], body["message"]) == (
        "Warning",
        "OOMKilled",
        "worker 2 ran out",
    )
    assert body["source"] == {"component": "kubegraft-operator"}  # kubectl describe's From
    assert (body["reportingComponent"], body["reportingInstance"]) == ("kubegraft-operator", "op-0")
    assert body["action"] == "OOMKilled"
    assert body["count"] == 1
    assert body["firstTimestamp"] == body["lastTimestamp"] == body["eventTime"] == NOW.isoformat()


def test_a_long_message_is_cut_to_what_the_api_server_keeps() -> None:
    body = event_body(JOB, Event("Normal", "GangRunning", "x" * 5000), now=NOW, instance="op-0")
    assert body["message"] == "x" * MAX_MESSAGE
