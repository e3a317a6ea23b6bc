"""The operator's own Prometheus metrics, served on ``/metrics`` by prometheus-client.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). The
jobs-by-state gauge is computed from a small map (job -> state) that reconciles update, so it
is exact after restarts and drops deleted jobs.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kubegraft.api.v1alpha1 import JobState

ENV_METRICS_PORT = "KUBEGRAFT_OPERATOR_METRICS_PORT"
DEFAULT_PORT = 8080

JOBS = Gauge("kubegraft_operator_jobs", "FineTuneJobs known to this operator, by state", ["state"])
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


def set_job_state(key: tuple[str, str], state: str | None) -> None:
    """Record a job's state (None: the job is gone) and refresh the gauge."""
    if state is None:
        _states.pop(key, None)
    else:
        _states[key] = state
    counts = {s.value: 0 for s in JobState}
    counts["Unknown"] = 0
    for s in _states.values():
        counts[s if s in counts else "Unknown"] += 1
    for s, c in counts.items():
        JOBS.labels(state=s).set(c)


def serve(port: int | None = None) -> int | None:
    """Start the /metrics server (port from $KUBEGRAFT_OPERATOR_METRICS_PORT, 0 disables)."""
    if port is None:
        port = int(os.environ.get(ENV_METRICS_PORT, DEFAULT_PORT))
    if port <= 0:
        return None
    start_http_server(port)
    return port
