"""Where the control plane's executables come from.

The binaries are built from the Go module proxy by ``hack/build-binaries.sh`` into a cache
outside the repository (``~/.cache/kubegraft/bin/<key>/``); the script is a no-op on a cache
hit and prints the directory on its last stdout line. ``KUBEGRAFT_BIN_DIR`` overrides the lookup
(the test command exports it once, so pytest does not run the script again).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
"""Executables a bin dir must hold; it also holds ``kwok-kustomize/`` (Stage CRD and stages)."""

ENV_BIN_DIR = "KUBEGRAFT_BIN_DIR"


class BinariesError(RuntimeError):
    """The binaries are missing and cannot be built here."""


def repo_root() -> Path:
    """The source checkout this package lives in (the project is installed editable)."""
    return Path(__file__).resolve().parents[2]


def check_bin_dir(bin_dir: Path) -> Path:
    """Return ``bin_dir`` if it holds every required executable and the kwok manifests."""
    missing = [b for b in REQUIRED if not os.access(bin_dir / b, os.X_OK)]
    if not (bin_dir / "kwok-kustomize").is_dir():
        missing.append("kwok-kustomize/")
    if missing:
        raise BinariesError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


def find_bin_dir() -> Path:
    """The directory of built binaries: ``$KUBEGRAFT_BIN_DIR``, else build (or reuse) them.

    A cold build takes 20-35 minutes on 2 cores; its progress goes to stderr.
    """
    env = os.environ.get(ENV_BIN_DIR)
    if env:
        return check_bin_dir(Path(env))
    script = repo_root() / "hack" / "build-binaries.sh"
    if not script.exists():
        raise BinariesError(f"set {ENV_BIN_DIR}: no {script} to build the binaries with")
    out = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise BinariesError(f"{script} failed with exit code {out.returncode}")
    return check_bin_dir(Path(lines[-1]))
