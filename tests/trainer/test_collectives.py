"""Every collective the trainer issues uses the process group's device, at world size 1 and 2.

NCCL takes only CUDA tensors, and there is no GPU here: the probe (``collective_probe.py``)
runs the real trainer under torchrun with gloo, makes the trainer's one device rule answer a
device that is not the CPU (PyTorch's CPU-backed lazy device), and fails any collective the
trainer issues with a tensor elsewhere, which is what NCCL would do with a CPU tensor. The
data still flows (through gloo on CPU copies), so the run completes and its results are real.

Each run must pass through every collective path: the logged loss (``loop.run``), evaluation
(``evaluation.evaluate``), the causal-LM evaluation (``loop._evaluate_lm``), the frozen-feature
cache (``feature_cache.compute_features``) and the preemption flag (``signals.agreed``); all of
them issued by the helpers of ``kubegraft_trainer.collectives``. World size 1 runs through
torchrun too: its process group is real and its collectives must run, not be skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from collective_probe import read_reports, run_probe
from trainer_helpers import (
    log_text,
    metrics,
    sentences,
    tiny_gpt2,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

CLASSIFICATION_SITES = {
    "loop.run",
    "evaluation.evaluate",
    "feature_cache.compute_features",
    "signals.agreed",
}
CAUSAL_LM_SITES = {"loop.run", "loop._evaluate_lm", "signals.agreed"}


def _classification(tmp: Path) -> dict[str, Any]:
    digits = write_digits(tmp / "digits")
    init = write_simple_cnn_init(tmp / "init.safetensors", seed=1)
    return {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
        },
        "dataset": {
            "train": {"uri": str(digits)},
            "validationSplit": 0.2,
            "maxSamples": 128,
            "maxEvalSamples": 64,
        },
        # only the head trains: the frozen features are cached (an all-gather per table)
        "freeze": {"preset": "feature-extraction"},
        "training": {
            "maxSteps": 4,
            "perDeviceBatchSize": 16,
            "logEverySteps": 1,
            "evalEverySteps": 2,
            "cacheFrozenFeatures": True,
        },
    }


def _causal_lm(tmp: Path) -> dict[str, Any]:
    return {
        "model": {"checkpoint": str(tiny_gpt2(tmp / "gpt2")), "task": "causal-lm"},
        "dataset": {
            "train": {"uri": str(sentences(tmp / "text.jsonl", n=96))},
            "validationSplit": 0.2,
            "maxLength": 16,
        },
        "freeze": {"preset": "full"},
        "training": {
            "maxSteps": 4,
            "perDeviceBatchSize": 8,
            "logEverySteps": 1,
            "evalEverySteps": 2,
            "scheduler": "constant",
        },
    }


def check_reports(reports: list[dict[str, Any]], *, sites: set[str], expected: str) -> None:
    """Shared with the GPU tier: no violation, the right device, every path, the helpers."""
    for r in reports:
        assert r["violations"] == [], r["violations"]
        assert r["exit_code"] == 0, r
        assert r["expected"] == [expected], r["expected"]
        calls = r["calls"]
        assert {c["site"] for c in calls} >= sites, (sites, {c["site"] for c in calls})
        for c in calls:
            assert c["issuer"].startswith("collectives."), c  # no collective issued elsewhere
            assert c["devices"], c
            assert set(c["devices"]) == {expected}, c


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_every_collective_is_on_the_process_group_device(
    tmp_path: Path, task: str, nproc: int
) -> None:
    spec = _classification(tmp_path) if task == "classification" else _causal_lm(tmp_path)
    out = tmp_path / "out"
    spec["distributed"] = {"procsPerNode": nproc}
    spec["output"] = {"path": str(out), "keepCheckpoints": 1, "ephemeral": True}
    cfg = write_job(tmp_path / "job.yaml", f"probe-{task}-{nproc}", spec)
    report = tmp_path / "report"
    rc = run_probe(cfg, nproc, report, mode="lazy", timeout=500)
    reports = read_reports(report, nproc)
    assert [r["violations"] for r in reports] == [[]] * nproc, log_text(cfg)[-4000:]
    assert rc == 0, log_text(cfg)[-4000:]
    check_reports(
        reports,
        sites=CLASSIFICATION_SITES if task == "classification" else CAUSAL_LM_SITES,
        expected="lazy:0",
    )
    m = metrics(out)
    assert m["processes"] == nproc
    assert m["step"] == 4
    if task == "classification":
        assert m["feature_cache"] is True
        assert m["eval"]["validation"]["samples"] == 64  # every example gathered once
