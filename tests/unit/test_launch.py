"""The launch builder is pure: same spec and rank in, same argv and env out."""

from __future__ import annotations

import pytest

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft.constants import ENV_JOB_CONFIG
from kubegraft.launch import build_launch

pytestmark = pytest.mark.unit


def _spec(**distributed: object) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": "/models/bert", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "distributed": {"nodes": 2, "procsPerNode": 8, **distributed},
            "output": {"persistentVolumeClaim": "shared-output"},
        }
    )


def test_torchrun_argv_for_node_rank() -> None:
    launch = build_launch(
        _spec(), node_rank=1, master_addr="job-worker-0.job", config_path="/etc/kubegraft/job.yaml"
    )
    argv = launch.argv
    assert argv[1:5] == ["-m", "kubegraft_trainer.node", "--status-dir=/output/status", "--"]
    assert argv[5:8] == [argv[0], "-m", "torch.distributed.run"]
    assert "--nnodes=2" in argv
    assert "--nproc-per-node=8" in argv
    assert "--node-rank=1" in argv
    assert "--master-addr=job-worker-0.job" in argv
    assert "--master-port=29500" in argv
    assert argv[-4:] == ["-m", "kubegraft_trainer", "--config", "/etc/kubegraft/job.yaml"]


def test_env_carries_the_rendezvous() -> None:
    env = build_launch(
        _spec(masterPort=23456), node_rank=0, master_addr="127.0.0.1", config_path="c.yaml"
    ).env
    assert env["WORLD_SIZE"] == "16"
    assert env["NODE_RANK"] == "0"
    assert env["MASTER_PORT"] == "23456"
    assert env[ENV_JOB_CONFIG] == "c.yaml"
    assert "DS_BUILD_OPS" not in env


def test_deepspeed_disables_op_builds() -> None:
    env = build_launch(
        _spec(strategy="deepspeed"), node_rank=0, master_addr="a", config_path="c"
    ).env
    assert env["DS_BUILD_OPS"] == "0"


def test_rank_out_of_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="node_rank 2"):
        build_launch(_spec(), node_rank=2, master_addr="a", config_path="c")


def test_same_input_same_output() -> None:
    a = build_launch(_spec(), node_rank=1, master_addr="m", config_path="c")
    b = build_launch(_spec(), node_rank=1, master_addr="m", config_path="c")
    assert a == b


def test_torchrun_waits_the_grace_period_less_a_margin() -> None:
    """torchrun SIGKILLs its workers 30 s after forwarding SIGTERM unless told otherwise; the
    pods get terminationGracePeriodSeconds, and the trainer should have nearly all of it."""
    spec = _spec()
    default = build_launch(spec, node_rank=0, master_addr="a", config_path="c").argv
    assert spec.run_policy.termination_grace_period_seconds == 120
    assert "--shutdown-timeout=108" in default
    # before the trainer's -m: it is torchrun's option, not the trainer's
    assert default.index("--shutdown-timeout=108") < default.index("kubegraft_trainer")
    for grace, timeout in ((10, 5), (60, 54), (600, 570), (86400, 86370)):
        spec.run_policy.termination_grace_period_seconds = grace
        argv = build_launch(spec, node_rank=0, master_addr="a", config_path="c").argv
        assert f"--shutdown-timeout={timeout}" in argv, grace
        assert 5 <= grace - timeout <= 30


def test_installed_torchrun_accepts_the_shutdown_timeout() -> None:
    """The option exists in the torch we ship (it appeared in torch 2.x's torchrun)."""
    run = pytest.importorskip("torch.distributed.run")
    args = run.get_args_parser().parse_args(
        ["--shutdown-timeout=108", "--nproc-per-node=1", "-m", "kubegraft_trainer"]
    )
    assert args.shutdown_timeout == 108
