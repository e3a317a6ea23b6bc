"""The watch cache keeps only what observe reads (:mod:`.slim`); reports by owner UID.

A rendered worker pod (the ``full`` golden case) is dressed up as the API server returns it
(uid, resourceVersion, managedFields, a scheduled node, statuses); the slim copy must give the
same Observation and lose the bulky parts (env, command, volumes, managedFields).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft_operator.observe import observe_pod, observe_pods, observe_progress
from kubegraft_operator.render import render_pod
from kubegraft_operator.slim import decode_pod, decode_pod_event, decode_pod_list, slim_pod
from kubegraft_operator.store import Store

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"

STATUSES: dict[str, dict[str, Any]] = {
    "pending-unschedulable": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            }
        ],
    },
    "image-pull": {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "trainer",
                "image": "example.com/trainer:1",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off"}},
            }
        ],
    },
    "running-ready": {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "startTime": "2026-01-01T00:00:02Z",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"},
        ],
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": True,
                "started": True,
                "state": {"running": {"startedAt": "2026-01-01T00:00:04Z"}},
            }
        ],
    },
    "oom-killed": {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": "trainer",
                "lastState": {},
                "state": {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "OOMKilled",
                        "startedAt": "2026-01-01T00:00:04Z",
                        "finishedAt": "2026-01-01T00:09:00Z",
                        "containerID": "containerd://abc",
                    }
                },
            }
        ],
    },
    "evicted": {"phase": "Failed", "reason": "Evicted", "message": "node low on memory"},
}


def full_pod(status: dict[str, Any], *, deleting: bool = False) -> dict[str, Any]:
    """A rendered pod as the API server would return it."""
    raw = yaml.safe_load((GOLDEN / "full.input.yaml").read_text())
    job = FineTuneJob.model_validate(raw)
    pod = render_pod(job, namespace="ns", uid="job-uid", rank=1, attempt=2)
    meta = pod["metadata"]
    meta.update(
        uid="pod-uid",
        resourceVersion="4711",
        creationTimestamp="2026-01-01T00:00:00Z",
        managedFields=[
            {
                "manager": "kubegraft-operator",
                "operation": "Update",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:containers": {'k:{"name":"trainer"}': {}}}},
            }
        ],
    )
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:10:00Z"
    pod["spec"]["nodeName"] = "node-7"
    pod["status"] = copy.deepcopy(status)
    return pod


@pytest.mark.parametrize("case", sorted(STATUSES))
@pytest.mark.parametrize("deleting", [False, True])
def test_slim_pod_observes_like_the_full_pod(case: str, deleting: bool) -> None:
    full = full_pod(STATUSES[case], deleting=deleting)
    slim = slim_pod(full)
    before, after = observe_pod(full), observe_pod(slim)
    assert before is not None
    assert after == before
    assert before.node_name == "node-7"
    assert before.deleting is deleting


def test_slim_pod_drops_the_bulky_parts_and_keeps_identity() -> None:
    full = full_pod(STATUSES["oom-killed"])
    assert full["spec"]["containers"][0]["env"]
    assert full["spec"]["volumes"]
    slim = slim_pod(full)
    assert slim["spec"] == {"nodeName": "node-7"}
    meta = slim["metadata"]
    assert "managedFields" not in meta
    # Of the owner references only the controller's UID: what tells a job from an earlier
    # one of the same name.
    owner = full["metadata"]["ownerReferences"][0]["uid"]
    assert meta["ownerReferences"] == [{"controller": True, "uid": owner}]
    assert (meta["name"], meta["namespace"], meta["uid"], meta["resourceVersion"]) == (
        full["metadata"]["name"],
        "ns",
        "pod-uid",
        "4711",
    )
    assert set(meta["labels"]) == {
        "kubegraft.io/job-name",
        "kubegraft.io/node-rank",
        "kubegraft.io/attempt",
    }
    term = slim["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term == {"exitCode": 137, "reason": "OOMKilled", "message": None}
    assert len(json.dumps(slim)) * 5 < len(json.dumps(full))
    assert slim_pod(slim) == slim  # idempotent: API responses and watch events mix


def test_the_api_json_decodes_straight_into_the_same_slim_pod() -> None:
    """Watch events, LIST pages and create answers are decoded into the slim shape without
    building the whole pod: the same shape as slim_pod of the whole pod, one definition."""
    full = full_pod(STATUSES["oom-killed"], deleting=True)
    slim = slim_pod(full)
    assert decode_pod(json.dumps(full).encode()) == slim
    event = json.dumps({"type": "MODIFIED", "object": full}).encode()
    assert decode_pod_event(event) == ("MODIFIED", slim)
    page = {"metadata": {"resourceVersion": "99", "continue": "next"}, "items": [full, full]}
    assert decode_pod_list(json.dumps(page).encode()) == ([slim, slim], "next", "99")
    assert decode_pod_list(b'{"metadata": {}, "items": []}') == ([], "", "")
    # A watch ERROR carries a Status, not a pod: left to the caller's plain decoding.
    gone = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired"}
    assert decode_pod_event(json.dumps({"type": "ERROR", "object": gone}).encode()) is None


def test_store_caches_slim_pods_and_observes_the_same() -> None:
    store = Store()
    fulls = [full_pod(s) for s in STATUSES.values()]
    for i, p in enumerate(fulls):
        p["metadata"]["name"] = f"p{i}"
        p["metadata"]["uid"] = f"u{i}"
    key = store.put_pod(copy.deepcopy(fulls[0]))
    assert key == ("ns", fulls[0]["metadata"]["labels"]["kubegraft.io/job-name"])
    store.replace_pods(key, copy.deepcopy(fulls[1:]))
    store.put_pod(copy.deepcopy(fulls[0]))
    cached = store.pods[key]
    assert all("managedFields" not in p["metadata"] for p in cached.values())
    assert all("containers" not in p["spec"] for p in cached.values())
    assert store.observation(key).pods == observe_pods(fulls)
    # readiness of a node still finds the job by its pods' nodeName
    assert store.put_node({"metadata": {"name": "node-7"}, "status": {"conditions": []}}) == []
    lost = {"metadata": {"name": "node-7"}, "status": {"conditions": [{"type": "Ready"}]}}
    assert store.put_node(lost) == [key]


def test_deleting_the_last_pod_of_a_job_leaves_nothing_behind() -> None:
    store = Store()
    pod = full_pod(STATUSES["oom-killed"])
    key = store.put_pod(copy.deepcopy(pod))
    assert key is not None
    assert key in store.pods
    store.put_pod(copy.deepcopy(pod), deleted=True)
    assert key not in store.pods
    # a deletion seen after the job was forgotten (a finished job, the garbage collector)
    store.forget(key)
    store.put_pod(copy.deepcopy(pod), deleted=True)
    assert key not in store.pods
    store.put_pod(copy.deepcopy(pod))  # and a late event for it does not bring it back
    assert key not in store.pods


def test_reports_are_kept_by_job_with_their_owner_uid() -> None:
    store = Store()
    report = json.dumps({"step": 10, "epoch": 1.0, "trainLoss": 0.5})
    store.put_report(("ns", "j"), "uid-1", report)
    assert store.progress[("ns", "j")] == ("uid-1", report)
    seen = store.observation(("ns", "j"), "uid-1").progress
    assert seen is not None
    assert (seen.step, seen.train_loss) == (10, 0.5)
    assert store.observation(("ns", "j"), "uid-2").progress is None  # another job's
    assert observe_progress(report) == seen


def test_a_pod_event_wakes_the_job_only_when_something_a_decision_reads_changed() -> None:
    store = Store()
    pod = full_pod(STATUSES["pending-unschedulable"])
    key, changed = store.put_pod_event(copy.deepcopy(pod))
    assert key is not None
    assert changed
    # kwok/kubelet status patches that move only timestamps, IPs, the resourceVersion
    again = copy.deepcopy(pod)
    again["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
    again["status"]["podIP"] = "10.0.0.9"
    again["status"]["conditions"][0]["lastProbeTime"] = "2026-01-01T00:00:09Z"
    assert store.put_pod_event(again) == (key, False)
    # an older event never counts, nor replaces the cached pod
    assert store.put_pod_event(copy.deepcopy(pod)) == (key, False)
    running = copy.deepcopy(again)
    running["metadata"]["resourceVersion"] = str(int(again["metadata"]["resourceVersion"]) + 1)
    running["status"] = {"phase": "Running"}
    assert store.put_pod_event(running) == (key, True)
    assert store.put_pod_event(copy.deepcopy(running), deleted=True) == (key, True)


def _next_version(pod: dict[str, Any], **status: Any) -> dict[str, Any]:
    later = copy.deepcopy(pod)
    later["metadata"]["resourceVersion"] = str(int(pod["metadata"]["resourceVersion"]) + 1)
    later["status"].update(status)
    return later


def test_a_binding_wakes_the_job_only_when_its_node_is_not_ready() -> None:
    """decide reads a pod's node only against the NotReady nodes: the scheduler's binding
    to a Ready node (nodeName, PodScheduled, Initialized) is no reason for a pass, a binding
    to a NotReady one is, and so is the node turning NotReady later (put_node)."""
    store = Store()
    pending = full_pod({"phase": "Pending"})
    del pending["spec"]["nodeName"]
    key, changed = store.put_pod_event(copy.deepcopy(pending))
    assert key is not None
    assert changed
    bound = _next_version(pending, conditions=[{"type": "PodScheduled", "status": "True"}])
    bound["spec"]["nodeName"] = "node-7"
    assert store.put_pod_event(copy.deepcopy(bound)) == (key, False)
    assert store.pods[key][bound["metadata"]["name"]]["spec"] == {"nodeName": "node-7"}
    lost = {"metadata": {"name": "node-7"}, "status": {"conditions": [{"type": "Ready"}]}}
    assert store.put_node(lost) == [key]
    # a pod bound to a node already NotReady: that is a decision's business at once
    other = copy.deepcopy(pending)
    other["metadata"].update(name="other", uid="other-uid")
    assert store.put_pod_event(copy.deepcopy(other)) == (key, True)
    other_bound = _next_version(other)
    other_bound["spec"]["nodeName"] = "node-7"
    assert store.put_pod_event(other_bound) == (key, True)
    # Running and Ready: a decision reads both
    running = _next_version(bound, phase="Running")
    assert store.put_pod_event(copy.deepcopy(running)) == (key, True)
    ready = _next_version(running, conditions=[{"type": "Ready", "status": "True"}])
    assert store.put_pod_event(ready) == (key, True)


def test_a_stopping_daemon_does_not_take_a_new_same_named_job_with_it() -> None:
    # No finalizer: a job of the same name may have its daemon before the old one stopped.
    store = Store()
    key = ("ns", "j")
    old_wake = store.wakeup(key)
    store.job_deleted("uid-old")
    assert store.is_deleted("uid-old")
    assert not store.is_deleted("uid-new")
    store.forget(key)  # the old daemon's wake-up is unregistered ...
    new_wake = store.wakeup(key)  # ... a new daemon registers its own
    pod = full_pod(STATUSES["pending-unschedulable"])
    pod["metadata"]["labels"]["kubegraft.io/job-name"] = "j"
    store.put_pod(pod)
    store.forget(key, old_wake)  # the old daemon's exit: not its name any more
    assert store.wakeups[key] is new_wake
    assert key in store.pods
    store.forget(key, new_wake)
    assert key not in store.wakeups
    assert key not in store.pods
