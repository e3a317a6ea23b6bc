"""Fold rank 0's progress report into the status' training story (progress, metrics,
parameters, checkpoints), with the display strings the printer columns show; and the stall
rule that reads it.

Pure. Two clocks, both on the operator's clock (``now``), so skew between the trainer's node
and the operator's cannot fake or hide a stall: ``progress.heartbeatAt`` moves whenever a new
report arrives (rank 0 sends one at least every ``progressIntervalSeconds``, in every phase),
``progress.updatedAt`` only when the step changes, so a trainer that keeps reporting the same
training step is still seen as stalled while a long evaluation is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from kubegraft.api.v1alpha1 import (
    CheckpointStatus,
    FineTuneJobStatus,
    Metrics,
    Parameters,
    Progress,
)
from kubegraft.progress import ProgressReport
from kubegraft_operator.observe import parse_time

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
    """The status' progress block; ``updatedAt`` is when the step last changed and
    ``heartbeatAt`` when a new report last arrived (a new ``time`` stamp), both at ``now``."""
    percent: int | None = None
    if report.total_steps:
        percent = max(0, min(100, report.step * 100 // report.total_steps))
    if report.phase == "done" and report.total_steps:
        percent = 100
    changed = previous is None or previous.step != report.step or previous.updated_at is None
    updated_at = now if changed else previous.updated_at  # type: ignore[union-attr]
    fresh = (
        previous is None
        or previous.heartbeat_at is None
        or report.time is None
        or report.time != previous.reported_at
    )
    heartbeat_at = now if fresh else previous.heartbeat_at  # type: ignore[union-attr]
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
        phase=report.phase,
        reported_at=report.time,
        heartbeat_at=heartbeat_at,
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


# ------------------------------------------------------------------------------ stall rule

TRAINING_PHASE = "training"


def heartbeat_timeout_seconds(stall_timeout: int, progress_interval: int) -> int:
    """No heartbeat for this long is a stall: the stall timeout, but never fewer than three
    heartbeat intervals (one late or lost report is not a stall)."""
    return max(stall_timeout, 3 * progress_interval)


def step_timeout_seconds(stall_timeout: int, progress_interval: int) -> int:
    """A training step unchanged for this long is a stall: the stall timeout, but never fewer
    than two heartbeat intervals (the step reaches the operator with the heartbeats)."""
    return max(stall_timeout, 2 * progress_interval)


@dataclass(frozen=True)
class StallClock:
    """When the running gang counts as stalled, and what to say then."""

    at: datetime
    reason: str


def stall_clock(
    progress: Progress | None,
    *,
    running_since: datetime,
    stall_timeout: int,
    progress_interval: int,
) -> StallClock:
    """The earlier of the two stall deadlines: heartbeats stopped, or (phase training, or no
    report yet) the step did not move. Both count from no earlier than ``running_since``, so
    a previous attempt's report cannot stall a new gang."""
    hb_timeout = heartbeat_timeout_seconds(stall_timeout, progress_interval)
    beat = parse_time(progress.heartbeat_at) if progress else None
    since = max(running_since, beat) if beat else running_since
    what = (
        f"phase {progress.phase or TRAINING_PHASE}, step {progress.step}"
        if progress
        else "no report yet"
    )
    clock = StallClock(
        since + timedelta(seconds=hb_timeout),
        f"no heartbeat from rank 0 for {hb_timeout}s ({what})",
    )
    if progress is None or (progress.phase or TRAINING_PHASE) == TRAINING_PHASE:
        step_timeout = step_timeout_seconds(stall_timeout, progress_interval)
        stepped = parse_time(progress.updated_at) if progress else None
        since = max(running_since, stepped) if stepped else running_since
        at = since + timedelta(seconds=step_timeout)
        if at < clock.at:
            step = progress.step if progress else 0
            clock = StallClock(at, f"no training step progress (step {step}) for {step_timeout}s")
    return clock
