"""How many intra-op threads each training process gets: its share of the CPUs it really has.

One thread per process (the old default) leaves a multi-core machine mostly idle under
``kubegraft run --nproc 1`` (MiniLM trained at 30 samples/s where two threads did 66); all
cores per process oversubscribes the machine as soon as several processes share it. The share
is ``floor(cpus / processes per node)``, at least 1, where ``cpus`` is, in order:

1. the container's CPU limit: cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or ``"max ..."``),
   or cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: no limit);
2. otherwise the CPUs this process may run on (``os.sched_getaffinity``), which is what
   ``taskset``, cpusets and the kubelet's static CPU manager restrict, and never more than
   ``os.cpu_count()``.

The parsing functions are pure (text in, number out); :func:`available_cpus` is the one that
reads the machine. The operator renders pods with the share from the pod's CPU limit
(:func:`parse_cpu_quantity`), so it never reads its own cgroup for someone else's pod; the
trainer computes the share itself when the launch did not fix it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
ENV_THREADS = "KUBEGRAFT_THREADS_PER_PROCESS"
"""The thread count the launch fixed (the spec's, or the share of the pod's CPU limit)."""


def quota_cpus(quota_us: int, period_us: int) -> float | None:
    """CPUs allowed by a CFS quota: ``quota / period``; None when unlimited (quota <= 0)."""
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by cgroup v2 ``cpu.max`` (``"200000 100000"``, ``"max 100000"``)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    period = int(parts[1]) if len(parts) > 1 else 100_000
    return quota_cpus(int(parts[0]), period)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU limit of the cgroup under ``root`` (v2 first, then v1); None without one."""
    try:
        return parse_cpu_max((root / "cpu.max").read_text())
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            period = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_cpus(quota, period)
    return None


def affinity_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def available_cpus(root: Path = CGROUP_ROOT) -> float:
    """The CPUs this process really has: the cgroup limit, capped by the affinity set."""
    cores = affinity_cpus()
    limit = cgroup_cpu_limit(root)
    return cores if limit is None else min(float(cores), limit)


def threads_per_process(cpus: float, procs_per_node: int) -> int:
    """Each process's share of ``cpus``: ``floor(cpus / procs_per_node)``, at least 1 (a
    limit of 1.5 CPUs for one process gives 1 thread: a second would be throttled)."""
    if procs_per_node < 1:
        raise ValueError(f"procs_per_node must be >= 1, not {procs_per_node}")
    # A small epsilon so that 2000m / 2 is 1 and not 0.9999...
    return max(1, math.floor(cpus / procs_per_node + 1e-9))


def parse_cpu_quantity(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity in CPUs: ``"2"`` -> 2.0, ``"500m"`` -> 0.5, ``1.5`` -> 1.5."""
    text = str(quantity).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def process_threads(
    env: Mapping[str, str], *, spec_threads: int | None, cpus: float, procs_per_node: int
) -> int:
    """The threads a trainer process uses: the spec's ``threadsPerProcess``, else what the
    launch (or the user, through ``OMP_NUM_THREADS``) fixed in ``env``, else its share of
    ``cpus`` among the ``procs_per_node`` processes of its node."""
    if spec_threads is not None:
        return spec_threads
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = env.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return threads_per_process(cpus, procs_per_node)
