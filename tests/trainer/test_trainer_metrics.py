"""Rank 0's /metrics after a real 2-process DDP run (gloo, CPU) holds the run's true numbers.

The real pretrained MiniLM fine-tunes its top block and head on the real kaomoji data with the
metrics port on. ``metrics_hold.py`` keeps rank 0 alive once the trainer's entrypoint returned,
so the test scrapes the final values without racing the end of the run. The exposition is
parsed with prometheus_client's parser and checked against what the run wrote (metrics.json,
its log) and against an independent count of the examples and tokens both ranks processed:
the epoch's last batch per rank is short, so a nominal count (steps x batch size x ranks)
would be wrong, and a count of one rank's examples would be half.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from collective_probe import probe_argv
from metrics_hold import ENV_HOLD_DIR
from trainer_helpers import (
    KAOMOJI,
    MINILM,
    free_port,
    kill_gang,
    launch_argv,
    log_text,
    metrics,
    minilm_dir,
    trainer_env,
    wait_for,
    write_job,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]

P = "kubegraft_trainer_"
BATCH = 12
EPOCHS = 2
MAX_LENGTH = 24
SPEC: dict[str, Any] = {
    "model": {"checkpoint": MINILM, "task": "sequence-classification"},
    "dataset": {
        "train": {"uri": KAOMOJI},
        "textField": "text",
        "labelField": "category",
        "includeLabels": ["angry", "happy", "sad", "sleepy"],
        "validationSplit": 0.2,
        "maxSamples": 100,
        "maxLength": MAX_LENGTH,
    },
    # the top block trains: the steps see token batches (cached below the top block by the
    # frozen-prefix cache, with their attention mask)
    "freeze": {"preset": "top-k", "topK": 1},
    "training": {
        "epochs": EPOCHS,
        "perDeviceBatchSize": BATCH,
        "learningRate": 1e-3,
        "logEverySteps": 3,  # windows that cross the epoch boundary; the last one is short
        "seed": 5,
    },
    "distributed": {"procsPerNode": 2},
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def expected_tokens(spec: dict[str, Any]) -> tuple[int, int]:
    """(train examples, their non-padding tokens at maxLength), counted from the data itself."""
    from transformers import AutoTokenizer

    from kubegraft.api.v1alpha1 import DatasetSpec
    from kubegraft_trainer.data import prepare_data

    data = prepare_data(
        DatasetSpec.model_validate(spec["dataset"]),
        task=spec["model"]["task"],
        seed=spec["training"]["seed"],
    )
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    enc = tok(list(data.train.inputs), truncation=True, max_length=MAX_LENGTH)
    return len(data.train), sum(len(ids) for ids in enc["input_ids"])


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], str]:
    """(rank 0's final /metrics text, metrics.json, the run's log) of one run."""
    tmp = tmp_path_factory.mktemp("metrics-run")
    out, hold = tmp / "out", tmp / "hold"
    hold.mkdir()
    cfg = write_job(
        tmp / "job.yaml",
        "kaomoji-metrics",
        {**SPEC, "output": {"path": str(out), "keepCheckpoints": 1}},
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["metadata"]["namespace"] = "team-a"  # as the operator renders job.yaml
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    port = free_port()
    argv, env = launch_argv(cfg, 2)
    env = trainer_env(
        {
            **env,
            "KUBEGRAFT_METRICS_PORT": str(port),
            "KUBEGRAFT_ATTEMPT": "2",
            "KUBEGRAFT_PREEMPTIONS": "1",
            ENV_HOLD_DIR: str(hold),
        }
    )
    script = Path(__file__).with_name("metrics_hold.py")
    with open(cfg.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen(
            probe_argv(argv, script),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        finished = hold / "finished"
        assert wait_for(lambda: finished.exists() or proc.poll() is not None, 500), "no end"
        assert finished.exists(), log_text(cfg)[-4000:]
        assert finished.read_text() == "0", log_text(cfg)[-4000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        (hold / "release").touch()
        assert proc.wait(timeout=120) == 0, log_text(cfg)[-4000:]
    finally:
        (hold / "release").touch()
        if proc.poll() is None:
            kill_gang(proc)
    return text, metrics(out), log_text(cfg)


def test_reduced_counts_are_what_both_ranks_processed(
    scraped: tuple[str, dict[str, Any], str],
) -> None:
    text, m, _ = scraped
    s = samples(text)
    lab = (("finetunejob", "kaomoji-metrics"), ("namespace", "team-a"))
    train, tokens = expected_tokens(SPEC)
    assert m["train_examples"] == train
    # the test's premise: an even split (no example repeated by the sampler) whose per-rank
    # share does not fill its last batch
    assert train % 2 == 0
    assert (train // 2) % BATCH != 0
    assert s[(P + "samples_total", lab)] == EPOCHS * train
    assert s[(P + "tokens_total", lab)] == EPOCHS * tokens
    steps = m["step"]
    assert steps == EPOCHS * math.ceil(train / 2 / BATCH)
    assert s[(P + "steps_total", lab)] == steps
    assert s[(P + "planned_steps", lab)] == m["total_steps"] == steps
    assert s[(P + "step_duration_seconds_count", lab)] == steps
    assert s[(P + "progress_ratio", lab)] == 1.0
    assert s[(P + "eta_seconds", lab)] == 0.0
    assert s[(P + "epoch", lab)] == EPOCHS
    assert s[(P + "attempt", lab)] == 3  # KUBEGRAFT_ATTEMPT 2 counts from 0
    assert s[(P + "preemptions", lab)] == 1
    assert s[(P + "trainable_parameters", lab)] == m["trainable_parameters"]
    assert s[(P + "parameters", lab)] == m["total_parameters"]
    norm = s[(P + "grad_norm", lab)]
    assert math.isfinite(norm)
    assert norm > 0
    assert 0 < time.time() - s[(P + "last_step_timestamp_seconds", lab)] < 3600


def test_loss_and_evaluations_agree_with_metrics_json(
    scraped: tuple[str, dict[str, Any], str],
) -> None:
    text, m, log = scraped
    s = samples(text)
    lab = (("finetunejob", "kaomoji-metrics"), ("namespace", "team-a"))
    val = (("finetunejob", "kaomoji-metrics"), ("namespace", "team-a"), ("set", "validation"))
    assert s[(P + "loss", lab)] == pytest.approx(m["train_loss"], rel=1e-12)
    for key in ("loss", "accuracy", "precision", "recall", "f1"):
        assert s[(P + f"eval_{key}", val)] == pytest.approx(m["eval"]["validation"][key], rel=1e-12)
        if key != "loss":
            assert 0 <= s[(P + f"eval_{key}", val)] <= 1
    evaluations = len(re.findall(r"step \d+ eval: validation", log))
    assert evaluations >= EPOCHS
    assert s[(P + "evaluations_total", lab)] == evaluations
    assert s[(P + "eval_duration_seconds_count", val)] == evaluations
    checkpoints = s[(P + "checkpoints_total", lab)]
    assert checkpoints >= 1
    assert s[(P + "checkpoint_duration_seconds_count", lab)] == checkpoints
    assert s[(P + "last_checkpoint_timestamp_seconds", lab)] > 0


def test_only_the_contracts_labels_and_no_gpu_series_on_cpu(
    scraped: tuple[str, dict[str, Any], str],
) -> None:
    text, _, _ = scraped
    names = set()
    for name, labels in samples(text):
        keys = {k for k, _ in labels} - {"le"}
        assert keys in ({"namespace", "finetunejob"}, {"namespace", "finetunejob", "set"}), name
        names.add(name)
    assert not any("gpu_memory" in n for n in names)
    assert all(n.startswith(P) for n in names)
