"""GPU runs of the trainer: bf16 DDP over NCCL, DeepSpeed ZeRO-2 and ZeRO-3 with a frozen
prefix, and gradient checkpointing, on the real MiniLM and kaomoji data.

Marked ``gpu``: CI (no GPU) deselects them with ``-m "not gpu"``; ``bench/gpu_check.sh`` runs
them on one NVIDIA H100 together with a throughput/MFU measurement. Each run uses one process
per visible GPU (NCCL allows one rank per device).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from trainer_helpers import KAOMOJI, MINILM, log_text, metrics, run, write_job

torch = pytest.importorskip("torch")

# Seconds one training run may take before its whole gang is killed (the test then fails with
# TimeoutExpired); pytest's own timeout is a minute above it, so the gang is always killed
# first. A leased machine with a few minutes in all sets KUBEGRAFT_GPU_RUN_TIMEOUT lower.
RUN_TIMEOUT = float(os.environ.get("KUBEGRAFT_GPU_RUN_TIMEOUT", "800"))

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(RUN_TIMEOUT + 60),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

LABELS = ["angry", "happy", "sad", "sleepy"]


def _gpus() -> int:
    return max(1, torch.cuda.device_count())


def _spec(
    out: Path,
    *,
    freeze: dict[str, object],
    distributed: dict[str, object],
    gradient_checkpointing: bool = False,
    samples: int = 4096,
) -> dict[str, object]:
    return {
        "model": {"checkpoint": MINILM, "task": "sequence-classification"},
        "dataset": {
            "train": {"uri": KAOMOJI},
            "textField": "text",
            "labelField": "category",
            "includeLabels": LABELS,
            "validationSplit": 0.1,
            "maxSamples": samples,
            "maxEvalSamples": 512,
            "maxLength": 64,
        },
        "freeze": freeze,
        "training": {
            "epochs": 2,
            "perDeviceBatchSize": 64,
            "learningRate": 1e-4,
            "warmupRatio": 0.1,
            "precision": "bf16",
            "gradientCheckpointing": gradient_checkpointing,
            "logEverySteps": 10,
            "cacheFrozenFeatures": False,
        },
        "distributed": {"procsPerNode": _gpus(), "backend": "nccl", **distributed},
        "output": {"path": str(out), "ephemeral": True, "keepCheckpoints": 1},
    }


def _check(out: Path, cfg: Path) -> dict[str, object]:
    m = metrics(out)
    assert m["processes"] == _gpus()
    assert m["accuracy"] > m["chance_accuracy"] + 0.15, m  # type: ignore[operator]
    assert "cuda" in log_text(cfg) or m["samples_per_second"] > 0
    return m


def test_bf16_ddp_nccl(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml", "gpu-ddp", _spec(out, freeze={"preset": "full"}, distributed={})
    )
    assert run(cfg, nproc=_gpus(), timeout=RUN_TIMEOUT) == 0, log_text(cfg)
    m = _check(out, cfg)
    assert m["strategy"] == "ddp"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_with_frozen_prefix(tmp_path: Path, stage: int) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        f"gpu-zero{stage}",
        _spec(
            out,
            freeze={"preset": "top-k", "topK": 2},
            distributed={"strategy": "deepspeed", "deepspeed": {"zeroStage": stage}},
        ),
    )
    assert run(cfg, nproc=_gpus(), timeout=RUN_TIMEOUT) == 0, log_text(cfg)
    m = _check(out, cfg)
    assert m["strategy"] == "deepspeed"
    assert 0 < m["trainable_parameters"] < m["total_parameters"]  # type: ignore[operator]


def test_gradient_checkpointing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "gpu-ckpt",
        _spec(out, freeze={"preset": "full"}, distributed={}, gradient_checkpointing=True),
    )
    assert run(cfg, nproc=_gpus(), timeout=RUN_TIMEOUT) == 0, log_text(cfg)
    _check(out, cfg)
