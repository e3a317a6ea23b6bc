"""Evaluation: loss, accuracy and macro precision/recall/F1 over a whole evaluation set.

Called by the loop at its evaluation interval and at the end, once for the validation set and
once per named evaluation set. Each process predicts its shard; predictions, labels, losses and
example indices are gathered to every process and de-duplicated by index (the sampler pads
shards by repetition), so the metrics are exact and identical on all ranks, and early-stopping
decisions agree without another broadcast. :func:`classification_metrics` is the pure part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from kubegraft_trainer.collectives import gather_all

LOWER_IS_BETTER = frozenset({"loss"})


def classification_metrics(
    preds: Sequence[int],
    labels: Sequence[int],
    *,
    label_names: Sequence[str] | None = None,
    per_class: bool = False,
) -> dict[str, Any]:
    """Accuracy and macro precision/recall/F1 (over the classes present in labels or
    predictions, as scikit-learn's default), per class on request."""
    n = len(labels)
    if n == 0:
        return {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "samples": 0}
    classes = sorted(set(labels) | set(preds))
    tp = dict.fromkeys(classes, 0)
    fp = dict.fromkeys(classes, 0)
    fn = dict.fromkeys(classes, 0)
    correct = 0
    for p, y in zip(preds, labels, strict=True):
        if p == y:
            tp[y] += 1
            correct += 1
        else:
            fp[p] += 1
            fn[y] += 1
    rows: dict[str, dict[str, float]] = {}
    ps, rs, fs = [], [], []
    for c in classes:
        precision = tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0
        recall = tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ps.append(precision)
        rs.append(recall)
        fs.append(f1)
        name = label_names[c] if label_names is not None and 0 <= c < len(label_names) else str(c)
        rows[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": float(tp[c] + fn[c]),
        }
    out: dict[str, Any] = {
        "accuracy": correct / n,
        "precision": sum(ps) / len(ps),
        "recall": sum(rs) / len(rs),
        "f1": sum(fs) / len(fs),
        "samples": n,
    }
    if per_class:
        out["per_class"] = rows
    return out


def confusion_matrix(
    preds: Sequence[int], labels: Sequence[int], *, num_classes: int = 0
) -> list[list[int]]:
    """Counts of (true label, predicted label): row ``i`` holds the examples of class ``i``
    by the class they were predicted as, so the rows sum to each class's support and the
    whole matrix to the number of examples. At least ``num_classes`` square (a head may
    predict a class the labels never name)."""
    size = max([num_classes, *(c + 1 for c in labels), *(c + 1 for c in preds)])
    matrix = [[0] * size for _ in range(size)]
    for p, y in zip(preds, labels, strict=True):
        matrix[y][p] += 1
    return matrix


def is_improvement(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (loss down, others up)."""
    if best is None:
        return True
    if metric in LOWER_IS_BETTER:
        return value < best - min_delta
    return value > best + min_delta


@torch.no_grad()
def evaluate(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    device: torch.device,
    label_names: Sequence[str] | None = None,
    per_class: bool = False,
    confusion: bool = False,
) -> dict[str, Any]:
    """Metrics of ``forward`` (batch -> logits) over every process's ``batches``.

    ``forward`` is called under ``torch.no_grad``; the caller sets eval mode. With
    ``confusion`` the result also holds ``confusion_matrix`` (:func:`confusion_matrix`, rows
    and columns in ``label_names`` order). Every rank must
    call this with the same number of batches (the distributed sampler guarantees it).
    """
    losses, preds, labels, indices = [], [], [], []
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = forward(batch).float()
        y = batch["labels"]
        losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none").cpu())
        preds.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
        indices.append(batch["index"].cpu())
    local = (
        torch.stack(
            [
                torch.cat(losses).double(),
                torch.cat(preds).double(),
                torch.cat(labels).double(),
                torch.cat(indices).double(),
            ],
            dim=1,
        )
        if losses
        else torch.zeros(0, 4, dtype=torch.float64)
    )
    merged = gather_all(local.double())
    seen: dict[int, tuple[float, int, int]] = {}
    for loss, pred, label, index in merged.tolist():
        seen.setdefault(int(index), (loss, int(pred), int(label)))
    values = [seen[i] for i in sorted(seen)]
    metrics = classification_metrics(
        [v[1] for v in values], [v[2] for v in values], label_names=label_names, per_class=per_class
    )
    metrics["loss"] = sum(v[0] for v in values) / len(values) if values else 0.0
    if confusion:
        metrics["confusion_matrix"] = confusion_matrix(
            [v[1] for v in values], [v[2] for v in values], num_classes=len(label_names or ())
        )
    return metrics
