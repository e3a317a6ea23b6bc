"""Gradient accumulation, for real, with 2 processes (gloo): DDP and DeepSpeed ZeRO 1/2/3.

A run with ``gradientAccumulationSteps: 4`` and micro-batches of 8 must be the same run as one
with accumulation 1 and batches of 32: after N loop steps the optimizer has stepped exactly N
times, the learning rate is the schedule's value at step N, and the losses and the weights
agree (allclose: the gradient is summed in another order). What is observed is what the
trainer leaves behind, read from outside: the optimizer and scheduler state in its checkpoints
(DeepSpeed's ``global_steps`` and client scheduler, torch's AdamW step count), the exported
weights and ``metrics.json``.

The model is the tiny simple_cnn on 8x8 digits with its backbone frozen (so in eval mode) and
an MLP head without dropout: nothing in a forward pass depends on how the examples are split
into micro-batches (trainable batch norm and dropout would), so the two runs must agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    deep_update,
    log_text,
    metrics,
    run,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

from kubegraft.api.v1alpha1 import SchedulerKind
from kubegraft_trainer.checkpointing import list_checkpoints
from kubegraft_trainer.loop import lr_lambda

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(900)]

MICRO, GAS = 8, 4
MAX_STEPS, WARMUP, LR = 6, 2, 3e-3
CHECK_STEP = 3
"""The checkpoint whose optimizer and schedule are compared: mid-schedule, where a schedule
stepped per micro-batch (4x too often) is visibly elsewhere."""


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("accum-assets")
    return write_digits(root / "digits"), write_simple_cnn_init(root / "init.safetensors", seed=7)


def _spec(
    assets: tuple[Path, Path], out: Path, *, batch: int, gas: int, extra: dict[str, Any]
) -> dict[str, Any]:
    digits, init = assets
    base: dict[str, Any] = {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
            "head": {"dropout": 0.0, "hiddenLayers": [32]},
        },
        # 256 training examples: 128 per process, 16 micro-batches of 8 (4 loop steps) an epoch
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2, "maxSamples": 256},
        "freeze": {"preset": "feature-extraction"},
        "training": {
            "maxSteps": MAX_STEPS,
            "perDeviceBatchSize": batch,
            "gradientAccumulationSteps": gas,
            "learningRate": LR,
            "warmupSteps": WARMUP,
            "scheduler": "linear",
            "checkpointEverySteps": CHECK_STEP,
            "logEverySteps": 1,
            "cacheFrozenFeatures": False,
            "seed": 5,
        },
        "distributed": {"procsPerNode": 2},
        "output": {"path": str(out), "keepCheckpoints": 3, "ephemeral": True},
    }
    return deep_update(base, extra)


def _train(tmp: Path, name: str, spec: dict[str, Any]) -> Path:
    out = tmp / name / "out"
    out.parent.mkdir(parents=True)
    spec = deep_update(spec, {"output": {"path": str(out)}})
    cfg = write_job(tmp / name / "job.yaml", name, spec)
    assert run(cfg, timeout=600) == 0, log_text(cfg)
    return out


def _checkpoint(out: Path, step: int) -> Path:
    found = dict(list_checkpoints(out / "checkpoints"))
    assert step in found, sorted(found)
    return found[step]


def _load(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)


def _optimizer_steps(ckpt: Path, deepspeed: bool) -> tuple[set[int], float]:
    """The optimizer-step counts recorded in a checkpoint, and its scheduler's learning rate."""
    if deepspeed:
        states = [_load(p) for p in ckpt.rglob("*mp_rank_00_model_states.pt")]
        assert states, f"no DeepSpeed model states under {ckpt}"
        counts = {int(s["global_steps"]) for s in states}
        counts |= _adam_steps([_load(p) for p in ckpt.rglob("*optim_states.pt")])
        lr = float(states[0]["lr_scheduler"]["_last_lr"][0])
    else:
        counts = _adam_steps([_load(p) for p in ckpt.rglob("optimizer*.bin")])
        schedulers = [_load(p) for p in ckpt.rglob("scheduler*.bin")]
        assert schedulers, f"no scheduler state under {ckpt}"
        lr = float(schedulers[0]["_last_lr"][0])
    return counts, lr


def _adam_steps(states: list[Any]) -> set[int]:
    """Every AdamW ``step`` count found in (possibly nested, ZeRO-partitioned) optimizer states."""
    found: set[int] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "exp_avg" in x and "step" in x:
                found.add(int(torch.as_tensor(x["step"]).item()))
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(states)
    assert found, "no AdamW state found in the optimizer checkpoint"
    return found


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def _assert_same_run(acc: Path, big: Path, steps: int = MAX_STEPS) -> None:
    a, b = metrics(acc), metrics(big)
    assert a["step"] == b["step"] == steps
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6), (a, b)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6), (a, b)
    wa, wb = _weights(acc), _weights(big)
    assert wa.keys() == wb.keys()
    assert any(not k.startswith("backbone.") for k in wa), sorted(wa)  # the head is there
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-6), k


CASES = {
    "ddp": {},
    "zero1": {"distributed": {"strategy": "deepspeed", "deepspeed": {"zeroStage": 1}}},
    "zero2": {"distributed": {"strategy": "deepspeed", "deepspeed": {"zeroStage": 2}}},
    "zero3": {"distributed": {"strategy": "deepspeed", "deepspeed": {"zeroStage": 3}}},
}


def _assert_steps_and_schedule(out: Path, deepspeed: bool) -> None:
    expected_lr = LR * lr_lambda(SchedulerKind.LINEAR, warmup=WARMUP, total=MAX_STEPS)(CHECK_STEP)
    for step in (CHECK_STEP, MAX_STEPS):
        counts, lr = _optimizer_steps(_checkpoint(out, step), deepspeed)
        assert counts == {step}, (out, step, counts)
        if step == CHECK_STEP:
            assert lr == pytest.approx(expected_lr, rel=1e-9), (out, lr, expected_lr)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, assets: tuple[Path, Path]) -> Path:
    """The run every accumulating run must equal: DDP, batches of 32, no accumulation (one
    run shared by all cases; DeepSpeed's optimizer is torch's AdamW with the same settings)."""
    tmp = tmp_path_factory.mktemp("accum-reference")
    out = _train(tmp, "batch32", _spec(assets, tmp, batch=MICRO * GAS, gas=1, extra={}))
    _assert_steps_and_schedule(out, deepspeed=False)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_accumulation_steps_the_optimizer_once_per_window(
    tmp_path: Path, assets: tuple[Path, Path], reference: Path, case: str
) -> None:
    acc = _train(
        tmp_path,
        f"{case}-gas{GAS}",
        _spec(assets, tmp_path, batch=MICRO, gas=GAS, extra=CASES[case]),
    )
    _assert_steps_and_schedule(acc, deepspeed=case != "ddp")
    _assert_same_run(acc, reference)


def test_short_window_at_epoch_end_averages_over_its_micro_batches(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    """An epoch of 3 micro-batches per process with accumulation 4 (DDP): each epoch is one
    window of 3, whose gradient is the mean over those 3, as one batch of 24 gives."""
    short = {
        "dataset": {"maxSamples": 48},
        "training": {"epochs": 2, "maxSteps": None, "checkpointEverySteps": None},
    }
    acc = _train(tmp_path, "short-gas4", _spec(assets, tmp_path, batch=8, gas=GAS, extra=short))
    big = _train(tmp_path, "short-batch24", _spec(assets, tmp_path, batch=24, gas=1, extra=short))
    for out in (acc, big):
        assert metrics(out)["step"] == 2
        expected_lr = LR * lr_lambda(SchedulerKind.LINEAR, warmup=WARMUP, total=2)(1)
        counts, lr = _optimizer_steps(_checkpoint(out, 1), deepspeed=False)
        assert counts == {1}
        assert lr == pytest.approx(expected_lr, rel=1e-9)
    _assert_same_run(acc, big, steps=2)
