"""Checkpoints of a two-node run (two ``kubegraft_trainer.node`` launches of one process each,
node ranks 0 and 1, one rendezvous) sharing one output directory, as two pods share a
ReadWriteMany claim.

One rank is SIGKILLed in the middle of a save -- after it wrote its part, before it marked it
written and agreed with its peer (tests/trainer/kill_mid_save/sitecustomize.py, loaded through
PYTHONPATH) -- and the rest of the gang is then killed, as the operator deletes a gang whose
worker failed. The half-written checkpoint is never taken: the resumed run starts from the
previous complete one, on both ranks, and ends with weights allclose to an uninterrupted
two-node run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from trainer_helpers import (
    free_port,
    kill_gang,
    trainer_env,
    wait_for,
    write_digits,
    write_job,
    write_simple_cnn_init,
)

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.launch import build_launch
from kubegraft_trainer.checkpointing import (
    COMPLETE_MARKER,
    checkpoint_name,
    is_complete,
    latest_checkpoint,
    read_trainer_state,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(900)]

MAX_STEPS = 30
EVERY = 10
KILL_STEP = 20
KILL_HOOK = Path(__file__).resolve().parent / "kill_mid_save"


def _spec(init: Path, digits: Path, out: Path) -> dict[str, object]:
    return {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
            "head": {"dropout": 0.3, "hiddenLayers": [32]},
        },
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2, "imageSize": 16},
        "freeze": {"preset": "full"},
        "training": {
            "maxSteps": MAX_STEPS,
            "perDeviceBatchSize": 16,
            "learningRate": 2e-3,
            "scheduler": "cosine",
            "checkpointEverySteps": EVERY,
            "evalEverySteps": 1000,
            "logEverySteps": 10,
            "seed": 5,
        },
        "distributed": {"nodes": 2, "procsPerNode": 1, "gpusPerNode": 0},
        # the cluster's shape: one ReadWriteMany claim for both nodes (here: one directory)
        "output": {
            "path": str(out),
            "persistentVolumeClaim": "shared-output",
            "keepCheckpoints": 5,
        },
    }


def start_nodes(
    config: Path, env: dict[str, str] | None = None, node1_config: Path | None = None
) -> list[subprocess.Popen[bytes]]:
    """Node ranks 0 and 1 of one gang, each the node supervisor around torchrun (one
    process), rendezvousing on a free port: what the operator's two pods run. Node 1 reads
    ``node1_config`` when given (the same job with another output directory)."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        cfg = node1_config if rank == 1 and node1_config is not None else config
        job = FineTuneJob.model_validate(yaml.safe_load(cfg.read_text()))
        job.spec.distributed.master_port = port
        launch = build_launch(
            job.spec,
            node_rank=rank,
            master_addr="127.0.0.1",
            config_path=str(cfg),
            python=sys.executable,
        )
        log = open(cfg.with_suffix(f".node{rank}.log"), "ab")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                launch.argv,
                env=trainer_env({**launch.env, **(env or {})}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return procs


def logs(config: Path) -> str:
    return "\n".join(
        config.with_suffix(f".node{r}.log").read_text(errors="replace")
        for r in (0, 1)
        if config.with_suffix(f".node{r}.log").exists()
    )


def run_nodes(config: Path, timeout: float = 420) -> list[int]:
    procs = start_nodes(config)
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_gang(p)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("multinode-assets")
    return write_digits(root / "digits"), write_simple_cnn_init(root / "init.safetensors", seed=2)


def test_rank_killed_mid_save_leaves_no_partial_checkpoint_and_the_resume_matches(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    digits, init = assets
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "interrupted"
    ref_cfg = write_job(tmp_path / "ref.yaml", "ref", _spec(init, digits, ref_out))
    cfg = write_job(tmp_path / "job.yaml", "job", _spec(init, digits, out))

    assert run_nodes(ref_cfg) == [0, 0], logs(ref_cfg)

    # Rank 1 dies in the save of step KILL_STEP, its part written but not marked.
    procs = start_nodes(
        cfg,
        env={
            "PYTHONPATH": f"{KILL_HOOK}:{trainer_env()['PYTHONPATH']}",
            "KUBEGRAFT_TEST_KILL_RANK": "1",
            "KUBEGRAFT_TEST_KILL_STEP": str(KILL_STEP),
        },
    )
    try:
        assert wait_for(lambda: procs[1].poll() is not None, 420, 0.1), logs(cfg)
        # the operator deletes the rest of a gang whose worker failed
        kill_gang(procs[0])
    finally:
        for p in procs:
            if p.poll() is None:
                kill_gang(p)
    ckpts = out / "checkpoints"
    half = ckpts / f".tmp-{checkpoint_name(KILL_STEP)}"
    assert half.is_dir(), f"the kill did not happen mid-save:\n{logs(cfg)}"
    assert (half / "random_states_1.pkl").exists()  # rank 1's part was written ...
    assert not (half / COMPLETE_MARKER).exists()  # ... but the checkpoint never committed
    assert not is_complete(ckpts / checkpoint_name(KILL_STEP))
    resumed_at = latest_checkpoint(ckpts)
    assert resumed_at == ckpts / checkpoint_name(KILL_STEP - EVERY), logs(cfg)
    assert read_trainer_state(resumed_at)["step"] == KILL_STEP - EVERY

    assert run_nodes(cfg) == [0, 0], logs(cfg)
    assert f"resumed from {resumed_at}" in logs(cfg)
    assert is_complete(ckpts / checkpoint_name(MAX_STEPS))

    ref = load_file(str(ref_out / "model" / "model.safetensors"))
    got = load_file(str(out / "model" / "model.safetensors"))
    assert ref.keys() == got.keys()
    assert not torch.equal(ref["backbone.stem.0.weight"], load_file(str(init))["stem.0.weight"])
    for k in ref:
        assert torch.allclose(ref[k].float(), got[k].float(), rtol=1e-4, atol=1e-6), k


def test_no_checkpoint_is_committed_without_every_ranks_part(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    """Two nodes whose outputs are NOT shared (an emptyDir per pod, what output.ephemeral
    accepts): rank 0 never sees rank 1's part, so it must commit nothing -- a checkpoint
    without node 1's RNG state (or, under DeepSpeed, its shards) would be resumed by rank 0
    alone while rank 1 starts from step 0."""
    digits, init = assets
    configs = []
    for rank in (0, 1):
        spec = _spec(init, digits, tmp_path / f"node{rank}")
        spec["training"] = {**spec["training"], "maxSteps": 10, "checkpointEverySteps": 5}  # type: ignore[dict-item]
        spec["output"] = {"path": str(tmp_path / f"node{rank}"), "ephemeral": True}
        configs.append(write_job(tmp_path / f"job{rank}.yaml", "job", spec))
    procs = start_nodes(configs[0], node1_config=configs[1])
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_gang(p)
    assert codes == [0, 0], logs(configs[0]) + logs(configs[1])
    for rank in (0, 1):
        root = tmp_path / f"node{rank}" / "checkpoints"
        committed = [p for p in root.glob("step-*") if is_complete(p)] if root.exists() else []
        assert committed == [], (rank, committed)
    assert "not committed: the parts of rank(s) [1]" in logs(configs[0])
