"""Checkpoint, resume and preemption with real 2-process DDP runs (gloo).

* A run SIGKILLed mid-training (the whole gang, as when a node dies) and started again with
  the same manifest resumes from its latest complete checkpoint and ends with weights allclose
  to an uninterrupted run with the same seed: model, optimizer, scheduler, RNG (dropout) and
  data position are all restored.
* A SIGTERMed run (what Kubernetes sends before killing a pod; torchrun forwards it) saves a
  checkpoint at the next step boundary and every worker exits with 75 (PREEMPTED).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import (
    kill_gang,
    log_text,
    metrics,
    run,
    start,
    wait_for,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.checkpointing import latest_checkpoint, list_checkpoints, read_trainer_state

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

MAX_STEPS = 60


def _spec(init: Path, digits: Path, out: Path) -> dict[str, object]:
    return {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
            "head": {"dropout": 0.3, "hiddenLayers": [64]},
        },
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2, "imageSize": 16},
        "freeze": {"preset": "full"},
        "training": {
            "maxSteps": MAX_STEPS,
            "perDeviceBatchSize": 16,
            "learningRate": 2e-3,
            "warmupSteps": 5,
            "scheduler": "cosine",
            "checkpointEverySteps": 10,
            "evalEverySteps": 20,
            "logEverySteps": 10,
            "seed": 11,
        },
        "distributed": {"procsPerNode": 2},
        "output": {"path": str(out), "keepCheckpoints": 3},
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume-assets")
    return write_digits(root / "digits"), write_simple_cnn_init(root / "init.safetensors", seed=3)


def _kill_after_checkpoint(cfg: Path, out: Path) -> int:
    proc = start(cfg)
    try:
        saw = wait_for(
            lambda: latest_checkpoint(out / "checkpoints") is not None or proc.poll() is not None,
            240,
            0.02,
        )
        assert saw
        assert proc.poll() is None, "the run ended before its first checkpoint\n" + log_text(cfg)
        kill_gang(proc)  # the whole gang at once, mid-training, as when the node dies
    finally:
        if proc.poll() is None:
            kill_gang(proc)
    return proc.returncode


def test_sigkilled_run_resumes_to_the_same_weights(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    digits, init = assets
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "interrupted"
    ref_cfg = write_job(tmp_path / "ref.yaml", "ref", _spec(init, digits, ref_out))
    cfg = write_job(tmp_path / "job.yaml", "job", _spec(init, digits, out))

    assert run(ref_cfg) == 0, log_text(ref_cfg)

    _kill_after_checkpoint(cfg, out)
    assert not (out / "metrics.json").exists()
    resumed_at = latest_checkpoint(out / "checkpoints")
    assert resumed_at is not None
    step = read_trainer_state(resumed_at)["step"]
    assert 0 < step < MAX_STEPS

    assert run(cfg) == 0, log_text(cfg)
    assert f"resumed from {resumed_at}" in log_text(cfg)
    assert metrics(out)["step"] == MAX_STEPS

    ref = load_file(str(ref_out / "model" / "model.safetensors"))
    got = load_file(str(out / "model" / "model.safetensors"))
    assert ref.keys() == got.keys()
    init_weights = load_file(str(init))
    assert not torch.equal(ref["backbone.stem.0.weight"], init_weights["stem.0.weight"]), (
        "nothing trained"
    )
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), rtol=1e-4, atol=1e-6), k
    assert metrics(out)["accuracy"] == pytest.approx(metrics(ref_out)["accuracy"], abs=1e-6)
    # keep last 3 (+ best): older ones are pruned, none half-written is left
    steps = [s for s, _ in list_checkpoints(out / "checkpoints")]
    assert MAX_STEPS in steps
    assert len(steps) <= 4
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_sigterm_saves_a_checkpoint_and_exits_preempted(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    digits, init = assets
    out = tmp_path / "out"
    spec = _spec(init, digits, out)
    spec["training"] = {**spec["training"], "maxSteps": 5000, "checkpointEverySteps": 1000}  # type: ignore[dict-item]
    cfg = write_job(tmp_path / "job.yaml", "job", spec)
    progress = out / "progress.json"
    proc = start(cfg, env={"KUBEGRAFT_PROGRESS_FILE": str(progress)})
    try:
        assert wait_for(
            lambda: (
                proc.poll() is not None
                or (
                    progress.exists()
                    and json.loads(progress.read_text() or "{}").get("step", 0) >= 20
                )
            ),
            240,
            0.1,
        ), log_text(cfg)
        assert proc.poll() is None, log_text(cfg)
        proc.send_signal(signal.SIGTERM)  # to torchrun, as the kubelet does to the pod's PID 1
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_gang(proc)
    saved = latest_checkpoint(out / "checkpoints")
    assert saved is not None, log_text(cfg)
    step = read_trainer_state(saved)["step"]
    assert 20 <= step < 1000  # saved at the SIGTERM, not at a scheduled interval
    for rank in (0, 1):
        status = json.loads((out / "status" / f"rank-{rank}.json").read_text())
        assert status["exitCode"] == ExitCode.PREEMPTED, status
        assert status["reason"] == "Preempted"
    assert not (out / "metrics.json").exists()
