"""Rank 0's heartbeats keep coming during a long phase that reports nothing else.

A real trainer (torchrun, one process) caching the frozen features of 1,797 images at 64x64
(a minute or more on a loaded CPU), with ``progressIntervalSeconds: 1`` and ``logEverySteps``
far away: before heartbeats, the progress file was written once when the phase began and then
not again until the first logged step, which is what the operator took for a stall.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import (
    kill_gang,
    log_text,
    start,
    wait_for,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


def test_heartbeats_arrive_during_feature_caching(tmp_path: Path) -> None:
    digits = write_digits(tmp_path / "digits")
    init = write_simple_cnn_init(tmp_path / "init.safetensors")
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "job",
        {
            "model": {
                "checkpoint": str(init),
                "task": "image-classification",
                "format": "state-dict",
                "architecture": "simple_cnn",
            },
            "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.1, "imageSize": 64},
            "freeze": {"preset": "feature-extraction"},
            "training": {"maxSteps": 1000, "logEverySteps": 1000, "perDeviceBatchSize": 16},
            "distributed": {"procsPerNode": 1},
            "output": {"path": str(out), "ephemeral": True},
            "runPolicy": {"progressIntervalSeconds": 1},
        },
    )
    progress = out / "progress.json"
    seen: list[dict[str, Any]] = []

    def caching_beats() -> set[str]:
        return {str(r["time"]) for r in seen if r.get("phase") == "caching"}

    def poll() -> bool:
        try:
            report = json.loads(progress.read_text())
        except (OSError, ValueError):
            return proc.poll() is not None
        if not seen or seen[-1] != report:
            seen.append(report)
        return proc.poll() is not None or len(caching_beats()) >= 4

    proc = start(cfg, nproc=1, env={"KUBEGRAFT_PROGRESS_FILE": str(progress)})
    try:
        assert wait_for(poll, 400, 0.05)
        assert proc.poll() is None, log_text(cfg)
    finally:
        kill_gang(proc)
    assert len(caching_beats()) >= 4, seen
    # the same phase and step, each with its own time: heartbeats, not new progress
    caching = [r for r in seen if r.get("phase") == "caching"]
    assert {r["step"] for r in caching} == {0}
    assert "cached frozen features" not in log_text(cfg)  # all of it inside one long phase
