"""The trainer's /metrics: the contract's names, types and labels (docs/metrics.md), parsed
from the exposition text with prometheus_client's own parser, as Prometheus reads it."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubegraft_trainer.metrics_exporter import (
    LogWindow,
    RunInfo,
    TrainingMetrics,
    run_info_from_env,
)

pytestmark = pytest.mark.unit

P = "kubegraft_trainer_"
CONTRACT = {
    # name (as the parser names the family) -> type; the parser drops a counter's _total
    "steps": "counter",
    "planned_steps": "gauge",
    "samples": "counter",
    "tokens": "counter",
    "epoch": "gauge",
    "loss": "gauge",
    "learning_rate": "gauge",
    "grad_norm": "gauge",
    "eval_loss": "gauge",
    "eval_accuracy": "gauge",
    "eval_precision": "gauge",
    "eval_recall": "gauge",
    "eval_f1": "gauge",
    "step_duration_seconds": "histogram",
    "eval_duration_seconds": "histogram",
    "checkpoint_duration_seconds": "histogram",
    "last_step_timestamp_seconds": "gauge",
    "last_checkpoint_timestamp_seconds": "gauge",
    "progress_ratio": "gauge",
    "eta_seconds": "gauge",
    "trainable_parameters": "gauge",
    "parameters": "gauge",
    "freeze_stage": "gauge",
    "gpu_memory_allocated_bytes": "gauge",
    "gpu_memory_peak_bytes": "gauge",
    "attempt": "gauge",
    "preemptions": "gauge",
    "evaluations": "counter",
    "checkpoints": "counter",
}
WITH_SET = {"eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1"}


def exercised(*, gpu: bool = True, tokens: int | None = 120) -> TrainingMetrics:
    m = TrainingMetrics(namespace="team-a", finetunejob="bert", registry=CollectorRegistry())
    m.on_start(RunInfo(planned_steps=10, attempt=2, preemptions=1), step=0)
    m.on_parameters(trainable=10, total=100, stage=1)
    for step in (1, 2):
        m.on_step(step=step, seconds=0.2, lr=1e-3, grad_norm=0.5, timestamp=1e9 + step)
    m.on_log(
        LogWindow(
            samples=31,
            tokens=tokens,
            loss=0.7,
            epoch=0.4,
            eta_seconds=3.0,
            gpu_memory_allocated_bytes=2**20 if gpu else None,
            gpu_memory_peak_bytes=2**21 if gpu else None,
        )
    )
    m.on_eval(
        "validation",
        {"loss": 0.6, "accuracy": 0.8, "precision": 0.7, "recall": 0.75, "f1": 0.72, "samples": 64},
        seconds=1.5,
    )
    m.on_checkpoint(seconds=2.0, timestamp=1e9 + 3)
    return m


def families(m: TrainingMetrics) -> dict[str, object]:
    text = generate_latest(m.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_series_of_the_contract_with_its_type_and_labels() -> None:
    found = families(exercised())
    assert {n.removeprefix(P): f.type for n, f in found.items()} == CONTRACT  # type: ignore[attr-defined]
    for name, fam in found.items():
        short = name.removeprefix(P)
        for s in fam.samples:  # type: ignore[attr-defined]
            keys = set(s.labels) - {"le"}  # the histogram's bucket bound
            want = {"namespace", "finetunejob"} | ({"set"} if short in WITH_SET else set())
            if short == "eval_duration_seconds":
                want |= {"set"}
            assert keys == want, (s.name, s.labels)
            assert s.labels["namespace"] == "team-a"
            assert s.labels["finetunejob"] == "bert"
            assert not {"job", "instance"} & set(s.labels)


def test_values_in_base_units_and_ratios() -> None:
    found = families(exercised())

    def value(name: str, **labels: str) -> float:
        fam = found[P + name]
        for s in fam.samples:  # type: ignore[attr-defined]
            if s.name in (P + name, P + name + "_total") and all(
                s.labels.get(k) == v for k, v in labels.items()
            ):
                return float(s.value)
        raise AssertionError(name)

    assert value("steps") == 2
    assert value("samples") == 31
    assert value("tokens") == 120
    assert value("progress_ratio") == pytest.approx(0.2)
    assert value("planned_steps") == 10
    assert value("attempt") == 2
    assert value("preemptions") == 1
    assert value("eval_accuracy", set="validation") == 0.8
    assert value("last_checkpoint_timestamp_seconds") == 1e9 + 3
    assert value("gpu_memory_peak_bytes") == 2**21
    hist = {s.name: s.value for s in found[P + "step_duration_seconds"].samples}  # type: ignore[attr-defined]
    assert hist[P + "step_duration_seconds_count"] == 2
    assert hist[P + "step_duration_seconds_sum"] == pytest.approx(0.4)


def test_no_gpu_no_gpu_series_and_no_text_no_tokens() -> None:
    found = families(exercised(gpu=False, tokens=None))
    assert P + "gpu_memory_allocated_bytes" not in found or not [
        s
        for s in found[P + "gpu_memory_allocated_bytes"].samples  # type: ignore[attr-defined]
    ]
    assert not [s for s in found[P + "tokens"].samples]  # type: ignore[attr-defined]
    # counters exist at 0 before anything happened: rate() has its first sample
    fresh = families(TrainingMetrics(namespace=None, finetunejob="j", registry=CollectorRegistry()))
    steps = fresh[P + "steps"].samples  # type: ignore[attr-defined]
    assert [(s.labels["namespace"], s.value) for s in steps if s.name.endswith("_total")] == [
        ("local", 0.0)
    ]


def test_attempt_and_preemptions_from_the_operators_environment() -> None:
    assert run_info_from_env(7, {"KUBEGRAFT_ATTEMPT": "2", "KUBEGRAFT_PREEMPTIONS": "1"}) == (
        RunInfo(planned_steps=7, attempt=3, preemptions=1)
    )
    assert run_info_from_env(7, {}) == RunInfo(planned_steps=7, attempt=1, preemptions=0)


def test_batch_counts_count_the_tokens_the_trainable_blocks_see() -> None:
    import torch

    from kubegraft_trainer.loop import batch_counts

    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    labels = torch.tensor([0, 1])
    tokens = {"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask}
    assert batch_counts([{**tokens, "labels": labels}]) == (2, 5)
    # the frozen-prefix cache: hidden states below the top block, with their mask
    prefix = {"hidden": torch.zeros(2, 3, 8), "attention_mask": mask[:, :3], "labels": labels}
    assert batch_counts([prefix, prefix]) == (4, 10)
    # pooled features (feature extraction) and images carry no tokens
    assert batch_counts([{"features": torch.zeros(2, 8), "labels": labels}]) == (2, None)
    assert batch_counts([{"pixel_values": torch.zeros(2, 3, 4, 4), "labels": labels}]) == (2, None)
