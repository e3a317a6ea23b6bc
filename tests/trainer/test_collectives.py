"""Every collective the trainer issues uses the process group's device, at world size 1 and 2.

NCCL takes only CUDA tensors, and there is no GPU here: the probe (``collective_probe.py``)
runs the real trainer under torchrun with gloo, makes the trainer's one device rule answer a
device that is not the CPU (PyTorch's CPU-backed lazy device), and fails any collective the
trainer issues with a tensor elsewhere, which is what NCCL would do with a CPU tensor. The
data still flows (through gloo on CPU copies), so the run completes and its results are real.

Each run must pass through every collective path: the logging window (loss, samples, tokens
and GPU memory over all ranks, ``loop._reduce_window``), the checkpoint agreement
(``checkpointing.ranks_agreeing``), evaluation (``evaluation.evaluate``), the causal-LM
evaluation (``loop._evaluate_lm``), the frozen-feature cache (``feature_cache.compute_features``)
and the preemption flag (``signals.agreed``); all of them issued by the helpers of
``kubegraft_trainer.collectives``. World size 1 runs through torchrun too: its process group
is real and its collectives must run, not be skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from collective_probe import (
    CAUSAL_LM_SITES,
    CLASSIFICATION_SITES,
    causal_lm_spec,
    check_reports,
    classification_spec,
    read_reports,
    run_probe,
)
from trainer_helpers import log_text, metrics, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_every_collective_is_on_the_process_group_device(
    tmp_path: Path, task: str, nproc: int
) -> None:
    spec = classification_spec(tmp_path) if task == "classification" else causal_lm_spec(tmp_path)
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
