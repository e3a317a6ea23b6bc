"""Keeps the operator benchmarks working on the session's control plane:

- ``bench/operator_scale.py --quick --floor --quiet 2 --steady 2,3`` (10 jobs of 4 nodes with
  the real operator, 2 s with them resident and nothing arriving, then 6 more at 2/s with the
  10 resident; the same with the pods-only floor controller);
- ``bench/foreign_objects.py`` with 1000 ConfigMaps that are not the operator's.

They check that each benchmark runs and measures something sensible; timings are not judged
here (the machine is shared), only effects far larger than the noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from operator_harness import repo_root

from kubegraft.devcluster.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def run_bench(cluster: Cluster, tmp: Path, script: str, *opts: str) -> tuple[str, Any]:
    """Run ``bench/<script> OPTS --cluster <cluster> --json <file in tmp>``; its stdout and
    the JSON it wrote."""
    root = repo_root()
    out = tmp / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "operator")])}
    proc = subprocess.run(
        [sys.executable, str(root / "bench" / script), *opts,
         "--cluster", str(cluster.state_dir), "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=800, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout, json.loads(out.read_text())


def test_operator_scale_quick_mode_measures_ten_jobs(
    cluster: Cluster, crd: list[str], tmp_path: Path
) -> None:
    stdout, (r, floor) = run_bench(
        cluster,
        tmp_path,
        "operator_scale.py",
        "--quick",
        "--floor",
        "--quiet",
        "2",
        "--steady",
        "2,3",
    )
    assert "where the time goes at 10 jobs" in stdout
    assert (r["floor"], r["jobs"], r["jobs_running"]) == (False, 10, 10)
    pods, running = r["all_pods"], r["running"]
    assert pods["n"] == running["n"] == 10
    assert 0 < pods["p50"] <= pods["p99"] <= pods["max"]
    # A job is Running only after all of its pods exist (and kwok started them).
    assert running["p50"] >= pods["p50"]
    # The benchmark's own pod watch saw each pod once (a clock on this host, a server
    # timestamp in whole seconds: never more than a second early).
    for row in (r, floor):
        lag = row["pod_watch_lag"]
        assert lag["n"] >= 40
        assert -1 <= lag["p50"] <= lag["max"] < 60
    assert r["operator_cpu_seconds"] > 0
    assert 30 < r["operator_idle_rss_mb"] <= r["operator_peak_rss_mb"] < 2000
    # The operator creates 4 pods, the Service and the config ConfigMap per job and writes
    # its status and Events; others (scheduler bindings, kwok status patches) add more.
    assert r["operator_requests_per_job"] >= 10
    assert r["api_requests_per_job"] > r["operator_requests_per_job"]
    # The floor controller only creates the pods: every job gets its 4, none gets a status.
    assert (floor["floor"], floor["jobs"], floor["jobs_running"]) == (True, 10, 0)
    assert floor["all_pods"]["n"] == 10
    assert 4 <= floor["operator_requests_per_job"] < r["operator_requests_per_job"]
    # The quiet window: 10 jobs resident, nothing arriving. Neither controller spins (a tenth
    # of a core is far above either's upkeep of 10 jobs) or writes; the cluster is not idle.
    assert "resident, nothing arriving:" in stdout
    for row in (r, floor):
        q = row["quiet"]
        assert (q["resident"], q["seconds"] >= 2) == (10, True)
        assert 0 <= q["cpu_ms_per_second"] < 100
        assert q["own_requests_per_second"] < 1
        assert q["requests_per_second"] > 0
    # The steady phase: 6 more jobs at 2/s with the 10 resident, each measured on its own.
    assert "steady load:" in stdout
    for row, until in ((r, "running"), (floor, "all_pods")):
        st = row["steady"]
        assert (st["jobs"], st["resident"], st[until]["n"]) == (6, 10, 6)
        assert 0 < st["all_pods"]["p50"] <= st["all_pods"]["max"]
        assert st["own_requests_per_job"] >= 4
        # The round's peak RSS is the burst's, read before the steady jobs came; the steady
        # phase's own reading comes after them, and a peak never falls.
        assert st["peak_rss_mb"] >= row["operator_peak_rss_mb"] > 0


def test_foreign_objects_reach_only_the_operator_without_selectors(
    cluster: Cluster, crd: list[str], tmp_path: Path
) -> None:
    # bench/foreign_objects.py on the session's control plane: 1000 pods that are not the
    # operator's (gated Pending, ~2 KB each). Without the pod watch's label selector (the
    # baseline row) the operator receives all of them and drops them; with it the API server
    # never sends them. What receiving them costs is the LIST pages held while they are
    # decoded: peak RSS 77.7-77.9 vs 70.4-70.5 MB in three runs (2026-12-03). Since pods are
    # decoded straight into their slim shape (kubegraft_operator.slim) the foreign ones are
    # no longer built as dicts, so the resident set after start-up differs by only ~2 MB
    # (72.6 vs 70.4; it was 83.5 vs 69.8 MB when whole pods were decoded).
    args = ("--pods", "1000", "--updates", "200")
    _, (base, ours) = run_bench(cluster, tmp_path, "foreign_objects.py", *args)
    assert (base["row"], ours["row"]) == ("no selectors", "operator")
    assert base["peak RSS MB"] - ours["peak RSS MB"] > 4, (base, ours)
    assert base["RSS MB"] >= ours["RSS MB"], (base, ours)
    assert ours["start CPU s"] > 0
    assert ours["update CPU s"] >= 0
