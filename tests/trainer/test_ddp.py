"""DDP with 2 processes (gloo) on the real pretrained MiniLM and the real kaomoji data.

The top transformer block and a new head train (so DDP really synchronises transformer
gradients); a small subset of four emotion categories keeps it to a minute or two on 2 CPU
cores. The training loss must fall and validation accuracy must be well above chance.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from trainer_helpers import KAOMOJI, MINILM, log_text, metrics, run, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

LABELS = ["angry", "happy", "sad", "sleepy"]


def test_minilm_kaomoji_ddp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "ddp-minilm",
        {
            "model": {"checkpoint": MINILM, "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": KAOMOJI},
                "textField": "text",
                "labelField": "category",
                "includeLabels": LABELS,
                "validationSplit": 0.1,
                "maxSamples": 768,
                "maxEvalSamples": 200,
                "maxLength": 24,
            },
            "freeze": {"preset": "top-k", "topK": 1},
            "training": {
                "epochs": 2,
                "perDeviceBatchSize": 16,
                "learningRate": 1e-3,
                "warmupSteps": 4,
                "logEverySteps": 4,
                "seed": 3,
            },
            "distributed": {"procsPerNode": 2},
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run(cfg, timeout=500) == 0, log_text(cfg)
    m = metrics(out)
    assert m["processes"] == 2
    assert m["strategy"] == "ddp"
    assert m["label_names"] == LABELS
    losses = [
        float(x) for x in re.findall(r"step \d+/\d+ epoch [\d.]+ loss ([\d.]+)", log_text(cfg))
    ]
    assert len(losses) >= 4
    assert losses[-1] < 0.8 * losses[0], losses
    assert m["chance_accuracy"] < 0.4
    assert m["accuracy"] > m["chance_accuracy"] + 0.2, m
    # exported in Hugging Face format with the label names
    model_dir = out / "model"
    assert (model_dir / "config.json").exists()
    assert (model_dir / "tokenizer.json").exists()
    assert '"sad"' in (model_dir / "config.json").read_text()
