"""The worker pods' watch, outside kopf: LIST then WATCH, slimmed, into the :class:`.Store`.

Pods are most of the events an operator sees (a gang's 4 pods give ~12 events on the way to
Running: created, bound, started, the kubelet's status patches), and kopf's per-event
machinery (an object memory, a body wrapper, loggers, cause detection, a worker task per
object, handler invocation) was the largest share of the operator's CPU at scale
(py-spy at 300 jobs: kopf's processing and queueing ~40 %, bench/README.md, issue 12). A
pod event needs none of it: it is decoded straight into the slim shape the store keeps
(:mod:`.slim`), and only a change a decision reads wakes its job. kopf stays the framework
for the FineTuneJobs (daemons, peering, probes).

One watch per namespace when the operator watches named namespaces (a Role per namespace
suffices), else one cluster-wide watch filtered by kopf's own namespace patterns. Each runs in
a thread of its own (the API client is synchronous) and hands events to the event loop.
Resilience, as an informer's: a LIST (paged) gives the resourceVersion to watch from and is
reconciled with the cache (pods that vanished meanwhile count as deleted); the watch asks for
bookmarks and restarts from the last version; a ``410 Gone`` or any error re-LISTs after a
back-off, so an API server restart, a compacted version or a dropped connection heal alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kopf._cogs.structs.references import (
    NamespaceName,
    match_namespace,
    select_specific_namespaces,
)

from kubegraft_operator import codec, settings
from kubegraft_operator.slim import decode_pod_event, decode_pod_list
from kubegraft_operator.store import Store
from kubegraft_operator.transport import Transport

Obj = dict[str, Any]
log = logging.getLogger(__name__)

WATCH_SECONDS = 300
"""The server ends each watch after this long (a fresh one starts from the last version)."""
READ_TIMEOUT = WATCH_SECONDS + 30.0
"""A connection silent for longer than this is dead (bookmarks arrive about every minute)."""
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)
PAGE = 500


class Gone(Exception):
    """The version to watch from is too old (410): LIST again."""


@dataclass(frozen=True)
class Scope:
    """Where to watch: one namespace, or every namespace that matches kopf's patterns."""

    namespace: str | None
    patterns: tuple[str, ...] = ()

    def path(self) -> str:
        if self.namespace is None:
            return "/api/v1/pods"
        return f"/api/v1/namespaces/{self.namespace}/pods"

    def covers(self, namespace: str) -> bool:
        if self.namespace is not None:
            return namespace == self.namespace
        name = NamespaceName(namespace)
        return not self.patterns or any(match_namespace(name, p) for p in self.patterns)


def scopes(namespaces: list[str] | None) -> list[Scope]:
    """The watches for the operator's namespaces (None: all of them): one per named namespace,
    else one cluster-wide watch with the patterns (globs, ``!`` exclusions) as a filter."""
    if not namespaces:
        return [Scope(None)]
    specific = select_specific_namespaces(namespaces)
    if len(specific) == len(namespaces):
        return [Scope(ns) for ns in sorted(specific)]
    return [Scope(None, tuple(namespaces))]


def lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Newline-separated watch events from a stream of chunks (an event may span chunks)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end > start:
                yield buf[start:end]
            start = end + 1
        buf = buf[start:]
    if buf.strip():
        yield buf


def watch_error(path: str, line: bytes) -> Exception:
    """What to raise for a watch event that is not a pod: :class:`Gone` for an ERROR whose
    Status says 410 (the version was compacted: re-LIST), else the API's message."""
    event = codec.loads(line)
    obj = event.get("object") if isinstance(event, dict) else None
    if isinstance(obj, dict) and obj.get("code") == 410:
        return Gone()
    message = obj.get("message") if isinstance(obj, dict) else None
    return RuntimeError(f"WATCH {path}: {message or repr(line[:200])}")


class PodWatch:
    """The watches of :func:`scopes`; events go to ``store`` on ``loop``."""

    def __init__(
        self,
        transport: Transport,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        namespaces: list[str] | None,
    ) -> None:
        self.transport = transport
        self.store = store
        self.loop = loop
        self.scopes = scopes(namespaces)
        self.stopping = threading.Event()
        self.synced = threading.Event()
        """Set once every scope's first LIST reached the store."""
        self._pending = len(self.scopes)
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name="pod-watch", daemon=True)
            for s in self.scopes
        ]
        self._responses: set[urllib3.BaseHTTPResponse] = set()

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self.stopping.set()
        for resp in list(self._responses):
            # Unblocks a watch thread waiting in a read: shutdown() is urllib3's way to do that
            # from another thread. close() blocked here, on the socket the thread was reading,
            # and the operator never exited on SIGTERM (tests/integration/test_operator_robustness).
            resp.shutdown()

    # ------------------------------------------------------------------ loop side
    def _deliver(self, events: list[tuple[Obj, bool]]) -> None:
        for pod, deleted in events:
            key, changed = self.store.put_pod_event(pod, deleted=deleted)
            if key is not None and changed:
                self.store.wake(key)

    def _resync(self, scope: Scope, pods: list[Obj], version: str) -> None:
        for key in self.store.resync_pods(scope.covers, pods, version):
            self.store.wake(key)
        self._pending -= 1
        if self._pending == 0:
            self.synced.set()

    def _send(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    # ---------------------------------------------------------------- thread side
    def _run(self, scope: Scope) -> None:
        failures = 0
        first = True
        while not self.stopping.is_set():
            try:
                version = self._list(scope, first)
                first = False
                failures = 0
                while not self.stopping.is_set():
                    version = self._watch(scope, version)
            except Gone:
                continue
            except Exception as e:
                if self.stopping.is_set():
                    return
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.warning(f"pod watch {scope.path()}: {type(e).__name__}: {e}; again in {delay}s")
                self.stopping.wait(delay)

    def _request(
        self, path: str, query: dict[str, str], *, stream: bool
    ) -> urllib3.BaseHTTPResponse:
        timeout = urllib3.Timeout(connect=10.0, read=READ_TIMEOUT if stream else 60.0)
        # Body left unread either way: the caller reads a LIST page, iterates a WATCH.
        return self.transport.send("GET", path, query=query, timeout=timeout, stream=True)

    def _list(self, scope: Scope, first: bool) -> str:
        """LIST the scope's worker pods (paged) into the store; their resourceVersion."""
        path = scope.path()
        items: list[Obj] = []
        cont = ""
        while True:
            query = {"labelSelector": settings.WORKER_POD_SELECTOR, "limit": str(PAGE)}
            if cont:
                query["continue"] = cont
            resp = self._request(path, query, stream=False)
            try:
                data = resp.read()
            finally:
                resp.release_conn()
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise RuntimeError(f"LIST {path}: {resp.status} {data[:200]!r}")
            pods, cont, version = decode_pod_list(data)
            items += pods
            if not cont:
                break
        self._send(self._resync, scope, items, version)
        if first:
            log.info(f"pod watch {path}: {len(items)} worker pods")
        return version

    def _watch(self, scope: Scope, version: str) -> str:
        """One WATCH from ``version`` until the server ends it; the last version seen."""
        path = scope.path()
        query = {
            "labelSelector": settings.WORKER_POD_SELECTOR,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        resp = self._request(path, query, stream=True)
        self._responses.add(resp)
        try:
            if resp.status == 410:
                raise Gone()
            if resp.status != 200:
                raise RuntimeError(f"WATCH {path}: {resp.status}")
            for line in lines(resp.stream(65536)):
                decoded = decode_pod_event(line)
                if decoded is None:  # not a pod: an ERROR's Status
                    raise watch_error(path, line)
                kind, pod = decoded
                version = str(pod["metadata"].get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if scope.covers(str(pod["metadata"].get("namespace") or "")):
                    self._send(self._deliver, [(pod, kind == "DELETED")])
            return version
        finally:
            self._responses.discard(resp)
            resp.release_conn()
