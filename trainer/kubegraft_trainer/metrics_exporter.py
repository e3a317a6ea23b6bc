"""Prometheus metrics of a training run, served by rank 0 on ``KUBEGRAFT_METRICS_PORT``.

The operator's PodMonitor scrapes rank 0's pod at that port; Grafana's dashboard and the
alerts read these series. Counters end in ``_total`` (Prometheus naming); everything carries
a ``job`` label with the FineTuneJob name. A private registry keeps the series to ours (plus
the process collector), and ``port 0`` disables the endpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.process_collector import ProcessCollector

from kubegraft.constants import DEFAULT_METRICS_PORT, ENV_METRICS_PORT

log = logging.getLogger(__name__)
PREFIX = "kubegraft_trainer"


class TrainingMetrics:
    """The run's Prometheus series; update methods are cheap and never raise."""

    def __init__(self, job: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.job = job
        r = self.registry
        ProcessCollector(registry=r)
        self.steps = Counter(f"{PREFIX}_steps_total", "Optimizer steps done.", ["job"], registry=r)
        self.samples = Counter(
            f"{PREFIX}_samples_total",
            "Training examples processed (all processes).",
            ["job"],
            registry=r,
        )
        self.checkpoints = Counter(
            f"{PREFIX}_checkpoints_total", "Checkpoints written.", ["job"], registry=r
        )
        self.evaluations = Counter(
            f"{PREFIX}_evaluations_total", "Evaluations run.", ["job"], registry=r
        )
        self.step = Gauge(f"{PREFIX}_step", "Current optimizer step.", ["job"], registry=r)
        self.total_steps = Gauge(
            f"{PREFIX}_total_steps", "Optimizer steps in the whole run.", ["job"], registry=r
        )
        self.epoch = Gauge(f"{PREFIX}_epoch", "Current fractional epoch.", ["job"], registry=r)
        self.loss = Gauge(
            f"{PREFIX}_train_loss",
            "Training loss over the last logging window.",
            ["job"],
            registry=r,
        )
        self.lr = Gauge(
            f"{PREFIX}_learning_rate", "Current peak learning rate.", ["job"], registry=r
        )
        self.throughput = Gauge(
            f"{PREFIX}_samples_per_second",
            "Training throughput (all processes).",
            ["job"],
            registry=r,
        )
        self.eval_metric = Gauge(
            f"{PREFIX}_eval_metric",
            "Latest evaluation metric per evaluation set.",
            ["job", "set", "metric"],
            registry=r,
        )
        self.trainable = Gauge(
            f"{PREFIX}_trainable_parameters",
            "Parameters receiving gradients now.",
            ["job"],
            registry=r,
        )
        self.parameters = Gauge(
            f"{PREFIX}_parameters", "All parameters of the model.", ["job"], registry=r
        )
        self.freeze_stage = Gauge(
            f"{PREFIX}_freeze_stage", "Current gradual-unfreezing stage.", ["job"], registry=r
        )

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

    def on_step(
        self,
        *,
        step: int,
        total: int,
        epoch: float,
        samples: int,
        loss: float | None,
        lr: float,
        samples_per_second: float | None,
    ) -> None:
        j = self.job
        self.steps.labels(j).inc()
        self.samples.labels(j).inc(samples)
        self.step.labels(j).set(step)
        self.total_steps.labels(j).set(total)
        self.epoch.labels(j).set(epoch)
        self.lr.labels(j).set(lr)
        if loss is not None:
            self.loss.labels(j).set(loss)
        if samples_per_second is not None:
            self.throughput.labels(j).set(samples_per_second)

    def on_eval(self, name: str, metrics: dict[str, Any]) -> None:
        self.evaluations.labels(self.job).inc()
        for key in ("loss", "accuracy", "precision", "recall", "f1"):
            if isinstance(metrics.get(key), (int, float)):
                self.eval_metric.labels(self.job, name, key).set(float(metrics[key]))

    def on_parameters(self, *, trainable: int, total: int, stage: int) -> None:
        self.trainable.labels(self.job).set(trainable)
        self.parameters.labels(self.job).set(total)
        self.freeze_stage.labels(self.job).set(stage)

    def on_checkpoint(self) -> None:
        self.checkpoints.labels(self.job).inc()
