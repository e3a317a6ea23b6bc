"""The operator's own worker-pod watch (:mod:`kubegraft_operator.pod_watch`): which watches
it opens for kopf's namespace options, how it splits the stream, and how a fresh LIST is
reconciled with the cache (the real watch runs in every integration test)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubegraft_operator.pod_watch import Gone, Scope, lines, scopes, watch_error
from kubegraft_operator.settings import watched_namespaces
from kubegraft_operator.store import Store

pytestmark = pytest.mark.unit


def test_namespaces_come_from_kopfs_command_line() -> None:
    assert watched_namespaces(["--all-namespaces", "--standalone"]) is None
    assert watched_namespaces(["-A"]) is None
    assert watched_namespaces(["--standalone"]) is None  # __main__ then adds -A
    assert watched_namespaces(["--namespace", "a", "--namespace=b", "-n", "c", "-nd"]) == [
        "a",
        "b",
        "c",
        "d",
    ]
    argv = ["run", "-m", "kubegraft_operator.main", "--namespace=t-*", "--liveness=http://x"]
    assert watched_namespaces(argv) == ["t-*"]


def test_named_namespaces_get_a_watch_each_patterns_one_filtered_cluster_watch() -> None:
    assert scopes(None) == [Scope(None)]
    assert [s.path() for s in scopes(["b", "a"])] == [
        "/api/v1/namespaces/a/pods",
        "/api/v1/namespaces/b/pods",
    ]
    (glob,) = scopes(["t-*, !t-skip", "prod"])  # kopf: options OR, a comma list in order
    assert glob.path() == "/api/v1/pods"
    assert glob.covers("t-1")
    assert glob.covers("prod")
    assert not glob.covers("t-skip")
    assert not glob.covers("other")
    assert Scope("a").covers("a")
    assert not Scope("a").covers("b")


def test_watch_events_are_split_on_newlines_across_chunks() -> None:
    chunks = [b'{"a":', b'1}\n{"b":2}\n\n{"c"', b":3}"]
    assert list(lines(iter(chunks))) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_a_watch_error_is_gone_on_410_else_raised_with_the_api_message() -> None:
    def error(code: int, message: str) -> bytes:
        status = {"kind": "Status", "status": "Failure", "code": code, "message": message}
        return json.dumps({"type": "ERROR", "object": status}).encode()

    assert isinstance(watch_error("/p", error(410, "too old resource version")), Gone)
    boom = watch_error("/api/v1/pods", error(500, "etcd is down"))
    assert not isinstance(boom, Gone)
    assert str(boom) == "WATCH /api/v1/pods: etcd is down"


def _pod(name: str, uid: str, rv: int, phase: str = "Running", job: str = "j") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": {"kubegraft.io/job-name": job},
        },
        "status": {"phase": phase},
    }


def test_a_fresh_list_drops_pods_deleted_meanwhile_but_not_ones_created_since() -> None:
    store = Store()
    store.put_pod(_pod("gone", "u-gone", 10))  # deleted while the watch was broken
    store.put_pod(_pod("kept", "u-kept", 11, phase="Pending"))
    store.put_pod(_pod("new", "u-new", 30, job="k"))  # our create's answer, after the LIST
    listed = [_pod("kept", "u-kept", 12), _pod("other", "u-o", 5, job="elsewhere")]
    woken = store.resync_pods(lambda ns: ns == "ns", listed, "20")
    assert woken == [("ns", "elsewhere"), ("ns", "j")]
    assert set(store.pods[("ns", "j")]) == {"kept"}
    assert store.pods[("ns", "j")]["kept"]["status"]["phase"] == "Running"
    assert set(store.pods[("ns", "k")]) == {"new"}
    # nothing changed: nothing to wake; another namespace's cache is not touched
    assert store.resync_pods(lambda ns: ns == "ns", listed, "21") == []
    assert store.resync_pods(lambda ns: False, [], "40") == []
    assert set(store.pods[("ns", "k")]) == {"new"}
