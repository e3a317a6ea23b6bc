"""Fold rank 0's progress report into the status' training story (progress, metrics,
parameters, checkpoints), with the display strings the printer columns show.

Pure: the stall clock (``progress.updatedAt``) moves only when the step changes, so a trainer
that keeps reporting the same step is still seen as stalled.
"""

from __future__ import annotations

from kubegraft.api.v1alpha1 import (
    CheckpointStatus,
    FineTuneJobStatus,
    Metrics,
    Parameters,
    Progress,
)
from kubegraft.progress import ProgressReport

METRIC_NAMES = ("f1", "accuracy", "precision", "recall", "loss")


def format_duration(seconds: int) -> str:
    """12m30s, 1h02m, 45s: short enough for a printer column."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def progress_from(report: ProgressReport, previous: Progress | None, now: str) -> Progress:
    """The status' progress block; ``updatedAt`` is when the step last changed."""
    percent: int | None = None
    if report.total_steps:
        percent = max(0, min(100, report.step * 100 // report.total_steps))
    if report.phase == "done" and report.total_steps:
        percent = 100
    changed = previous is None or previous.step != report.step or previous.updated_at is None
    updated_at = (report.time or now) if changed else previous.updated_at  # type: ignore[union-attr]
    return Progress(
        step=report.step,
        total_steps=report.total_steps,
        percent=percent,
        epoch=report.epoch,
        eta_seconds=max(0, report.eta_seconds) if report.eta_seconds is not None else None,
        eta=format_duration(report.eta_seconds) if report.eta_seconds is not None else None,
        samples_per_second=report.samples_per_second,
        display=f"{percent}%" if percent is not None else f"step {report.step}",
        updated_at=updated_at,
    )


def metrics_from(report: ProgressReport, main_metric: str) -> Metrics | None:
    """Latest metrics; ``display`` shows the metric that picks the best checkpoint."""
    values = {
        "f1": report.f1,
        "accuracy": report.accuracy,
        "precision": report.precision,
        "recall": report.recall,
        "loss": report.eval_loss,
    }
    if all(v is None for v in values.values()) and report.train_loss is None:
        return None
    display: str | None = None
    for key in (main_metric, *METRIC_NAMES):
        if values.get(key) is not None:
            display = f"{key}={values[key]:.3g}" if key == "loss" else f"{key}={values[key]:.2f}"
            break
    if display is None and report.train_loss is not None:
        display = f"train_loss={report.train_loss:.3g}"
    return Metrics(
        train_loss=report.train_loss,
        eval_loss=report.eval_loss,
        accuracy=report.accuracy,
        precision=report.precision,
        recall=report.recall,
        f1=report.f1,
        eval_sets=report.eval_sets,
        display=display,
    )


def parameters_from(report: ProgressReport) -> Parameters | None:
    """Trainable vs total parameters, when the trainer reported them."""
    if report.trainable_parameters is None or not report.total_parameters:
        return None
    return Parameters(
        trainable=report.trainable_parameters,
        total=report.total_parameters,
        trainable_percent=round(100.0 * report.trainable_parameters / report.total_parameters, 2),
    )


def checkpoints_from(
    report: ProgressReport, previous: CheckpointStatus | None
) -> CheckpointStatus | None:
    """Latest/best checkpoint; kept from before when this report does not mention them (a
    restarted trainer's first reports predate its first new checkpoint)."""
    if report.latest_checkpoint is None and report.best_checkpoint is None:
        return previous
    prev = previous or CheckpointStatus()
    return CheckpointStatus(
        latest=report.latest_checkpoint or prev.latest,
        latest_step=report.latest_checkpoint_step
        if report.latest_checkpoint is not None
        else prev.latest_step,
        best=report.best_checkpoint or prev.best,
        best_metric=report.best_metric if report.best_checkpoint is not None else prev.best_metric,
    )


def fold_progress(
    status: FineTuneJobStatus, report: ProgressReport | None, *, main_metric: str, now: str
) -> FineTuneJobStatus:
    """A copy of ``status`` with the report folded in (unchanged when there is none)."""
    if report is None:
        return status
    out = status.model_copy(deep=True)
    out.progress = progress_from(report, status.progress, now)
    out.metrics = metrics_from(report, main_metric) or status.metrics
    out.parameters = parameters_from(report) or status.parameters
    out.checkpoints = checkpoints_from(report, status.checkpoints)
    return out
