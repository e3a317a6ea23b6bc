"""bench/transfer_policies.py's report: seeds aggregated, noise judged, the text deduplicated."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import RESULT_PREFIX
from bench.transfer_policies import (
    KAOMOJI_CLASSES,
    results_from_logs,
    reusable,
    summaries,
    table,
    write_kaomoji,
)

pytestmark = pytest.mark.unit


def _run(policy: str, seed: int, acc: float, cpu: float) -> dict[str, Any]:
    return {
        "model": "minilm",
        "policy": policy,
        "seed": seed,
        "learning_rate": 1e-3,
        "accuracy": acc,
        "f1": acc - 0.1,
        "eval_examples": 1000,
        "wall_seconds": cpu + 20,
        "train_cpu_seconds": cpu,
        "peak_rss_mb": 1500.0 + seed,
        "trainable_start": 10,
        "trainable_end": 10,
        "total_parameters": 1000,
        "trainable_share_start": 0.01,
        "trainable_share_end": 0.01,
        "feature_cache": policy == "feature-extraction",
    }


def _rows_of(text: str) -> dict[str, list[str]]:
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    return {r[0]: r for r in rows}


def test_seeds_are_aggregated_and_a_lead_inside_the_noise_is_called_so() -> None:
    rows = [
        *(_run("full", s, a, 400) for s, a in ((42, 0.80), (43, 0.82), (44, 0.81))),
        *(_run("lora", s, a, 250) for s, a in ((42, 0.79), (43, 0.81), (44, 0.80))),
        *(_run("feature-extraction", s, a, 5) for s, a in ((42, 0.50), (43, 0.52), (44, 0.51))),
        {"model": "minilm", "policy": "ia3", "seed": 42, "error": "timed out after 3000 s"},
    ]
    found = {s.policy: s for s in summaries(rows)}
    assert set(found) == {"full", "lora", "feature-extraction"}  # a policy with no run left out
    assert found["full"].trials == 3
    assert found["full"].accuracy == pytest.approx(0.81)
    assert found["lora"].cost_core_seconds == pytest.approx(250)

    cells = _rows_of(table(rows))
    assert cells["full"][1] == "3"
    assert cells["full"][2] == "0.810 +- 0.010"  # mean +- the sample sd over the seeds
    assert cells["full"][-1] == "best"
    assert cells["lora"][-1] == "-0.010 (within noise)"
    assert cells["feature-extraction (cached features)"][-1] == "-0.300"  # beyond noise
    assert cells["full"][6] == "1544"  # the largest peak over the seeds
    assert cells["ia3"][1] == "failed: timed out after 3000 s"


def test_a_policy_with_a_failed_seed_says_how_many_ran() -> None:
    rows = [
        _run("full", 42, 0.8, 400),
        {"model": "minilm", "policy": "full", "seed": 43, "error": "exit 1"},
    ]
    cells = _rows_of(table(rows))
    assert cells["full"][1] == "1 of 2"
    assert cells["full"][2] == "0.800"


def test_saved_logs_are_read_back_per_seed(tmp_path: Path) -> None:
    for seed in (42, 43):
        r = _run("full", seed, 0.7 + seed / 1000, 100)
        (tmp_path / f"minilm-full-s{seed}.log").write_text(
            "noise\n" + RESULT_PREFIX + json.dumps(r) + "\n"
        )
    jobs = [("minilm", "full", 42), ("minilm", "full", 43), ("minilm", "full", 44)]
    got = results_from_logs([tmp_path], jobs)
    assert [r.get("accuracy") for r in got[:2]] == [pytest.approx(0.742), pytest.approx(0.743)]
    assert got[2]["seed"] == 44
    assert "error" in got[2]


def test_the_text_data_has_each_text_once_and_only_the_ten_classes(tmp_path: Path) -> None:
    path = write_kaomoji(tmp_path)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) > 5000  # enough for 4,000 training + 1,000 validation
    assert {r["category"] for r in rows} == set(KAOMOJI_CLASSES)


def test_resume_takes_only_finished_runs_of_the_same_settings(tmp_path: Path) -> None:
    settings = {"text_samples": 4000, "epochs": 3}
    runs = {
        "minilm-full-s42": _run("full", 42, 0.7, 100) | {"settings": settings},
        "minilm-full-s43": _run("full", 43, 0.7, 100) | {"settings": {**settings, "epochs": 1}},
        "minilm-lora-s42": _run("lora", 42, 0.7, 100),  # before settings were recorded
    }
    for tag, r in runs.items():
        (tmp_path / f"{tag}.log").write_text(RESULT_PREFIX + json.dumps(r) + "\n")
    (tmp_path / "minilm-lora-s43.log").write_text("Traceback ...\n")  # a run that failed
    jobs = [("minilm", p, s) for s in (42, 43) for p in ("full", "lora")]
    assert set(reusable(tmp_path, jobs, settings)) == {
        ("minilm", "full", 42),
        ("minilm", "lora", 42),
    }
