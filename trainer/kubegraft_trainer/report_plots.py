"""The run's pictures: loss curves, evaluation curves and the confusion matrix, as PNGs.

Drawn by rank 0 at the end of a run from the history (:mod:`kubegraft_trainer.history`), next
to ``metrics.json``, so that a run on a laptop and one on a cluster leave the same pictures
in their output. Pure plotting: the history document in, files out; nothing here reads the
model or the data. matplotlib is imported only here and only when drawing, through its
object API on the Agg canvas (no pyplot, no global backend switch, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubegraft_trainer.history import evaluation_records, training_records

LOSS_PNG = "loss.png"
EVAL_PNG = "eval_metrics.png"
CONFUSION_PNG = "confusion_matrix.png"
EVAL_CURVES = ("accuracy", "f1", "precision", "recall")
# Beyond this many classes the cells are too small for their counts to be printed.
ANNOTATE_UP_TO = 20


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def draw_loss(history: dict[str, Any], path: Path) -> Path | None:
    """Training loss per logging step and evaluation loss per evaluation set."""
    records = history["log_history"]
    train = training_records(records)
    evals = evaluation_records(records)
    if not train and not evals:
        return None
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="training loss")
    for name in dict.fromkeys(r["set"] for r in evals):
        rs = [r for r in evals if r["set"] == name and "loss" in r["metrics"]]
        ax.plot(
            [r["step"] for r in rs],
            [r["metrics"]["loss"] for r in rs],
            marker="o",
            label=f"{name} loss",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{history['job']}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path)
    return path


def draw_eval(history: dict[str, Any], path: Path) -> Path | None:
    """Accuracy and macro F1/precision/recall per evaluation set over the steps (nothing for
    a causal LM, whose evaluation has loss and perplexity only: the loss plot shows them)."""
    evals = [r for r in evaluation_records(history["log_history"]) if "accuracy" in r["metrics"]]
    if not evals:
        return None
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for name in dict.fromkeys(r["set"] for r in evals):
        rs = [r for r in evals if r["set"] == name]
        for metric in EVAL_CURVES:
            ax.plot(
                [r["step"] for r in rs],
                [r["metrics"][metric] for r in rs],
                marker="o",
                label=f"{name} {metric}",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{history['job']}: evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path)
    return path


def draw_confusion(history: dict[str, Any], path: Path, name: str) -> Path | None:
    """The final evaluation's confusion matrix of set ``name`` (true label down, predicted
    across), counts in the cells while they are readable."""
    final = history["final_evaluation"]
    matrix = final["confusion_matrix"].get(name)
    if not matrix:
        return None
    n = len(matrix)
    names = list(final["label_names"]) + [str(i) for i in range(len(final["label_names"]), n)]
    side = min(12.0, max(5.5, 0.45 * n + 2))
    fig = _figure(side, side)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    if n <= ANNOTATE_UP_TO:
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    color="white" if count > peak / 2 else "black",
                    fontsize="small",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = sum(map(sum, matrix))
    ax.set_title(f"{history['job']}: {name}, step {final['step']} ({total} examples)")
    fig.savefig(path)
    return path


def draw_report(history: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every picture the history allows, in ``out_dir``; returns the files written. The
    confusion matrix is the main evaluation set's (validation, else the first evalSets)."""
    sets = list(history["final_evaluation"]["confusion_matrix"])
    main = "validation" if "validation" in sets else next(iter(sets), None)
    drawn = [
        draw_loss(history, out_dir / LOSS_PNG),
        draw_eval(history, out_dir / EVAL_PNG),
        draw_confusion(history, out_dir / CONFUSION_PNG, main) if main else None,
    ]
    return [p for p in drawn if p is not None]
