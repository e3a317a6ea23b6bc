"""The frozen-feature cache: same accuracy as running the frozen backbone every step, far faster.

Feature extraction on the real MiniLM: the encoder is frozen and in eval mode, so its output
for an example never changes; the cached run computes it once, the uncached run every epoch.
Both see the same examples in the same order (same sampler and seed), so they must reach the
same accuracy; the cached one must spend far less time training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_helpers import KAOMOJI, MINILM, log_text, metrics, run_single, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


def _job(tmp_path: Path, name: str, cache: bool) -> tuple[Path, Path]:
    out = tmp_path / name
    cfg = write_job(
        tmp_path / f"{name}.yaml",
        name,
        {
            "model": {
                "checkpoint": MINILM,
                "task": "sequence-classification",
                "head": {"dropout": 0.1},
            },
            "dataset": {
                "train": {"uri": KAOMOJI},
                "textField": "text",
                "labelField": "category",
                "includeLabels": ["angry", "happy", "sad", "sleepy"],
                "validationSplit": 0.1,
                "maxSamples": 384,
                "maxEvalSamples": 128,
                "maxLength": 24,
            },
            "freeze": {"preset": "feature-extraction"},
            "training": {
                "epochs": 4,
                "perDeviceBatchSize": 32,
                "learningRate": 3e-3,
                "seed": 9,
                "cacheFrozenFeatures": cache,
                "logEverySteps": 4,
            },
            "distributed": {"procsPerNode": 1},
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    return cfg, out


def test_cached_features_match_uncached_and_are_faster(tmp_path: Path) -> None:
    cached_cfg, cached_out = _job(tmp_path, "cached", True)
    plain_cfg, plain_out = _job(tmp_path, "uncached", False)
    assert run_single(cached_cfg) == 0, log_text(cached_cfg)
    assert run_single(plain_cfg) == 0, log_text(plain_cfg)
    cached, plain = metrics(cached_out), metrics(plain_out)
    assert cached["feature_cache"] is True
    assert plain["feature_cache"] is False
    assert cached["trainable_parameters"] == plain["trainable_parameters"]
    # Same data, same order, same head initialisation and dropout: the same result (features
    # differ only by float rounding between padded batch shapes).
    assert cached["accuracy"] == pytest.approx(plain["accuracy"], abs=0.02), (cached, plain)
    assert cached["loss"] == pytest.approx(plain["loss"], rel=0.02, abs=0.02)
    assert cached["accuracy"] > cached["chance_accuracy"] + 0.1
    # The backbone runs once instead of once per epoch (plus per evaluation).
    assert cached["train_seconds"] * 2.5 < plain["train_seconds"], (
        cached["train_seconds"],
        plain["train_seconds"],
    )
