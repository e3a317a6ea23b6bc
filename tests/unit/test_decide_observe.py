"""The pure inputs and outputs around the state machine: reading pods, nodes and progress
reports (observe), the watch caches (store), the status merge patch (apply.merge_patch) and
the printer-column strings (progress_status)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kubegraft.progress import ProgressReport
from kubegraft_operator.apply import merge_patch
from kubegraft_operator.observe import (
    PodPhase,
    node_is_ready,
    observe_pod,
    observe_progress,
)
from kubegraft_operator.progress_status import format_duration, metrics_from
from kubegraft_operator.store import Store

pytestmark = pytest.mark.unit


def raw_pod(
    name: str = "j-worker-1-a2",
    *,
    rank: str = "1",
    attempt: str = "2",
    rv: str = "10",
    uid: str = "u1",
    status: dict[str, Any] | None = None,
    node: str | None = "n1",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": uid,
        "resourceVersion": rv,
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "labels": {
            "kubegraft.io/job-name": "j",
            "kubegraft.io/node-rank": rank,
            "kubegraft.io/attempt": attempt,
        },
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status or {"phase": "Pending"}}


def test_observe_a_failed_pod_reads_the_exit_code() -> None:
    term = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    o = observe_pod(raw_pod(status={"phase": "Failed", "containerStatuses": [{"state": term}]}))
    assert o is not None
    assert (o.rank, o.attempt, o.phase, o.exit_code, o.reason) == (
        1,
        2,
        PodPhase.FAILED,
        137,
        "OOMKilled",
    )


def test_observe_unschedulable_and_image_pull() -> None:
    unsched = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/4 nodes: Insufficient nvidia.com/gpu",
            }
        ],
    }
    o = observe_pod(raw_pod(status=unsched, node=None))
    assert o is not None
    assert (o.reason, o.node_name) == ("Unschedulable", None)
    assert "nvidia.com/gpu" in o.message
    pulling = {
        "phase": "Pending",
        "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
    }
    o = observe_pod(raw_pod(status=pulling))
    assert o is not None
    assert o.reason == "ImagePullBackOff"


def test_observe_eviction_and_deletion() -> None:
    o = observe_pod(
        raw_pod(
            status={"phase": "Failed", "reason": "Evicted", "message": "low memory"}, deleting=True
        )
    )
    assert o is not None
    assert (o.reason, o.exit_code, o.deleting) == ("Evicted", None, True)


def test_pods_without_our_labels_are_ignored() -> None:
    pod = raw_pod()
    del pod["metadata"]["labels"]["kubegraft.io/attempt"]
    assert observe_pod(pod) is None


def test_node_readiness() -> None:
    assert node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not node_is_ready({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}})
    assert node_is_ready({"status": {}})


def test_progress_report_parsing_is_forgiving() -> None:
    assert observe_progress(None) is None
    assert observe_progress("{}") is None
    assert observe_progress("not json") is None
    assert observe_progress(json.dumps({"step": -1})) is None
    r = observe_progress(ProgressReport(step=5, f1=0.5).to_json())
    assert r is not None
    assert (r.step, r.f1) == (5, 0.5)


def test_store_keeps_the_newest_version_and_never_resurrects_a_deleted_pod() -> None:
    s = Store()
    s.put_pod(raw_pod(rv="10", status={"phase": "Running"}))
    s.put_pod(raw_pod(rv="9", status={"phase": "Pending"}))  # a late, older event
    assert s.observation(("ns", "j")).pods[0].phase == PodPhase.RUNNING
    s.put_pod(raw_pod(rv="11"), deleted=True)
    s.put_pod(raw_pod(rv="10", deleting=True))  # our delete call's answer, after the watch
    assert s.observation(("ns", "j")).pods == ()
    s.put_pod(raw_pod(uid="u2", rv="20"))  # same name, new object (job recreated)
    assert len(s.observation(("ns", "j")).pods) == 1


def test_store_node_changes_wake_the_jobs_on_that_node() -> None:
    s = Store()
    s.put_pod(raw_pod(node="n1"))
    bad = {
        "metadata": {"name": "n1"},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }
    assert s.put_node(bad) == [("ns", "j")]
    assert s.put_node(bad) == []  # no change, no wake-up
    assert s.observation(("ns", "j")).not_ready_nodes == frozenset({"n1"})
    assert s.put_node({"metadata": {"name": "n1"}, "status": {}}) == [("ns", "j")]


def test_store_wakeups() -> None:
    async def scenario() -> bool:
        s = Store()
        ev = s.wakeup(("ns", "j"))
        s.wake(("ns", "other"))  # no daemon: nothing happens
        s.wake(("ns", "j"))
        return ev.is_set()

    assert asyncio.run(scenario())


def test_merge_patch_nulls_removed_keys_and_replaces_lists() -> None:
    old = {
        "state": "Running",
        "reason": "GangRunning",
        "progress": {"step": 1, "eta": "5s"},
        "conditions": [1, 2],
    }
    new = {"state": "Running", "progress": {"step": 2}, "conditions": [1]}
    assert merge_patch(old, new) == {
        "reason": None,
        "progress": {"step": 2, "eta": None},
        "conditions": [1],
    }
    assert merge_patch(new, new) == {}


def test_display_strings() -> None:
    assert [format_duration(s) for s in (5, 750, 3720)] == ["5s", "12m30s", "1h02m"]
    m = metrics_from(ProgressReport(step=1, eval_loss=0.1234, accuracy=0.9), "f1")
    assert m is not None
    assert m.display == "accuracy=0.90"
    m = metrics_from(ProgressReport(step=1, eval_loss=0.1234), "loss")
    assert m is not None
    assert m.display == "loss=0.123"
    assert metrics_from(ProgressReport(step=1), "f1") is None
