"""The ``kubegraft compare`` command line the compare tests run (trainer, integration, e2e)."""

from __future__ import annotations

import sys
from pathlib import Path


def compare_argv(manifest: Path, output: Path, *args: str) -> list[str]:
    """``kubegraft compare MANIFEST --output OUTPUT ARGS...`` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "kubegraft.cli",
        "compare",
        str(manifest),
        "--output",
        str(output),
        *args,
    ]
