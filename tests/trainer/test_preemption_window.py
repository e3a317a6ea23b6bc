"""SIGTERM is honoured in the long phases, not only between optimizer steps.

Real 2-process DDP runs (gloo) started as the operator starts them (the node supervisor
around torchrun, :func:`kubegraft.launch.build_launch`), with a 60 s grace period, so torchrun
is told ``--shutdown-timeout=54``: a worker still running 54 s after the SIGTERM is SIGKILLed
by torchrun, writes no status record and the node exits 1, not 75. Exit 75 from the node is
therefore proof that every worker finished inside the window.

* During feature caching (before any step of the run) there is nothing to save: every rank
  stops at the same cached batch and exits 75 without a checkpoint and without training.
* During an evaluation after some steps, those steps are saved first (a collective checkpoint
  at exactly that step), then every rank exits 75; no further step is trained.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import (
    kill_gang,
    launch_argv,
    log_text,
    start,
    wait_for,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.checkpointing import latest_checkpoint, read_trainer_state

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

GRACE = 60


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preempt-assets")
    return write_digits(root / "digits"), write_simple_cnn_init(root / "init.safetensors", seed=5)


def _spec(
    init: Path, digits: Path, out: Path, *, preset: str, image_size: int, **training: Any
) -> dict[str, Any]:
    return {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
        },
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.5, "imageSize": image_size},
        "freeze": {"preset": preset},
        "training": {
            "maxSteps": 5000,
            "perDeviceBatchSize": 16,
            "learningRate": 1e-3,
            "checkpointEverySteps": 1000,
            "logEverySteps": 1,
            "seed": 3,
            **training,
        },
        "distributed": {"procsPerNode": 2},
        "output": {"path": str(out), "ephemeral": True},
        "runPolicy": {"terminationGracePeriodSeconds": GRACE},
    }


def _progress(path: Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value


def _sigterm_when(
    cfg: Path, out: Path, ready: Any, timeout: float = 300
) -> tuple[int, dict[str, Any], float]:
    """Start the run, SIGTERM the node supervisor (the pod's PID 1) once ``ready(progress)``;
    returns the node's exit code, the progress seen at the signal and the seconds to exit."""
    progress = out / "progress.json"
    proc = start(cfg, env={"KUBEGRAFT_PROGRESS_FILE": str(progress)})
    try:
        assert wait_for(
            lambda: proc.poll() is not None or ready(_progress(progress)), timeout, 0.02
        ), log_text(cfg)
        seen = _progress(progress)
        assert proc.poll() is None, log_text(cfg)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE + 60)
        took = time.monotonic() - signalled
    except subprocess.TimeoutExpired:
        kill_gang(proc)
        raise
    finally:
        if proc.poll() is None:
            kill_gang(proc)
    print(f"exit {code} {took:.1f}s after SIGTERM (phase {seen.get('phase')})")
    return code, seen, took


def _statuses(out: Path) -> list[dict[str, Any]]:
    return [json.loads((out / "status" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def test_launch_gives_torchrun_the_grace_period(tmp_path: Path, assets: tuple[Path, Path]) -> None:
    digits, init = assets
    spec = _spec(init, digits, tmp_path / "o", preset="full", image_size=16)
    argv, _ = launch_argv(write_job(tmp_path / "j.yaml", "j", spec), 2)
    assert "--shutdown-timeout=54" in argv


def test_sigterm_during_feature_caching_exits_75_at_once(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    digits, init = assets
    out = tmp_path / "out"
    # A larger image makes the frozen backbone's pass over 1,797 images take a while.
    spec = _spec(init, digits, out, preset="feature-extraction", image_size=64)
    cfg = write_job(tmp_path / "job.yaml", "job", spec)
    code, seen, _took = _sigterm_when(cfg, out, lambda p: p.get("phase") == "caching")
    assert seen["step"] == 0
    assert code == ExitCode.PREEMPTED, log_text(cfg)
    for status in _statuses(out):
        assert status["exitCode"] == ExitCode.PREEMPTED, status
        assert "while caching features: nothing new to save" in status["message"], status
    # nothing trained, so nothing saved: the run did not wait for the cache to finish
    assert latest_checkpoint(out / "checkpoints") is None, log_text(cfg)
    assert _progress(out / "progress.json").get("step", 0) == 0
    assert "cached frozen features" not in log_text(cfg)


def test_sigterm_during_evaluation_saves_the_steps_and_exits_75(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    digits, init = assets
    out = tmp_path / "out"
    # No cache (the whole model trains) and ~900 validation images at 48x48: a slow evaluation.
    spec = _spec(init, digits, out, preset="full", image_size=48, evalEverySteps=3)
    cfg = write_job(tmp_path / "job.yaml", "job", spec)
    code, seen, _took = _sigterm_when(
        cfg, out, lambda p: p.get("phase") == "evaluating" and p.get("step", 0) >= 3
    )
    assert code == ExitCode.PREEMPTED, log_text(cfg)
    step = seen["step"]
    saved = latest_checkpoint(out / "checkpoints")
    assert saved is not None, log_text(cfg)
    # saved at the step the evaluation was cut at: no step trained after the SIGTERM
    assert read_trainer_state(saved)["step"] == step, log_text(cfg)
    for status in _statuses(out):
        assert status["exitCode"] == ExitCode.PREEMPTED, status
        assert f"while evaluating: checkpoint saved at step {step}" in status["message"], status
    assert not (out / "metrics.json").exists()
