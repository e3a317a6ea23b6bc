"""The DeepSpeed config generated from a spec, per ZeRO stage (pure; no DeepSpeed import)."""

from __future__ import annotations

from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft_trainer.deepspeed_config import build_deepspeed_config

pytestmark = pytest.mark.unit


def _spec(**deepspeed: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": "/ckpt", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/data.jsonl"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
            "training": {
                "epochs": 1,
                "perDeviceBatchSize": 8,
                "gradientAccumulationSteps": 4,
                "learningRate": 3e-4,
                "weightDecay": 0.01,
                "precision": "bf16",
                "maxGradNorm": 0.5,
            },
            "distributed": {"procsPerNode": 2, "strategy": "deepspeed", "deepspeed": deepspeed},
        }
    )


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage(stage: int) -> None:
    cfg = build_deepspeed_config(_spec(zeroStage=stage), world_size=4)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert cfg["train_micro_batch_size_per_gpu"] == 8
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["train_batch_size"] == 8 * 4 * 4  # micro x accumulation x world
    assert cfg["optimizer"] == {
        "type": "AdamW",
        "params": {
            "lr": 3e-4,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": 0.01,
            "torch_adam": True,
        },
    }
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["fp16"]["enabled"] is False
    assert ("stage3_gather_16bit_weights_on_model_save" in zero) == (stage == 3)
    assert "offload_optimizer" not in zero
    assert "offload_param" not in zero
    assert "auto" not in repr(cfg)  # every value explicit: nothing left for Accelerate to guess


def test_offload() -> None:
    cfg = build_deepspeed_config(
        _spec(zeroStage=3, offloadOptimizer=True, offloadParams=True), world_size=1
    )
    zero = cfg["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    # torch's AdamW on offloaded state instead of DeepSpeed's compiled CPU Adam
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    z2 = build_deepspeed_config(_spec(zeroStage=2, offloadOptimizer=True), world_size=1)[
        "zero_optimization"
    ]
    assert "offload_optimizer" in z2
    assert "offload_param" not in z2


def test_defaults_without_deepspeed_section() -> None:
    spec = _spec()
    spec.distributed.deepspeed = None
    spec.training.max_grad_norm = None
    cfg = build_deepspeed_config(spec, world_size=2)
    assert cfg["zero_optimization"]["stage"] == 2
    assert "gradient_clipping" not in cfg
