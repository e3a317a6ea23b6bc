"""In-memory caches fed by kopf's watches, and the per-job wake-up signals.

The pod and node watches (see :mod:`.main`) and rank 0's progress reports (see
:mod:`.progress_server`) put what they see here and wake the owning job's daemon; a reconcile
reads a snapshot instead of listing from the API server, which is what keeps the request
count per job small at scale.

Watch events and our own API responses both feed the cache, so an older object must never
replace a newer one: objects are compared by ``resourceVersion`` (etcd revisions, which are
integers on every real API server; when one is not, the latest write wins).

All methods run on the operator's event loop (kopf handlers and the async daemons), so no
locks are needed; reconciles in worker threads only see snapshots.

Only the fields :mod:`.observe` reads are kept (:mod:`.slim`): a
whole pod (env, command, volumes, managedFields) costs tens of KB as Python objects, which made
the operator's memory grow ~0.45 MB per job at scale (bench/operator_scale.py). Nodes are not
cached at all, only the names of the NotReady ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubegraft.constants import LABEL_JOB_NAME
from kubegraft.progress import ProgressReport
from kubegraft_operator.kueue import WorkloadObservation, observe_workload
from kubegraft_operator.observe import (
    Observation,
    PodObservation,
    controller_uid,
    node_is_ready,
    observe_pod,
    observe_pods,
    observe_progress,
    split_by_owner,
)
from kubegraft_operator.slim import slim_pod, slim_workload

Key = tuple[str, str]
"""(namespace, job name)."""
Obj = dict[str, Any]
MAX_TOMBSTONES = 100_000


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


def _uid(obj: Mapping[str, Any]) -> str | None:
    uid = (obj.get("metadata") or {}).get("uid")
    return str(uid) if uid else None


def newer_or_equal(candidate: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """Whether ``candidate`` may replace ``current`` in the cache."""
    if current is None:
        return True
    a, b = _rv(candidate), _rv(current)
    return a is None or b is None or a >= b


def _remember(uids: dict[str, None], uid: str) -> None:
    """Add to an insertion-ordered set bounded to :data:`MAX_TOMBSTONES` (oldest out)."""
    uids[uid] = None
    while len(uids) > MAX_TOMBSTONES:
        del uids[next(iter(uids))]


def job_key(obj: Mapping[str, Any]) -> Key | None:
    """The job name a labelled object is filed under, or None. Several jobs may have had that
    name (deleted and recreated): :meth:`Store.observation` tells them apart by owner UID."""
    meta = obj.get("metadata") or {}
    job = (meta.get("labels") or {}).get(LABEL_JOB_NAME)
    ns = meta.get("namespace")
    return (ns, job) if job and ns else None


@dataclass
class Store:
    """Pods by job, progress reports by job, NotReady nodes, and the daemons' wake-ups."""

    pods: dict[Key, dict[str, Obj]] = field(default_factory=dict)
    progress: dict[Key, tuple[str | None, str]] = field(default_factory=dict)
    """rank 0's newest report by job: (the UID of the job its pod belongs to, the JSON)."""
    workloads: dict[Key, Obj] = field(default_factory=dict)
    """Kueue Workloads of jobs with a queue name (:mod:`.kueue`), by the job they are for."""
    not_ready_nodes: set[str] = field(default_factory=set)
    wakeups: dict[Key, asyncio.Event] = field(default_factory=dict)
    tombstones: dict[str, None] = field(default_factory=dict)
    """UIDs of pods seen deleted: an API response about such a pod that arrives after the
    watch's DELETED event must not bring it back as a ghost (insertion-ordered, bounded)."""
    deleted_jobs: dict[str, None] = field(default_factory=dict)
    """UIDs of FineTuneJobs seen deleted (bounded): jobs carry no finalizer, so their daemon
    learns of the deletion from the watch, here, and stops (:mod:`.main`)."""

    # ---------------------------------------------------------------- wake-ups
    def wakeup(self, key: Key) -> asyncio.Event:
        """The event a job's daemon waits on (created on first use)."""
        ev = self.wakeups.get(key)
        if ev is None:
            ev = self.wakeups[key] = asyncio.Event()
        return ev

    def wake(self, key: Key) -> None:
        """Make the job's daemon reconcile now (no-op when it has none yet)."""
        ev = self.wakeups.get(key)
        if ev is not None:
            ev.set()

    def forget(self, key: Key, wake: asyncio.Event | None = None) -> None:
        """The job is gone (or no longer ours): drop everything about it. With ``wake`` (the
        daemon's own wake-up), only while the name is still that daemon's: jobs carry no
        finalizer, so a job of the same name may be created (and have a daemon, its pods in
        the cache) before the deleted one's daemon has stopped."""
        if wake is not None and self.wakeups.get(key) is not wake:
            return
        self.wakeups.pop(key, None)
        self.pods.pop(key, None)
        self.progress.pop(key, None)
        self.workloads.pop(key, None)

    def job_deleted(self, uid: str) -> None:
        """A FineTuneJob is gone from the API server: its daemon must stop."""
        _remember(self.deleted_jobs, uid)

    def is_deleted(self, uid: str | None) -> bool:
        return bool(uid) and uid in self.deleted_jobs

    # -------------------------------------------------------------------- pods
    def put_pod(self, pod: Obj, *, deleted: bool = False) -> Key | None:
        """Record a pod seen in a watch event or an API response; returns its job key."""
        return self.put_pod_event(pod, deleted=deleted)[0]

    def put_pod_event(self, pod: Obj, *, deleted: bool = False) -> tuple[Key | None, bool]:
        """Record a pod; returns its job key and whether anything a decision reads changed
        (:meth:`_as_decided`), so that a watch event which moves only what no decision reads
        does not cost a reconcile: kwok's and the kubelet's timestamps and IPs, the
        Initialized/ContainersReady conditions, and the scheduler's binding to a Ready node
        (reconciles per job at 1000 jobs: 8.5 before, 5.5 after, bench/README.md)."""
        key = job_key(pod)
        if key is None:
            return None, False
        pod = slim_pod(pod)
        name = pod["metadata"]["name"]
        uid = pod["metadata"].get("uid")
        if deleted:
            pods = self.pods.get(key)
            cached = pods.get(name) if pods is not None else None
            # Only that pod: a pod of the same name created since (a recreated job's) stays.
            if pods is not None and (cached is None or _uid(cached) in (None, uid)):
                pods.pop(name, None)
                if not pods:  # nothing left of a job that is gone or finished
                    del self.pods[key]
            if uid:
                _remember(self.tombstones, uid)
            return key, True
        if uid in self.tombstones:  # a late event for a pod seen deleted: no ghost
            return key, False
        pods = self.pods.setdefault(key, {})
        cached = pods.get(name)
        if not newer_or_equal(pod, cached):
            return key, False
        pods[name] = pod
        return key, cached is None or self._as_decided(cached) != self._as_decided(pod)

    def _as_decided(self, pod: Obj) -> tuple[PodObservation | None, bool]:
        """A pod as :func:`.decide.decide` sees it: its observation, its node only as
        NotReady or not (decide reads a node name only against the NotReady set; when a
        node turns NotReady, :meth:`put_node` wakes the jobs with pods on it)."""
        seen = observe_pod(pod)
        if seen is None:
            return None, False
        return dataclasses.replace(seen, node_name=None), seen.node_name in self.not_ready_nodes

    def resync_pods(
        self, covers: Callable[[str], bool], pods: list[Obj], version: str
    ) -> list[Key]:
        """A fresh LIST (at resourceVersion ``version``) of every worker pod in the namespaces
        ``covers`` accepts (:mod:`.pod_watch`, after a start or a broken watch): cached pods
        that existed by then and are not listed were deleted meanwhile; listed ones are put.
        A cached pod newer than the LIST (our own create's answer, arriving while the LIST
        was under way) is kept. Returns the jobs whose pods changed."""
        listed = {_uid(p) for p in pods}
        at = _rv({"metadata": {"resourceVersion": version}})
        changed: set[Key] = set()
        for key, cached in list(self.pods.items()):
            if not covers(key[0]):
                continue
            for pod in list(cached.values()):
                rv = _rv(pod)
                if _uid(pod) not in listed and at is not None and rv is not None and rv <= at:
                    self.put_pod_event(pod, deleted=True)
                    changed.add(key)
        for pod in pods:
            found, moved = self.put_pod_event(pod)
            if found is not None and moved:
                changed.add(found)
        return sorted(changed)

    def replace_pods(self, key: Key, pods: list[Obj]) -> None:
        """Seed a job's pods from a fresh LIST (a daemon's first look after (re)start)."""
        fresh = {
            p["metadata"]["name"]: slim_pod(p)
            for p in pods
            if p["metadata"].get("uid") not in self.tombstones
        }
        old = self.pods.get(key, {})
        for name, pod in old.items():
            if name in fresh and not newer_or_equal(fresh[name], pod):
                fresh[name] = pod
        self.pods[key] = fresh

    # ---------------------------------------------------------------- progress
    def put_report(self, key: Key, owner_uid: str | None, body: str) -> None:
        """rank 0's newest report (already authenticated and validated), for job ``key`` as
        owned by ``owner_uid``."""
        self.progress[key] = (owner_uid, body)

    # --------------------------------------------------------------- workloads
    def put_workload(self, workload: Obj, *, deleted: bool = False) -> Key | None:
        """Record a Kueue Workload (watch event or API answer); returns its job key."""
        key = job_key(workload)
        if key is None:
            return None
        cached = self.workloads.get(key)
        if deleted:
            if cached is not None and _uid(cached) in (None, _uid(workload)):
                del self.workloads[key]
        elif newer_or_equal(workload, cached):
            self.workloads[key] = slim_workload(workload)
        return key

    def workload(self, key: Key, uid: str | None) -> WorkloadObservation | None:
        """The cached Workload of the job whose UID is ``uid`` (not a predecessor's)."""
        raw = self.workloads.get(key)
        if raw is None or (uid and controller_uid(raw["metadata"]) != uid):
            return None
        return observe_workload(raw)

    # ------------------------------------------------------------------- nodes
    def put_node(self, node: Obj, *, deleted: bool = False) -> list[Key]:
        """Track a node's readiness; returns the jobs with pods on it when it changed."""
        name = (node.get("metadata") or {}).get("name", "")
        was_bad = name in self.not_ready_nodes
        bad = deleted or not node_is_ready(node)
        if bad:
            self.not_ready_nodes.add(name)
        else:
            self.not_ready_nodes.discard(name)
        if bad == was_bad:
            return []
        return [
            key
            for key, pods in self.pods.items()
            if any((p.get("spec") or {}).get("nodeName") == name for p in pods.values())
        ]

    # -------------------------------------------------------------- snapshots
    def observation(self, key: Key, uid: str | None = None) -> Observation:
        """An immutable snapshot of what is known about one job: the job whose UID is
        ``uid``. Pods and a progress report of another owner under the same name (an earlier
        job of that name) are not the job's: the pods come as ``foreign_pods``, the report
        not at all. Without a UID everything under the name is the job's."""
        owner, body = self.progress.get(key) or (None, None)
        if uid and owner != uid:
            body = None
        report: ProgressReport | None = observe_progress(body)
        own, foreign = split_by_owner(observe_pods(list(self.pods.get(key, {}).values())), uid)
        return Observation(
            pods=own,
            not_ready_nodes=frozenset(self.not_ready_nodes),
            progress=report,
            foreign_pods=foreign,
        )
