"""The node supervisor turns torchrun's exit (always 1 on failure) into the workers' own code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubegraft.exitcodes import ExitCode, node_exit_code

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("launcher", "workers", "expected"),
    [
        (0, [], 0),
        (0, [78], 0),  # torchrun succeeded: a stale record cannot fail the node
        (1, [1, 78], 78),  # a configuration error wins: the job must fail, not restart
        (1, [75, 1], 75),
        (1, [], 1),
        (137, [], 137),
        (-9, [], 1),
    ],
)
def test_node_exit_code(launcher: int, workers: list[int], expected: int) -> None:
    assert node_exit_code(launcher, workers) == expected


def _run_node(
    status_dir: Path, worker_code: int, launcher_code: int
) -> subprocess.CompletedProcess[str]:
    # A stand-in for torchrun: one "worker" records its code, then the launcher exits as
    # torchrun does (1 for any failed worker). The supervisor under test is the real module.
    record = {"rank": 0, "exitCode": worker_code, "message": "bad field"}
    script = (
        "import pathlib, sys; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True);"
        f"(d / 'rank-0.json').write_text({json.dumps(record)!r}); sys.exit({launcher_code})"
    )
    return subprocess.run(
        [sys.executable, "-m", "kubegraft_trainer.node", f"--status-dir={status_dir}", "--",
         sys.executable, "-c", script, str(status_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_supervisor_reports_configuration_error(tmp_path: Path) -> None:
    done = _run_node(tmp_path / "status", ExitCode.CONFIG_ERROR, 1)
    assert done.returncode == ExitCode.CONFIG_ERROR, done.stderr
    assert "bad field" in done.stderr


def test_supervisor_ignores_records_of_an_earlier_run(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.mkdir()
    old = status / "rank-1.json"
    old.write_text(json.dumps({"rank": 1, "exitCode": 78}))
    import os

    os.utime(old, (1_000_000_000, 1_000_000_000))
    done = _run_node(status, ExitCode.FAILURE, 1)
    assert done.returncode == ExitCode.FAILURE, done.stderr


# A stand-in for torchrun's stop: the first SIGTERM starts a graceful stop (the workers save,
# here: until the test creates `release`), a second one ends the wait at once with exit 1, as
# torchrun's signal handler does inside its close().
GRACEFUL_LAUNCHER = """
import json, pathlib, signal, sys, time
status, ready = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
got = []
def on_term(signum, frame):
    got.append(signum)
    if len(got) > 1:
        sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
ready.write_text("up")
while not got:
    time.sleep(0.01)
(ready.parent / "stopping").write_text("saving")
while not (ready.parent / "release").exists():
    time.sleep(0.01)
status.mkdir(parents=True, exist_ok=True)
(status / "rank-0.json").write_text(json.dumps({"rank": 0, "exitCode": 75, "message": "saved"}))
sys.exit(1)
"""


def test_a_second_sigterm_does_not_cut_the_checkpoint_short(tmp_path: Path) -> None:
    """The CI failure of 2026-12-01 (test_kueue_preemption): the pod's SIGTERM reached torchrun
    twice, it stopped waiting for rank 0's checkpoint and the node exited 1, not 75."""
    import signal
    import time

    status, ready = tmp_path / "status", tmp_path / "ready"
    node = subprocess.Popen(
        [sys.executable, "-m", "kubegraft_trainer.node", f"--status-dir={status}", "--",
         sys.executable, "-c", GRACEFUL_LAUNCHER, str(status), str(ready)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def until(what: str, holds: object) -> None:
        deadline = time.monotonic() + 60
        while not holds() and node.poll() is None:  # type: ignore[operator]
            assert time.monotonic() < deadline, what
            time.sleep(0.01)

    until("the launcher up", ready.exists)
    node.send_signal(signal.SIGTERM)
    until("the graceful stop begun", (tmp_path / "stopping").exists)
    node.send_signal(signal.SIGTERM)
    assert node.stderr is not None
    line = node.stderr.readline()  # the notice, or EOF once the node exited
    assert "SIGTERM again while stopping: not passed on" in line, line
    (tmp_path / "release").write_text("go")
    _, err = node.communicate(timeout=60)
    assert node.returncode == ExitCode.PREEMPTED, line + err
