"""The DeepSpeed configuration of a job: a pure function of the spec.

The loop hands this dict to Accelerate's ``DeepSpeedPlugin(hf_ds_config=...)``. Choices made
here, once:

* Every value is explicit (no ``"auto"``): the loop does not hand its data loaders to
  Accelerate, so Accelerate could not fill them in, and an explicit config is what a user
  debugging a run wants to read.
* The optimizer is DeepSpeed's ``AdamW`` with ``torch_adam: true``: torch's own AdamW
  implementation, so no DeepSpeed op has to be compiled (images and CPU machines have no
  compiler; ``DS_BUILD_OPS=0``). With optimizer offload DeepSpeed would insist on its compiled
  CPU Adam, so ``zero_force_ds_cpu_optimizer`` is switched off.
* The learning-rate schedule is the loop's own (warmup + constant/linear/cosine), passed as a
  client scheduler, so ZeRO and DDP runs follow the same curve.
* ``gradient_clipping`` carries ``training.maxGradNorm`` (DeepSpeed clips inside its step).
* Frozen parameters: the loop passes only trainable parameters to DeepSpeed's optimizer (ZeRO
  partitions what it is given and would otherwise wait for gradients that never come).
"""

from __future__ import annotations

from typing import Any

from kubegraft.api.v1alpha1 import FineTuneJobSpec, Precision


def build_deepspeed_config(spec: FineTuneJobSpec, *, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``spec`` run on ``world_size`` processes."""
    t = spec.training
    ds = spec.distributed.deepspeed
    stage = ds.zero_stage if ds is not None else 2
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 50_000_000,
    }
    if stage >= 2:
        zero["allgather_bucket_size"] = 50_000_000
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": 50_000_000,
                "stage3_param_persistence_threshold": 100_000,
                # Gather full weights on save so the exported model is a normal checkpoint.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if ds is not None and ds.offload_optimizer and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds is not None and ds.offload_params and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": t.per_device_batch_size * t.gradient_accumulation_steps * world_size,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": t.precision == Precision.BF16},
        "fp16": {
            "enabled": t.precision == Precision.FP16,
            "loss_scale": 0,
            "initial_scale_power": 16,
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.max_grad_norm is not None:
        config["gradient_clipping"] = t.max_grad_norm
    return config
