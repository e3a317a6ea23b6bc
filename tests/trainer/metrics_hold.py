"""The real trainer, with rank 0 kept alive after training so a test can scrape its /metrics.

torchrun starts this file in place of ``-m kubegraft_trainer`` (``probe_argv``). It runs the
trainer's own entrypoint unchanged; when that returns, rank 0 writes its exit code to
``<KUBEGRAFT_HOLD_DIR>/finished`` and waits for ``<KUBEGRAFT_HOLD_DIR>/release`` before it
exits, so the metrics endpoint (a daemon thread of the process) still serves the final values.
The test scrapes between the two files: no race with the end of the run, no sleep.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ENV_HOLD_DIR = "KUBEGRAFT_HOLD_DIR"
HOLD_LIMIT_S = 600.0
"""Never hold longer than this (a test that died without releasing must not leave a process)."""


def _main() -> int:
    from kubegraft_trainer.entrypoint import main

    code = main(sys.argv[1:])
    hold = Path(os.environ[ENV_HOLD_DIR])
    if int(os.environ.get("RANK", "0")) == 0:
        (hold / "finished.tmp").write_text(str(code))
        (hold / "finished.tmp").rename(hold / "finished")
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not (hold / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    return code


if __name__ == "__main__":
    sys.exit(_main())
