"""Three trainer paths run end to end through the real loop: causal LM, LoRA, early stopping.

Each test starts a real ``python -m kubegraft_trainer`` (one process, or two under torchrun for
LoRA) on tiny data and a handful of optimizer steps, then checks what the run wrote: the exit
code, ``metrics.json``, the log and the exported model against the checkpoint it started from.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import KAOMOJI, MINILM, log_text, metrics, run, run_single, write_job
from trainer_helpers import minilm_dir as _minilm_dir
from trainer_helpers import sentences as _sentences
from trainer_helpers import tiny_gpt2 as _tiny_gpt2

from kubegraft.api.v1alpha1 import LoraSpec

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(400)]

LOSS_RE = r"step \d+/\d+ epoch [\d.]+ loss ([\d.]+)"


def _causal_job(tmp_path: Path, ckpt: Path, freeze: dict[str, object]) -> Path:
    return write_job(
        tmp_path / "job.yaml",
        "causal-lm",
        {
            "model": {"checkpoint": str(ckpt), "task": "causal-lm"},
            "dataset": {
                "train": {"uri": str(_sentences(tmp_path / "text.jsonl"))},
                "validationSplit": 0.1,
                "maxLength": 16,
            },
            "freeze": freeze,
            "training": {
                "maxSteps": 12,
                "perDeviceBatchSize": 16,
                "learningRate": 3e-3,
                "logEverySteps": 2,
                "evalEverySteps": 6,
                "scheduler": "constant",
            },
            "output": {"path": str(tmp_path / "out"), "keepCheckpoints": 1},
        },
    )


def test_causal_lm_top1(tmp_path: Path) -> None:
    """The top block and the (tied) embeddings/LM head train; block 0 stays bit-identical."""
    ckpt = _tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "out"
    cfg = _causal_job(tmp_path, ckpt, {"preset": "top-k", "topK": 1, "freezeEmbeddings": False})
    assert run_single(cfg, timeout=300) == 0, log_text(cfg)
    m = metrics(out)
    losses = [float(x) for x in re.findall(LOSS_RE, log_text(cfg))]
    assert len(losses) == 6, losses
    assert losses[-1] < 0.7 * losses[0], losses
    assert m["step"] == 12
    # f1 means nothing for a language model: the best checkpoint is chosen on loss.
    assert m["metric_for_best"] == "loss"
    assert m["eval"]["validation"]["perplexity"] > 1.0
    assert m["best_metric"] == pytest.approx(m["loss"])
    assert m["chance_accuracy"] is None

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    original = load_file(str(ckpt / "model.safetensors"))
    frozen = [k for k in original if k.startswith("transformer.h.0.")]
    trained = [k for k in original if k.startswith("transformer.h.1.") and k.endswith("weight")]
    assert frozen
    assert trained
    for k in frozen:
        assert torch.equal(exported[k], original[k]), k
    assert any(not torch.equal(exported[k], original[k]) for k in trained)
    assert torch.equal(exported["lm_head.weight"], exported["transformer.wte.weight"])

    # The same job again over the same output resumes from the step-12 checkpoint (whose tied
    # LM head was saved once, as the embedding matrix): nothing is left to train, and the
    # re-exported model is the same one, head still tied.
    assert run_single(cfg, timeout=300) == 0, log_text(cfg)
    assert "resumed from" in log_text(cfg)
    assert "at step 12" in log_text(cfg)
    m2 = metrics(out)
    assert m2["step"] == 12
    again = AutoModelForCausalLM.from_pretrained(out / "model").state_dict()
    assert torch.equal(again["lm_head.weight"], again["transformer.wte.weight"])
    assert all(torch.equal(again[k], exported[k]) for k in exported)

    # A longer run is another run (its schedule differs): the checkpoint is not resumed.
    cfg.write_text(cfg.read_text().replace("maxSteps: 12", "maxSteps: 16"))
    assert run_single(cfg, timeout=300) == 78, log_text(cfg)
    assert "spec training changed" in log_text(cfg)


def test_causal_lm_with_nothing_trainable_is_a_config_error(tmp_path: Path) -> None:
    """GPT-2 ties its LM head to the input embeddings: feature extraction (head only, with the
    embeddings frozen) leaves nothing to train, which must be a clear exit 78."""
    ckpt = _tiny_gpt2(tmp_path / "gpt2")
    cfg = _causal_job(tmp_path, ckpt, {"preset": "feature-extraction"})
    assert run_single(cfg, timeout=300) == 78, log_text(cfg)
    assert "freezeEmbeddings: false" in log_text(cfg)


LORA_LABELS = ["angry", "happy", "sad"]


def test_lora_through_the_loop_ddp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "lora",
        {
            "model": {"checkpoint": MINILM, "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": KAOMOJI},
                "labelField": "category",
                "includeLabels": LORA_LABELS,
                "validationSplit": 0.2,
                "maxSamples": 160,
                "maxEvalSamples": 48,
                "maxLength": 16,
            },
            "freeze": {"preset": "lora"},
            "training": {
                "maxSteps": 6,
                "perDeviceBatchSize": 8,
                "learningRate": 1e-2,
                "logEverySteps": 2,
            },
            "distributed": {"procsPerNode": 2},
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run(cfg, nproc=2, timeout=300) == 0, log_text(cfg)
    m = metrics(out)
    assert m["processes"] == 2
    # Trainable: rank-r adapters on query and value of each of the 6 layers, and the head.
    r, hidden, layers = LoraSpec().r, 384, 6
    lora = layers * 2 * r * (hidden + hidden)
    head = hidden * len(LORA_LABELS) + len(LORA_LABELS)
    assert m["trainable_parameters"] == lora + head, m
    assert m["total_parameters"] > 20_000_000

    # The export is the plain architecture with the adapters merged into query and value.
    from transformers import AutoModel

    # (the trainer pools by mean and drops BERT's pooler, so it is not exported)
    exported = AutoModel.from_pretrained(out / "model", add_pooling_layer=False).state_dict()
    original = load_file(str(_minilm_dir() / "model.safetensors"))
    original = {
        k.removeprefix("bert."): v
        for k, v in original.items()
        if "pooler" not in k and not k.endswith("position_ids")
    }
    assert set(original) <= set(exported)
    assert not any("lora" in k for k in exported)
    changed = {k for k, v in original.items() if k in exported and not torch.equal(exported[k], v)}
    assert len(changed) == 2 * layers, sorted(changed)  # every query and value weight
    for k in changed:
        assert re.search(r"attention\.self\.(query|value)\.weight$", k), k
    head_weights = load_file(str(out / "model" / "head.safetensors"))
    assert sum(v.numel() for v in head_weights.values()) == head


def test_early_stopping_in_a_real_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_job(
        tmp_path / "job.yaml",
        "early",
        {
            "model": {"checkpoint": MINILM, "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": KAOMOJI},
                "labelField": "category",
                "includeLabels": LORA_LABELS,
                "validationSplit": 0.2,
                "maxSamples": 160,
                "maxEvalSamples": 48,
                "maxLength": 16,
            },
            "freeze": {"preset": "feature-extraction"},
            "training": {
                "maxSteps": 40,
                "perDeviceBatchSize": 8,
                "learningRate": 1e-9,
                "evalEverySteps": 2,
                "logEverySteps": 1,
                "earlyStopping": {"metric": "loss", "patience": 1, "minDelta": 1e-4},
                "metricForBest": "loss",
            },
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run_single(cfg, timeout=300) == 0, log_text(cfg)
    m = metrics(out)
    # First evaluation at step 2 sets the mark; the one at step 4 cannot beat it.
    assert m["stopped_early"] is True
    assert m["step"] == 4 < m["total_steps"] == 40
    assert "early stopping at step 4" in log_text(cfg)
    assert m["feature_cache"] is True
