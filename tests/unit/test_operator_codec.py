"""The operator decodes kopf's watch events and its own answers with orjson
(:mod:`kubegraft_operator.codec`): same values, and kopf's watch stream really uses it."""

from __future__ import annotations

import inspect
import json

import pytest

pytestmark = pytest.mark.unit

POD_EVENT = {
    "type": "MODIFIED",
    "object": {
        "kind": "Pod",
        "metadata": {"name": "j-worker-0-a0", "labels": {"kubegraft.io/node-rank": "0"}},
        "status": {"phase": "Running", "containerStatuses": [{"restartCount": 0, "ready": True}]},
        "spec": {"terminationGracePeriodSeconds": 120, "x": 1.5, "n": None, "u": "é ✓"},
    },
}


def test_orjson_decodes_to_the_same_values_as_the_standard_library() -> None:
    from kubegraft_operator import codec

    text = json.dumps(POD_EVENT)
    assert codec.loads(text) == codec.loads(text.encode()) == json.loads(text) == POD_EVENT
    # Everything else of the json module is the standard library's.
    assert codec.ORJSON_JSON.dumps is json.dumps
    assert codec.ORJSON_JSON.JSONDecodeError is json.JSONDecodeError


def test_a_copy_is_equal_and_shares_nothing_with_the_original() -> None:
    from kubegraft_operator import codec

    copied = codec.copy(POD_EVENT)
    assert copied == POD_EVENT
    copied["object"]["metadata"]["labels"]["kubegraft.io/node-rank"] = "1"
    copied["object"]["status"]["containerStatuses"].append({})
    assert POD_EVENT["object"]["metadata"]["labels"] == {"kubegraft.io/node-rank": "0"}
    assert len(POD_EVENT["object"]["status"]["containerStatuses"]) == 1


def test_kopf_watch_stream_decodes_with_orjson_once_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kopf._cogs.clients import api as kopf_api

    from kubegraft_operator import codec

    # kopf's watch stream decodes each line with the ``json`` of its api module; if a kopf
    # upgrade moves that call, the patch would silently do nothing: fail here instead.
    assert "json.loads(line" in inspect.getsource(kopf_api.stream)
    monkeypatch.setattr(kopf_api, "json", json)
    codec.use_for_kopf_watches()
    assert kopf_api.json is codec.ORJSON_JSON
    assert kopf_api.json.loads is codec.loads
    line = json.dumps(POD_EVENT).encode()
    assert kopf_api.json.loads(line.decode("utf-8")) == POD_EVENT


def test_the_reconcile_daemon_asks_kopf_for_no_finalizer() -> None:
    # main._without_finalizer edits kopf's registry: this fails if a kopf upgrade moves it.
    import kopf

    from kubegraft_operator import main

    daemons = [h for h in kopf.get_default_registry()._spawning.get_all_handlers()]
    ours = [h for h in daemons if h.fn is main.reconcile]
    assert len(ours) == 1
    assert ours[0].requires_finalizer is False
