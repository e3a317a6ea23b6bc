"""The pure half of ``kubegraft compare``: policy names, summaries, noise and the verdict."""

from __future__ import annotations

from typing import Any

import pytest

from kubegraft.commands.compare import trial_overrides, trial_record
from kubegraft.policy_compare import beyond_noise, policy_freeze, summarise, table, verdict

pytestmark = pytest.mark.unit


def _trial(acc: float, seconds: float, *, n: int = 1000, trainable: int = 10) -> dict[str, Any]:
    return {
        "accuracy": acc,
        "f1": acc - 0.05,
        "train_seconds": seconds,
        "processes": 2,
        "threads_per_process": 1,
        "trainable_parameters": trainable,
        "total_parameters": 100,
        "eval_examples": n,
    }


def test_policy_names() -> None:
    assert policy_freeze("top-k:2") == {"preset": "top-k", "topK": 2}
    assert policy_freeze("lora") == {"preset": "lora"}
    with pytest.raises(ValueError, match="top-k:2"):
        policy_freeze("top-k")
    with pytest.raises(ValueError, match="unknown policy"):
        policy_freeze("freeze-all")


def test_summary_cost_is_core_seconds_and_noise_at_least_binomial() -> None:
    s = summarise("fe", [_trial(0.5, 10.0, n=100)])
    assert s.cost_core_seconds == 20.0
    assert s.trainable_share == 0.1
    assert s.accuracy_se == pytest.approx(0.05)  # sqrt(0.25 / 100)
    seeds = summarise("fe", [_trial(0.4, 10.0, n=10**6), _trial(0.6, 12.0, n=10**6)])
    assert seeds.accuracy == pytest.approx(0.5)
    assert seeds.accuracy_se == pytest.approx(0.1)  # stdev 0.1414 / sqrt(2)


def test_verdict_lead_beyond_noise_and_cheapest_within_noise() -> None:
    full = summarise("full", [_trial(0.80, 100.0)])
    top2 = summarise("top-k:2", [_trial(0.79, 30.0)])
    fe = summarise("feature-extraction", [_trial(0.60, 5.0)])
    v = verdict([fe, top2, full])
    assert v.best == "full"
    assert v.runner_up == "top-k:2"
    assert not v.lead_beyond_noise  # 0.01 on 1,000 examples is noise
    assert v.best_per_cost == "top-k:2"  # within noise of full at a third of its cost
    assert beyond_noise(full, fe)
    assert "within noise" in v.text
    clear = verdict([summarise("full", [_trial(0.9, 100.0)]), fe])
    assert clear.lead_beyond_noise
    assert clear.best_per_cost == "full"
    assert "full" in table([full, fe])


def test_trial_overrides_and_record() -> None:
    sets = trial_overrides("top-k:3", steps=7, seed=2)
    assert 'spec.freeze={"preset": "top-k", "topK": 3}' in sets
    assert "spec.training.maxSteps=7" in sets
    assert "spec.training.epochs=null" in sets
    rec = trial_record({"eval": {"validation": {"samples": 64}}, "accuracy": 0.5})
    assert rec["eval_examples"] == 64
