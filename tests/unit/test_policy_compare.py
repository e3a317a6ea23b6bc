"""The pure half of ``kubegraft compare``: policy names, summaries, noise and the verdict."""

from __future__ import annotations

from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FreezeSpec
from kubegraft.commands.compare import trial_overrides, trial_record
from kubegraft.compare_cluster import comparison_id, trial_manifest, trial_name
from kubegraft.policy_compare import (
    beyond_noise,
    calibration,
    pareto_front,
    policy_freeze,
    status_record,
    steps_for_budget,
    summarise,
    table,
    verdict,
)

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
    assert policy_freeze("dora") == {"preset": "lora", "lora": {"useDora": True}}
    assert policy_freeze("ia3") == {"preset": "ia3"}
    # each is a valid freeze spec for the API model (what the trial's manifest gets)
    for name in ("dora", "ia3", "top-k:2"):
        FreezeSpec.model_validate(policy_freeze(name))
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
    assert "spec.training.evalEverySteps=7" in sets  # one evaluation, at the end
    assert "spec.training.checkpointEverySteps=7" in sets  # none at epoch ends
    assert "spec.output.saveFinalModel=false" in sets
    rec = trial_record({"eval": {"validation": {"samples": 64}}, "accuracy": 0.5})
    assert rec["eval_examples"] == 64


def test_budget_seconds_become_steps_per_policy_from_a_calibration() -> None:
    # 5 calibration steps took 2 s of optimizer steps in 12 s of training: 10 s fixed (cache,
    # final evaluation and save), 0.4 s a step.
    cal = calibration("feature-extraction", {"step": 5, "train_seconds": 12.0, "step_seconds": 2.0})
    assert cal.fixed_seconds == pytest.approx(10.0)
    assert cal.seconds_per_step == pytest.approx(0.4)
    assert steps_for_budget(30.0, cal) == 50  # (30 - 10) / 0.4
    # The trial's predicted training time stays within the budget...
    steps = steps_for_budget(31.0, cal)
    assert cal.fixed_seconds + steps * cal.seconds_per_step <= 31.0
    # ... and a budget below the fixed cost still gives one step (the table shows the cost).
    assert steps_for_budget(5.0, cal) == 1
    full = calibration("full", {"step": 5, "train_seconds": 6.0, "step_seconds": 5.0})
    assert steps_for_budget(30.0, full) == 29  # (30 - 1) / 1: fewer, dearer steps
    with pytest.raises(ValueError, match="> 0"):
        steps_for_budget(0.0, cal)
    with pytest.raises(ValueError, match="no step"):
        calibration("full", {"step": 0, "train_seconds": 1.0, "step_seconds": 0.0})


def test_pareto_front_and_one_seed_caveat() -> None:
    full = summarise("full", [_trial(0.80, 100.0)])
    top2 = summarise("top-k:2", [_trial(0.79, 30.0)])
    fe = summarise("feature-extraction", [_trial(0.60, 5.0)])
    bitfit = summarise("bitfit", [_trial(0.55, 40.0)])  # dearer and worse than top-2
    assert pareto_front([full, top2, fe, bitfit]) == ["feature-extraction", "top-k:2", "full"]
    v = verdict([full, top2, fe, bitfit])
    assert v.pareto == ["feature-extraction", "top-k:2", "full"]
    assert "one seed" in v.text
    seeds = verdict(
        [
            summarise("full", [_trial(0.80, 100.0), _trial(0.82, 100.0)]),
            summarise("fe", [_trial(0.60, 5.0), _trial(0.61, 5.0)]),
        ]
    )
    assert seeds.lead_beyond_noise
    assert "one seed" not in seeds.text


def test_no_noise_estimate_never_calls_a_lead() -> None:
    """One seed and no validation size (a cluster trial): the verdict cannot tell."""
    a = summarise("full", [_trial(0.9, 100.0, n=0)])
    b = summarise("fe", [_trial(0.5, 5.0, n=0)])
    assert not a.noise_known
    assert not beyond_noise(a, b)
    v = verdict([a, b])
    assert not v.lead_beyond_noise
    assert "cannot tell" in v.text
    assert v.best_per_cost == "fe"  # not beaten beyond noise, and cheaper


def _finished_job(state: str = "Succeeded", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "qs-fe-s0-abcde"},
        "spec": {"distributed": {"nodes": 2, "procsPerNode": 1, "threadsPerProcess": 2}},
        "status": {
            "state": state,
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T00:01:40Z",
            "suspendedSeconds": 10,
            "metrics": {"accuracy": 0.7, "f1": 0.6},
            "parameters": {"trainable": 25, "total": 100, "trainablePercent": 25.0},
            "progress": {"step": 12},
            **status,
        },
    }


def test_status_record_reads_a_finished_trial() -> None:
    rec = status_record(_finished_job())
    assert (rec["accuracy"], rec["f1"], rec["step"]) == (0.7, 0.6, 12)
    assert rec["train_seconds"] == 90.0  # 100 s running, 10 s of it suspended
    assert (rec["processes"], rec["threads_per_process"]) == (2, 2)
    s = summarise("fe", [rec])
    assert s.cost_core_seconds == 360.0
    assert s.trainable_share == 0.25
    with pytest.raises(ValueError, match="BackoffLimitExceeded: pod exited 1"):
        status_record(
            _finished_job("Failed", reason="BackoffLimitExceeded", message="pod exited 1")
        )
    with pytest.raises(ValueError, match="no accuracy"):
        status_record(_finished_job(metrics={}))


def test_failed_trials_are_rows_of_the_table() -> None:
    out = table([summarise("full", [_trial(0.8, 1.0)])], {"lora seed 0": "exit 1; see x.log"})
    assert out.splitlines()[-1].split()[:4] == ["lora", "seed", "0", "failed"]
    assert "exit 1; see x.log" in out


def test_cluster_trial_names_labels_and_manifest() -> None:
    cid = comparison_id("kind: FineTuneJob", ["full", "top-k:2"], "steps=5", 2)
    assert cid == comparison_id("kind: FineTuneJob", ["full", "top-k:2"], "steps=5", 2)
    assert cid != comparison_id("kind: FineTuneJob", ["full", "top-k:2"], "steps=6", 2)
    long = "a" * 48
    name = trial_name(long, "feature-extraction", 1, cid)
    assert len(name) <= 48
    assert name.endswith(f"-fe-s1-{cid[:5]}")
    assert trial_name("qs", "top-k:2", 0, cid) == f"qs-top-k2-s0-{cid[:5]}"
    doc = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "qs", "labels": {"team": "a"}},
        "spec": {
            "model": {"checkpoint": "/models/base", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "training": {"maxSteps": 5, "epochs": None, "earlyStopping": None},
            "output": {"ephemeral": True},
        },
    }
    m = trial_manifest(doc, name="qs-full-s0-x", cid=cid, policy="top-k:2", seed=0, namespace="n")
    assert m["metadata"]["labels"] == {
        "team": "a",
        "kubegraft.io/comparison": cid,
        "kubegraft.io/compare-policy": "top-k2",
        "kubegraft.io/compare-seed": "0",
    }
    assert (m["metadata"]["name"], m["metadata"]["namespace"]) == ("qs-full-s0-x", "n")
    assert "epochs" not in m["spec"]["training"]  # an override's null is an absent field
    doc["spec"]["training"]["maxSteps"] = 0
    with pytest.raises(ValueError, match="maxSteps"):
        trial_manifest(doc, name="x", cid=cid, policy="full", seed=0, namespace="n")
