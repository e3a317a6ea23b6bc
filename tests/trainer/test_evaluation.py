"""Evaluation metrics (against scikit-learn), improvement rules, and the checkpoint directory
rules (complete vs half-written, latest, what pruning keeps) -- the pure parts of the loop."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from kubegraft.api.v1alpha1 import SchedulerKind
from kubegraft_trainer.checkpointing import (
    COMPLETE_MARKER,
    TRAINER_STATE,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    read_best,
    to_prune,
)
from kubegraft_trainer.evaluation import classification_metrics, is_improvement
from kubegraft_trainer.loop import lr_lambda

pytestmark = pytest.mark.trainer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int) -> None:
    rng = random.Random(seed)
    labels = [rng.randrange(5) for _ in range(300)]
    preds = [
        y if rng.random() < 0.6 else rng.randrange(6) for y in labels
    ]  # class 5 only predicted
    m = classification_metrics(preds, labels, label_names=list("abcdef"), per_class=True)
    p, r, f, _ = precision_recall_fscore_support(labels, preds, average="macro", zero_division=0)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["precision"] == pytest.approx(p)
    assert m["recall"] == pytest.approx(r)
    assert m["f1"] == pytest.approx(f)
    assert set(m["per_class"]) == set("abcdef")
    assert m["per_class"]["f"]["support"] == 0


def test_improvement_direction() -> None:
    assert is_improvement("loss", 0.5, 0.6)
    assert not is_improvement("loss", 0.6, 0.5)
    assert is_improvement("f1", 0.7, 0.6)
    assert not is_improvement("f1", 0.61, 0.6, min_delta=0.05)
    assert is_improvement("accuracy", 0.1, None)


def test_schedules() -> None:
    lin = lr_lambda(SchedulerKind.LINEAR, warmup=10, total=110)
    assert lin(0) < lin(5) < lin(9) < 1.0
    assert lin(10) == pytest.approx(1.0)
    assert lin(60) == pytest.approx(0.5)
    assert lin(110) == 0.0
    cos = lr_lambda(SchedulerKind.COSINE, warmup=0, total=100)
    assert cos(0) == pytest.approx(1.0)
    assert cos(50) == pytest.approx(0.5)
    assert cos(100) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda(SchedulerKind.CONSTANT, warmup=0, total=5)(4) == 1.0


def _ckpt(root: Path, step: int, complete: bool = True) -> Path:
    p = root / checkpoint_name(step)
    p.mkdir(parents=True)
    (p / TRAINER_STATE).write_text(json.dumps({"step": step}))
    if complete:
        (p / COMPLETE_MARKER).write_text(f"{step}\n")
    return p


def test_half_written_checkpoints_are_never_latest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 20)
    _ckpt(tmp_path, 30, complete=False)  # crashed while writing its marker
    (tmp_path / ".tmp-step-00000040").mkdir()  # crashed mid-save
    assert latest_checkpoint(tmp_path) == tmp_path / checkpoint_name(20)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 20]


def test_pruning_keeps_last_k_and_the_best(tmp_path: Path) -> None:
    paths = [_ckpt(tmp_path, s) for s in (10, 20, 30, 40)]
    found = list_checkpoints(tmp_path)
    assert to_prune(found, keep=2, best=paths[0]) == [paths[1]]
    assert to_prune(found, keep=2, best=paths[3]) == [paths[0], paths[1]]
    assert to_prune(found, keep=5, best=None) == []
    (tmp_path / "best.json").write_text(json.dumps({"path": str(paths[1]), "metric": 0.9}))
    assert read_best(tmp_path) == {"path": str(paths[1]), "metric": 0.9}
    (tmp_path / "best.json").write_text(json.dumps({"path": str(tmp_path / "gone")}))
    assert read_best(tmp_path) is None
