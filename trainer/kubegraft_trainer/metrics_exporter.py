"""Prometheus metrics of a training run, served by rank 0 on ``KUBEGRAFT_METRICS_PORT``.

The chart's PodMonitor (or the ``prometheus.io/*`` annotations of rank 0's pod) scrapes rank
0's pod at its container port named ``metrics``; the dashboards and alerts read these series.
docs/metrics.md lists them: that table is the contract, and this module implements it.

Conventions (Prometheus's): one prefix, base units (``_seconds``, ``_bytes``), ``_total`` on
counters, ratios 0-1, and bounded labels only: ``namespace`` and ``finetunejob`` on every
series, plus ``set`` for evaluation sets. Never ``job`` or ``instance``: those are the labels
Prometheus gives the scrape target, and an exported ``job`` is renamed ``exported_job``.

Values that need every rank (samples, tokens, the loss, GPU memory) are reduced across ranks by
the loop (at logging boundaries, through :mod:`kubegraft_trainer.collectives`) before they get
here: this module does no communication, only bookkeeping, and its update methods are cheap.
A private registry keeps the endpoint to these series, and port 0 disables it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from kubegraft.constants import (
    DEFAULT_METRICS_PORT,
    ENV_ATTEMPT,
    ENV_METRICS_FINAL_SCRAPE,
    ENV_METRICS_PORT,
    ENV_PREEMPTIONS,
)

log = logging.getLogger(__name__)
PREFIX = "kubegraft_trainer"
LABELS = ("namespace", "finetunejob")
LOCAL_NAMESPACE = "local"
"""The ``namespace`` label of a run outside a cluster (``kubegraft run``)."""
EVAL_METRICS = ("loss", "accuracy", "precision", "recall", "f1")
"""The evaluation results exported per set (classification ratios are 0-1 already)."""

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""An optimizer step: from a head on cached features (milliseconds) to a large model with
gradient accumulation (a minute or more)."""
LONG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""An evaluation or a checkpoint save: a fraction of a second to half an hour."""


@dataclass(frozen=True)
class RunInfo:
    """Facts of the run that do not change while it runs."""

    planned_steps: int
    attempt: int
    """1 for the first attempt (the operator's status.attempt + 1)."""
    preemptions: int
    """Disruptions of the job before this attempt (the operator's status.disruptions)."""


def run_info_from_env(planned_steps: int, env: Mapping[str, str] | None = None) -> RunInfo:
    """The attempt and preemption counts the operator renders into the pod's environment
    (``KUBEGRAFT_ATTEMPT`` counts from 0; absent outside a cluster: attempt 1, none)."""
    env = os.environ if env is None else env
    return RunInfo(
        planned_steps=planned_steps,
        attempt=_int(env.get(ENV_ATTEMPT), 0) + 1,
        preemptions=_int(env.get(ENV_PREEMPTIONS), 0),
    )


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


@dataclass(frozen=True)
class LogWindow:
    """One logging window, already reduced over all ranks."""

    samples: int
    """Training examples processed in the window, all ranks."""
    tokens: int | None
    """Non-padding tokens processed in the window, all ranks (None: not a text batch)."""
    loss: float
    """Mean training loss of the window, mean over ranks."""
    epoch: float
    eta_seconds: float
    gpu_memory_allocated_bytes: int | None = None
    """Max over ranks; None without CUDA."""
    gpu_memory_peak_bytes: int | None = None


class TrainingMetrics:
    """The run's Prometheus series (one set of label values: this job)."""

    def __init__(
        self,
        *,
        namespace: str | None,
        finetunejob: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        # No ``*_created`` series beside every counter and histogram: the text format's extra
        # gauges would carry no information Prometheus's counter-reset handling needs.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry()
        self._scrapes = _ScrapeSignal()
        self.registry.register(self._scrapes)  # first: it is collected before the series
        self.labels = {"namespace": namespace or LOCAL_NAMESPACE, "finetunejob": finetunejob}
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, LABELS, registry=r)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, (*LABELS, *extra), registry=r)

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...], extra: tuple[str, ...] = ()
        ) -> Histogram:
            return Histogram(
                f"{PREFIX}_{name}", doc, (*LABELS, *extra), buckets=buckets, registry=r
            )

        self.steps = counter("steps", "Optimizer steps done (by this process since it started).")
        self.samples = counter("samples", "Training examples processed, all ranks.")
        self.tokens = counter("tokens", "Non-padding tokens processed, all ranks (text tasks).")
        self.evaluations = counter("evaluations", "Evaluations done (one per evaluation set).")
        self.checkpoints = counter("checkpoints", "Checkpoints committed.")
        self.planned_steps = gauge("planned_steps", "Optimizer steps of the whole run.")
        self.epoch = gauge("epoch", "Fractional epoch.")
        self.loss = gauge("loss", "Training loss over the last logging window, mean over ranks.")
        self.learning_rate = gauge("learning_rate", "Current peak learning rate.")
        self.grad_norm = gauge(
            "grad_norm", "Global gradient norm before clipping, last optimizer step."
        )
        self.eval = {
            m: gauge(f"eval_{m}", f"Latest evaluation {m} per evaluation set.", ("set",))
            for m in EVAL_METRICS
        }
        self.step_duration = histogram(
            "step_duration_seconds", "Wall time of one optimizer step.", STEP_BUCKETS
        )
        self.eval_duration = histogram(
            "eval_duration_seconds", "Wall time of one evaluation.", LONG_BUCKETS, ("set",)
        )
        self.checkpoint_duration = histogram(
            "checkpoint_duration_seconds", "Wall time of one checkpoint save.", LONG_BUCKETS
        )
        self.last_step = gauge(
            "last_step_timestamp_seconds", "Unix time of the last optimizer step."
        )
        self.last_checkpoint = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the last committed checkpoint."
        )
        self.progress = gauge("progress_ratio", "Optimizer steps done over planned, 0-1.")
        self.eta = gauge("eta_seconds", "Estimated seconds to the end of training.")
        self.trainable = gauge("trainable_parameters", "Parameters receiving gradients now.")
        self.parameters = gauge("parameters", "All parameters of the model.")
        self.freeze_stage = gauge(
            "freeze_stage", "Gradual-unfreezing stage (0 for a single-stage policy)."
        )
        self.gpu_allocated = gauge(
            "gpu_memory_allocated_bytes", "GPU memory allocated by tensors, max over ranks."
        )
        self.gpu_peak = gauge(
            "gpu_memory_peak_bytes", "Peak GPU memory allocated by tensors, max over ranks."
        )
        self.attempt = gauge("attempt", "Attempt number of this run (1 = first).")
        self.preemptions = gauge("preemptions", "Disruptions of this job before this attempt.")
        self._planned = 0
        # Counters appear at 0 from the start (rate() needs the first sample); tokens only
        # once a text batch was counted, so an image run has no tokens series.
        for c in (self.steps, self.samples, self.evaluations, self.checkpoints):
            c.labels(**self.labels)

    def serve(self, port: int | None = None) -> int | None:
        """Start the /metrics HTTP endpoint; returns the port, or None when disabled or busy."""
        if port is None:
            port = int(os.environ.get(ENV_METRICS_PORT, DEFAULT_METRICS_PORT))
        if port == 0:
            return None
        try:
            start_http_server(port, registry=self.registry)
        except OSError as exc:
            log.warning("metrics endpoint not started on port %d: %s", port, exc)
            return None
        return port

    def hold_until_scraped(self, timeout: float | None = None) -> bool:
        """Keep the endpoint up until a scrape that began after this call (so it read the
        final values), for at most ``timeout`` seconds (default
        ``$KUBEGRAFT_METRICS_FINAL_SCRAPE_SECONDS``, 0: return at once). Without it the last
        evaluation of a run often never reaches Prometheus: the process exits first."""
        if timeout is None:
            timeout = float(os.environ.get(ENV_METRICS_FINAL_SCRAPE) or 0)
        if timeout <= 0:
            return False
        self._scrapes.event.clear()
        return self._scrapes.event.wait(timeout)

    def on_start(self, info: RunInfo, *, step: int) -> None:
        """The run's fixed facts, and where it starts (a resumed run starts mid-way)."""
        self._planned = info.planned_steps
        self.planned_steps.labels(**self.labels).set(info.planned_steps)
        self.attempt.labels(**self.labels).set(info.attempt)
        self.preemptions.labels(**self.labels).set(info.preemptions)
        self.progress.labels(**self.labels).set(_ratio(step, info.planned_steps))

    def on_parameters(self, *, trainable: int, total: int, stage: int) -> None:
        self.trainable.labels(**self.labels).set(trainable)
        self.parameters.labels(**self.labels).set(total)
        self.freeze_stage.labels(**self.labels).set(stage)

    def on_step(
        self,
        *,
        step: int,
        seconds: float,
        lr: float,
        grad_norm: float | None,
        timestamp: float,
    ) -> None:
        """Every optimizer step (process-local values: the same on every rank)."""
        self.steps.labels(**self.labels).inc()
        self.step_duration.labels(**self.labels).observe(seconds)
        self.learning_rate.labels(**self.labels).set(lr)
        if grad_norm is not None:
            self.grad_norm.labels(**self.labels).set(grad_norm)
        self.last_step.labels(**self.labels).set(timestamp)
        self.progress.labels(**self.labels).set(_ratio(step, self._planned))

    def on_log(self, window: LogWindow) -> None:
        """A logging window, reduced over all ranks."""
        self.samples.labels(**self.labels).inc(window.samples)
        if window.tokens is not None:
            self.tokens.labels(**self.labels).inc(window.tokens)
        self.loss.labels(**self.labels).set(window.loss)
        self.epoch.labels(**self.labels).set(window.epoch)
        self.eta.labels(**self.labels).set(max(window.eta_seconds, 0.0))
        if window.gpu_memory_allocated_bytes is not None:
            self.gpu_allocated.labels(**self.labels).set(window.gpu_memory_allocated_bytes)
        if window.gpu_memory_peak_bytes is not None:
            self.gpu_peak.labels(**self.labels).set(window.gpu_memory_peak_bytes)

    def on_eval(self, name: str, results: Mapping[str, Any], *, seconds: float) -> None:
        """One evaluation set's results (already gathered over all ranks)."""
        self.evaluations.labels(**self.labels).inc()
        self.eval_duration.labels(**self.labels, set=name).observe(seconds)
        for key, g in self.eval.items():
            value = results.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                g.labels(**self.labels, set=name).set(float(value))

    def on_checkpoint(self, *, seconds: float, timestamp: float) -> None:
        """A committed checkpoint."""
        self.checkpoints.labels(**self.labels).inc()
        self.checkpoint_duration.labels(**self.labels).observe(seconds)
        self.last_checkpoint.labels(**self.labels).set(timestamp)

    def on_end(self, *, step: int) -> None:
        """Training is over (done or stopped early): nothing left to wait for."""
        self.eta.labels(**self.labels).set(0.0)
        self.progress.labels(**self.labels).set(_ratio(step, self._planned))


class _ScrapeSignal:
    """A collector with no series that marks each scrape: registered first, so a scrape that
    sets the event after :meth:`TrainingMetrics.hold_until_scraped` cleared it reads every
    series after that moment."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def describe(self) -> list[Any]:
        return []  # no series (and no collect() at registration)

    def collect(self) -> Iterator[Any]:
        self.event.set()
        return iter(())


def _ratio(done: int, planned: int) -> float:
    return min(1.0, done / planned) if planned > 0 else 0.0


__all__ = [
    "EVAL_METRICS",
    "LOCAL_NAMESPACE",
    "LogWindow",
    "RunInfo",
    "TrainingMetrics",
    "run_info_from_env",
]
