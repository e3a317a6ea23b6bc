"""The operator's own Prometheus metrics, served on ``/metrics`` by prometheus-client.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). The
jobs-by-state gauge is kept from a small map (job -> state) that the job watch and the
reconciles update, so it is exact after restarts, counts finished jobs (which have no reconcile
loop) and drops deleted jobs; the same map keeps the per-job state series (kube-state-metrics
style: 1 for the job's current state, no series for the others), which the "job failed" alert
reads. docs/metrics.md lists every series.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kubegraft.api.v1alpha1 import JobState

ENV_METRICS_PORT = "KUBEGRAFT_OPERATOR_METRICS_PORT"
DEFAULT_PORT = 8080

JOBS = Gauge("kubegraft_operator_jobs", "FineTuneJobs known to this operator, by state", ["state"])
JOB_STATE = Gauge(
    "kubegraft_operator_job_state",
    "1 for each FineTuneJob's current state",
    ["namespace", "finetunejob", "state"],
)
QUEUE_WAIT_SECONDS = Histogram(
    "kubegraft_operator_queue_wait_seconds",
    "From a job's creation (or its resume) until all its pods were created, suspended or "
    "queued time included",
    buckets=(
        1.0,
        5.0,
        15.0,
        30.0,
        60.0,
        120.0,
        300.0,
        600.0,
        1800.0,
        3600.0,
        7200.0,
        21600.0,
        86400.0,
    ),
)
RECONCILE_SECONDS = Histogram(
    "kubegraft_operator_reconcile_duration_seconds",
    "Time of one reconcile (observe, decide, apply, status write)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RECONCILES = Counter("kubegraft_operator_reconciles_total", "Reconciles run", ["result"])
GANG_RESTARTS = Counter(
    "kubegraft_operator_gang_restarts_total", "Whole-gang restarts, by reason", ["reason"]
)
API_ERRORS = Counter(
    "kubegraft_operator_api_errors_total",
    "Failed Kubernetes API requests, by operation and HTTP status (0: no response)",
    ["operation", "code"],
)

_states: dict[tuple[str, str], str] = {}
_KNOWN = frozenset(s.value for s in JobState)


def set_job_state(key: tuple[str, str], state: str | None) -> None:
    """Record a job's state (None: the job is gone) and refresh the gauge (O(1): it is called
    on every job event)."""
    before = _states.pop(key, None)
    if state is not None:
        _states[key] = state
    if before == state:
        return
    if before is not None:
        JOBS.labels(state=_label(before)).dec()
        JOB_STATE.remove(*key, _label(before))
    if state is not None:
        JOBS.labels(state=_label(state)).inc()
        JOB_STATE.labels(*key, _label(state)).set(1)


def forget_all_jobs() -> None:
    """Drop every job from the gauge (also: the operator paused for a peer, and only the leader
    reports; its watches re-list every job when it resumes)."""
    _states.clear()
    JOB_STATE.clear()
    for s in (*sorted(_KNOWN), "Unknown"):
        JOBS.labels(state=s).set(0)


def _label(state: str) -> str:
    return state if state in _KNOWN else "Unknown"


forget_all_jobs()  # every state is exported from the start, at 0


def serve(port: int | None = None) -> int | None:
    """Start the /metrics server (port from $KUBEGRAFT_OPERATOR_METRICS_PORT, 0 disables)."""
    if port is None:
        port = int(os.environ.get(ENV_METRICS_PORT, DEFAULT_PORT))
    if port <= 0:
        return None
    start_http_server(port)
    return port
