"""The node supervisor: the process a worker pod (or ``kubegraft run``) starts.

It runs torchrun for this node and exits with the trainer's own exit code. torchrun turns
every failed worker into exit code 1, so without this the operator could not tell a
configuration error (fail now) from a lost peer (restart the gang). Each worker records its
code in ``<output>/status/rank-<N>.json`` (:func:`kubegraft_trainer.entrypoint.write_status`);
this supervisor reads the records written during its run and exits with the most telling one
(:func:`kubegraft.exitcodes.node_exit_code`), copying its message to the container's
termination log, where ``kubectl describe pod`` and the operator see it.

SIGTERM and SIGINT are passed on to torchrun, which passes them to the workers, which save a
checkpoint and exit with the preemption code. Only the first is passed on: torchrun takes a
second signal while it waits for its workers to stop as a reason to stop waiting, exits 1 at
once, and with this process (a container's PID 1) gone the container ends and takes rank 0
down in the middle of its checkpoint. What ends a stop that hangs is the SIGKILL after the
grace period. This module imports neither torch nor the trainer, so it starts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from kubegraft.exitcodes import node_exit_code

TERMINATION_LOG = "/dev/termination-log"


def read_worker_records(status_dir: Path, since: float) -> list[dict[str, Any]]:
    """Worker status records written at or after ``since`` (older ones are an earlier run's)."""
    records = []
    for f in sorted(status_dir.glob("rank-*.json")):
        try:
            if f.stat().st_mtime < since:
                continue
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and isinstance(rec.get("exitCode"), int):
            records.append(rec)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubegraft_trainer.node", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--status-dir", required=True, help="where the workers write rank-N.json")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the torchrun command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    status_dir = Path(args.status_dir)
    # File times have coarse resolution on some file systems; a second of slack is harmless
    # because a record from a run that ended a second before this one cannot exist.
    started = time.time() - 1.0
    proc = subprocess.Popen(command)

    stopping: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if stopping:
            name = signal.Signals(signum).name
            print(
                f"kubegraft node: {name} again while stopping: not passed on (the workers are "
                "saving their checkpoint; SIGKILL ends it at once)",
                file=sys.stderr,
                flush=True,
            )
            return
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    launcher_code = proc.wait()
    records = read_worker_records(status_dir, started)
    code = node_exit_code(launcher_code, [int(r["exitCode"]) for r in records])
    if code != 0:
        telling = next((r for r in records if r["exitCode"] == code), None)
        message = json.dumps(telling) if telling else f"torchrun exited with {launcher_code}"
        print(f"kubegraft node: exit {code}: {message}", file=sys.stderr)
        if os.access(TERMINATION_LOG, os.W_OK):
            with contextlib.suppress(OSError):
                Path(TERMINATION_LOG).write_text(message)
    return code


if __name__ == "__main__":
    sys.exit(main())
