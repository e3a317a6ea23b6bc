"""The three classic transfer-learning steps on images, each a real 2-process DDP run (gloo):

1. pretrain a small CNN (simple_cnn) on digits 0-4, everything trainable;
2. transfer it to digits 5-9: the pretrained backbone frozen, a new head (feature extraction);
3. fine-tune the top block (top-k 1) on 5-9, starting from step 2's export, and from epoch 2
   on (gradual unfreezing) the block below it too: the stage changes mid-run, so DDP is
   re-wrapped over the newly trainable parameters with the same optimizer.

Each step must be well above chance (5 classes: 0.2), and what the policy froze must come out
bit-identical in the exported weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import log_text, metrics, run, write_digits, write_job, write_simple_cnn_init

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


def _spec(
    checkpoint: str,
    labels: list[str],
    preset: dict[str, object],
    out: Path,
    digits: Path,
    *,
    epochs: int,
    lr: float,
    state_dict: bool = False,
) -> dict[str, object]:
    model: dict[str, object] = {
        "checkpoint": checkpoint,
        "task": "image-classification",
        "head": {"dropout": 0.0},
    }
    if state_dict:
        model.update(format="state-dict", architecture="simple_cnn")
    return {
        "model": model,
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2, "includeLabels": labels},
        "freeze": preset,
        "training": {
            "epochs": epochs,
            "perDeviceBatchSize": 32,
            "learningRate": lr,
            "logEverySteps": 5,
            "seed": 7,
        },
        "distributed": {"procsPerNode": 2},
        "output": {"path": str(out), "keepCheckpoints": 1},
    }


def test_pretrain_transfer_finetune(tmp_path: Path) -> None:
    digits = write_digits(tmp_path / "digits")
    init = write_simple_cnn_init(tmp_path / "init.safetensors")
    low, high = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]

    # 1. pretrain on 0-4
    pre = tmp_path / "pretrain"
    cfg = write_job(
        tmp_path / "pretrain.yaml",
        "pretrain",
        _spec(str(init), low, {"preset": "full"}, pre, digits, epochs=3, lr=3e-3, state_dict=True),
    )
    assert run(cfg) == 0, log_text(cfg)
    m1 = metrics(pre)
    assert m1["label_names"] == low
    assert m1["accuracy"] > 0.9, m1
    assert m1["trainable_parameters"] == m1["total_parameters"]

    # 2. transfer to 5-9: frozen backbone, new head
    tr = tmp_path / "transfer"
    cfg = write_job(
        tmp_path / "transfer.yaml",
        "transfer",
        _spec(
            str(pre / "model"),
            high,
            {"preset": "feature-extraction"},
            tr,
            digits,
            epochs=6,
            lr=1e-2,
        ),
    )
    assert run(cfg) == 0, log_text(cfg)
    m2 = metrics(tr)
    assert m2["label_names"] == high
    assert m2["accuracy"] > 0.5, m2  # chance is 0.2
    assert m2["trainable_parameters"] < 0.01 * m2["total_parameters"]
    assert m2["feature_cache"] is True
    before = load_file(str(pre / "model" / "model.safetensors"))
    after = load_file(str(tr / "model" / "model.safetensors"))
    backbone = [k for k in after if k.startswith("backbone.")]
    assert backbone
    for k in backbone:  # frozen weights and frozen batch-norm statistics are untouched
        assert torch.equal(before[k], after[k]), k

    # 3. fine-tune the top block on 5-9, then (gradual unfreezing at epoch 2) the top two
    ft = tmp_path / "finetune"
    cfg = write_job(
        tmp_path / "finetune.yaml",
        "finetune",
        _spec(
            str(tr / "model"),
            high,
            {"preset": "top-k", "topK": 1, "gradualUnfreezing": {"stages": [{"at": 2, "topK": 2}]}},
            ft,
            digits,
            epochs=4,
            lr=3e-3,
        ),
    )
    assert run(cfg) == 0, log_text(cfg)
    m3 = metrics(ft)
    assert m3["accuracy"] > 0.6, m3
    assert m3["feature_cache"] is False
    tuned = load_file(str(ft / "model" / "model.safetensors"))
    for k in tuned:
        if k.startswith(("backbone.stem.", "backbone.blocks.0.")):
            assert torch.equal(after[k], tuned[k]), k
    for block in ("backbone.blocks.2.", "backbone.blocks.1."):
        changed = [
            k
            for k in tuned
            if k.startswith(block) and k.endswith("weight") and not torch.equal(after[k], tuned[k])
        ]
        assert changed, f"{block} did not train"
    assert "stage=1/1" in log_text(cfg)  # the parameter table logged at the stage change
