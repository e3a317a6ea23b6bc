"""Each training process's thread count: its share of the CPUs it really has."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubegraft.api.v1alpha1 import FineTuneJob, FineTuneJobSpec
from kubegraft.cpu_share import (
    ENV_THREADS,
    available_cpus,
    cgroup_cpu_limit,
    parse_cpu_max,
    parse_cpu_quantity,
    process_threads,
    quota_cpus,
    threads_per_process,
)
from kubegraft.launch import build_launch
from kubegraft_operator.render import render_pod

pytestmark = pytest.mark.unit


def _spec(
    distributed: dict[str, object] | None = None, pod: dict[str, object] | None = None
) -> dict[str, object]:
    return {
        "model": {"checkpoint": "/models/bert", "task": "sequence-classification"},
        "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
        "distributed": {"procsPerNode": 2, **(distributed or {})},
        "output": {"persistentVolumeClaim": "shared-output"},
        "pod": pod or {},
    }


@pytest.mark.parametrize(
    ("cpus", "procs", "threads"),
    [
        (2, 1, 2),
        (16, 4, 4),
        (2.0, 2, 1),
        (1.5, 1, 1),
        (0.5, 1, 1),
        (3, 2, 1),
        (7.99, 1, 7),
        (8, 3, 2),
    ],
)
def test_share_is_the_floor_of_cpus_per_process_and_at_least_one(
    cpus: float, procs: int, threads: int
) -> None:
    assert threads_per_process(cpus, procs) == threads


def test_share_rejects_zero_processes() -> None:
    with pytest.raises(ValueError, match="procs_per_node"):
        threads_per_process(4, 0)


def test_cgroup_v2_cpu_max() -> None:
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("50000 100000") == 0.5
    assert parse_cpu_max("max 100000") is None
    assert quota_cpus(-1, 100000) is None


def test_cgroup_v2_files_win_over_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3.0


def test_cgroup_v1_quota_and_period(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("150000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_means_the_affinity_set(tmp_path: Path) -> None:
    import os

    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert available_cpus(tmp_path) == 0.1  # a limit below the cores wins


def test_kubernetes_cpu_quantities() -> None:
    assert parse_cpu_quantity("500m") == 0.5
    assert parse_cpu_quantity("2") == 2.0
    assert parse_cpu_quantity(4) == 4.0


def test_process_threads_order_spec_then_env_then_share() -> None:
    assert process_threads({ENV_THREADS: "3"}, spec_threads=5, cpus=16, procs_per_node=1) == 5
    assert process_threads({ENV_THREADS: "3"}, spec_threads=None, cpus=16, procs_per_node=1) == 3
    assert (
        process_threads({"OMP_NUM_THREADS": "2"}, spec_threads=None, cpus=16, procs_per_node=1) == 2
    )
    assert (
        process_threads({"OMP_NUM_THREADS": "x"}, spec_threads=None, cpus=16, procs_per_node=4) == 4
    )
    assert process_threads({}, spec_threads=None, cpus=16, procs_per_node=4) == 4


def test_launch_fixes_threads_from_the_spec_or_the_cpus_it_is_given() -> None:
    def env(spec: dict[str, object], cpus: float | None) -> dict[str, str]:
        return build_launch(
            FineTuneJobSpec.model_validate(spec),
            node_rank=0,
            master_addr="x",
            config_path="/c.yaml",
            cpus=cpus,
        ).env

    # No spec field, no known CPUs: nothing fixed (the old hard-coded OMP_NUM_THREADS=1 is gone).
    assert "OMP_NUM_THREADS" not in env(_spec(), None)
    shared = env(_spec(), 8)
    assert shared["OMP_NUM_THREADS"] == shared[ENV_THREADS] == shared["MKL_NUM_THREADS"] == "4"
    assert env(_spec({"threadsPerProcess": 3}), 8)["OMP_NUM_THREADS"] == "3"


def test_rendered_pod_gets_the_share_of_its_cpu_limit() -> None:
    def pod_env(
        pod: dict[str, object], distributed: dict[str, object] | None = None
    ) -> dict[str, str]:
        job = FineTuneJob.model_validate(
            {
                "apiVersion": "kubegraft.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "j"},
                "spec": _spec(distributed, pod),
            }
        )
        rendered = render_pod(job, namespace="ns", uid="u", rank=0, attempt=1)
        container = rendered["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert pod_env({"resources": {"limits": {"cpu": "6"}}})["OMP_NUM_THREADS"] == "3"
    assert pod_env({"resources": {"limits": {"cpu": "1500m"}}})["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in pod_env({})
    assert pod_env({}, {"threadsPerProcess": 2})[ENV_THREADS] == "2"
