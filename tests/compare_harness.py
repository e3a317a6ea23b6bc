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


def compare_cluster_argv(
    manifest: Path, output: Path, kubeconfig: Path, namespace: str, *args: str
) -> list[str]:
    """``kubegraft compare ... --cluster`` against the test's control plane and namespace."""
    return compare_argv(
        manifest,
        output,
        "--cluster",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        namespace,
        *args,
    )
