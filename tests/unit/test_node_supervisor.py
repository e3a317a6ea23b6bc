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
