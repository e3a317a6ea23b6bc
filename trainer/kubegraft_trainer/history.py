"""The run's history: one record per logging step and per evaluation, as Hugging Face's
``trainer_state.json`` keeps its ``log_history``.

``metrics.json`` says where a run ended; the history says how it got there (the loss curve,
each evaluation), which is what the report's plots and the model card's results table are
drawn from. The loop appends the records to its state, which every checkpoint saves, so a
resumed run's history continues the interrupted one's instead of starting over; rank 0 writes
``<output>/history.json`` at the end, next to ``metrics.json``. Pure functions: records in,
records (or the file's document) out.

Record shapes (every record has ``step`` and fractional ``epoch``):

* training: ``loss`` (mean over the logging window and the ranks), ``learning_rate``,
  ``grad_norm`` (when clipping measured one), ``samples_per_second``;
* evaluation: ``set`` (``validation`` or an evalSets name) and ``metrics`` (loss, accuracy,
  precision, recall, f1, samples; loss, perplexity and tokens for a causal LM).

The document adds the final evaluation's confusion matrices (``final_evaluation``: rows are
true labels, columns predictions, both in ``label_names`` order).
"""

from __future__ import annotations

from typing import Any

HISTORY_FILE = "history.json"


def step_record(
    *,
    step: int,
    epoch: float,
    loss: float,
    learning_rate: float,
    samples_per_second: float,
    grad_norm: float | None = None,
) -> dict[str, Any]:
    """The record of one logging step."""
    record: dict[str, Any] = {
        "step": step,
        "epoch": round(epoch, 4),
        "loss": loss,
        "learning_rate": learning_rate,
    }
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    record["samples_per_second"] = round(samples_per_second, 2)
    return record


def eval_records(*, step: int, epoch: float, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per evaluation set of one evaluation (numbers only)."""
    return [
        {
            "step": step,
            "epoch": round(epoch, 4),
            "set": name,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        for name, metrics in results.items()
    ]


def history_document(
    *,
    job: str,
    records: list[dict[str, Any]],
    global_step: int,
    max_steps: int,
    epochs_done: int,
    label_names: list[str],
    confusion: dict[str, list[list[int]]],
    best_metric: float | None,
    best_checkpoint: str | None,
    metric_for_best: str,
) -> dict[str, Any]:
    """What ``history.json`` holds (field names as in Hugging Face's trainer state)."""
    return {
        "job": job,
        "global_step": global_step,
        "max_steps": max_steps,
        "epochs_done": epochs_done,
        "metric_for_best": metric_for_best,
        "best_metric": best_metric,
        "best_model_checkpoint": best_checkpoint,
        "log_history": records,
        "final_evaluation": {
            "step": max((r["step"] for r in records if "set" in r), default=None),
            "label_names": label_names,
            "confusion_matrix": confusion,
        },
    }


def training_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training (logging-step) records."""
    return [r for r in records if "set" not in r]


def evaluation_records(
    records: list[dict[str, Any]], name: str | None = None
) -> list[dict[str, Any]]:
    """The evaluation records, of one set when ``name`` is given."""
    return [r for r in records if "set" in r and (name is None or r["set"] == name)]
