"""kopf wiring: ``kopf run -m kubegraft_operator.main`` (or ``python -m kubegraft_operator``).

Decorators only; each hands off to a module that does the work:

- one daemon per FineTuneJob runs :meth:`.reconciler.Reconciler.run_job` (observe, decide,
  apply, one status patch, Events);
- the worker pods' watch (:mod:`.pod_watch`, our own: kopf's per-event machinery was the
  largest CPU cost at scale) and kopf's watches on the nodes and Kueue's Workloads feed
  :mod:`.store` and wake the owning job's daemon (no per-event API calls); so do rank 0's
  progress reports, POSTed to :mod:`.progress_server` on kopf's event loop;
- a spec change (suspend, runPolicy) wakes the daemon too; finished jobs with nothing left to
  do have no daemon; no job carries a finalizer (:func:`_without_finalizer`): a deleted job's
  daemon stops on the watch's DELETED event;
- start-up applies :mod:`.settings`, builds the API client, serves /metrics; kopf's own
  ``--liveness`` endpoint serves /healthz with :func:`health` as a probe.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from typing import Any, TypeAlias

import kopf
from kubernetes import client, config

from kubegraft.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubegraft.constants import LABEL_JOB_NAME
from kubegraft_operator import codec, kueue, metrics, settings
from kubegraft_operator.apply import Api
from kubegraft_operator.decide import keeps_reconciling
from kubegraft_operator.pod_watch import PodWatch
from kubegraft_operator.progress_server import Endpoint, ProgressServer
from kubegraft_operator.reconciler import Reconciler
from kubegraft_operator.store import Store

Logger: TypeAlias = logging.Logger | logging.LoggerAdapter[Any]
STORE = Store()
_state: dict[str, Reconciler] = {}
_servers: list[ProgressServer] = []
_pod_watches: list[PodWatch] = []
SYNC_TIMEOUT = 60.0


def _api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    # the reconcile and first-pass threads, the create threads they fan out to, and the Event
    # threads (Reconciler)
    cfg.connection_pool_maxsize = 4 * settings.reconcile_threads()
    return client.ApiClient(cfg)


@kopf.on.startup()
def startup(*, settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    """Settings, the API client and the metrics server."""
    from kubegraft_operator import settings as our_settings

    our_settings.configure(settings)
    codec.use_for_kopf_watches()
    endpoint = Endpoint.from_env()
    if endpoint is None:
        logger.warning(
            "no progress endpoint (KUBEGRAFT_PROGRESS_TLS_DIR, KUBEGRAFT_OPERATOR_PROGRESS_URL):"
            " rank 0 cannot report progress or heartbeats, so set stallTimeoutSeconds high"
        )
    _state["reconciler"] = Reconciler(Api(_api_client()), STORE, endpoint)
    port = metrics.serve()
    logger.info(
        f"kubegraft operator started; metrics on :{port}; peering priority "
        f"{settings.peering.priority}"
    )


@kopf.on.startup()
async def start_pod_watch(**_: Any) -> None:
    """The worker pods' watch (after :func:`startup`), on the namespaces kopf was given, and
    wait for its first LIST: daemons of existing jobs then start from a full cache."""
    watch = PodWatch(
        _state["reconciler"].api.transport,
        STORE,
        asyncio.get_running_loop(),
        settings.watched_namespaces(sys.argv[1:]),
    )
    watch.start()
    _pod_watches.append(watch)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, watch.synced.wait, SYNC_TIMEOUT):
        # Daemons seed their own pods with a LIST; the watch keeps retrying (and says why).
        logging.getLogger(__name__).warning(
            f"the worker pods' first LIST did not complete within {SYNC_TIMEOUT:g}s"
        )


@kopf.on.cleanup()
async def stop_pod_watch(**_: Any) -> None:
    for watch in _pod_watches:
        watch.stop()


@kopf.on.startup()
async def start_progress_endpoint(**_: Any) -> None:
    """The progress endpoint on kopf's event loop (after :func:`startup`: kopf runs startup
    handlers in order)."""
    reconciler = _state["reconciler"]
    if reconciler.endpoint is not None:
        server = ProgressServer(STORE, reconciler.api, reconciler.endpoint)
        await server.start()
        _servers.append(server)


@kopf.on.cleanup()
async def stop_progress_endpoint(**_: Any) -> None:
    for server in _servers:
        await server.stop()


@kopf.on.probe(id="jobs")
def health(**_: Any) -> int:
    """Reported on the liveness endpoint: the number of jobs with a running daemon."""
    return len(STORE.wakeups)


def _keeps_reconciling(*, body: kopf.Body, **_: Any) -> bool:
    return keeps_reconciling(body)


@kopf.daemon(
    GROUP,
    VERSION,
    PLURAL,
    id="reconcile",
    # Asked to stop, a daemon returns at once, or after the pass in flight (its API calls,
    # its Events): 5 s for that before kopf cancels it, 10 s more to unwind; both well inside
    # a pod's default 30 s grace period (tests/integration/test_operator_robustness.py).
    cancellation_backoff=5.0,
    cancellation_timeout=10.0,
    when=_keeps_reconciling,
)
async def reconcile(
    *,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    stopped: kopf.DaemonStopped,
    logger: Logger,
    **_: Any,
) -> None:
    """The per-job control loop; kopf starts it for every job that needs one
    (:func:`.decide.keeps_reconciling`) and stops it once the job finished and nothing of it
    runs any more; it returns by itself when the job is deleted (:func:`job_changed`)."""
    await _state["reconciler"].run_job((namespace or "", name), body, stopped, logger)


def _without_finalizer(fn: Any) -> None:
    """Have kopf start ``fn``'s daemons without putting its finalizer on the job.

    kopf gives every object with a daemon a finalizer, so that the daemon stops before the
    object goes; that cost a PATCH per job on the way to Running (and another on the way out),
    the most expensive write there is (bench/operator_scale.py, issue 12). A FineTuneJob needs
    nothing done before it goes: its pods, Service, ConfigMap and Workload are owned by it and
    go with it through the garbage collector, and its daemon learns of the deletion from the
    watch (:func:`job_changed`) and stops. kopf's decorator has no switch for this, so the
    registered handler is replaced by a copy that does not ask for the finalizer;
    ``tests/unit/test_operator_main.py`` fails if a kopf upgrade moves where it lives."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h.fn is fn else h
        for h in spawning._handlers
    ]


_without_finalizer(reconcile)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_changed(
    *, body: kopf.Body, type: str, namespace: str | None, name: str, **_: Any
) -> None:
    """Keep the jobs-by-state gauge (finished jobs have no daemon to do it), and wake the
    daemon when the spec moved past what the status has seen (suspend, ...)."""
    key = (namespace or "", name)
    status = body.get("status") or {}
    metrics.set_job_state(key, None if type == "DELETED" else status.get("state"))
    if type == "DELETED":  # no finalizer: the daemon learns it here and stops
        STORE.job_deleted(str(body.meta.get("uid") or ""))
        STORE.wake(key)
        return
    generation = body.meta.get("generation")
    observed = status.get("observedGeneration")
    if type == "MODIFIED" and generation != observed:
        STORE.wake(key)


@kopf.on.event(kueue.GROUP, kueue.VERSION, "workloads", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def workload_event(*, body: kopf.Body, type: str, **_: Any) -> None:
    """Cache a FineTuneJob's Kueue Workload (admitted, evicted, ...) and wake its job. Without
    Kueue's CRDs kopf serves nothing here (and picks the resource up once they appear)."""
    key = STORE.put_workload(dict(body), deleted=type == "DELETED")
    if key is not None:
        STORE.wake(key)


@kopf.on.event("", "v1", "nodes")
async def node_event(*, body: kopf.Body, type: str, **_: Any) -> None:
    """Track NotReady nodes; wake the jobs with pods on a node whose readiness changed."""
    for key in STORE.put_node(dict(body), deleted=type == "DELETED"):
        STORE.wake(key)


__all__ = ["settings"]
