"""Smoke runs of the trainer benchmarks, so they keep working as the trainer changes.

Both scripts run end to end in ``--quick`` mode (tiny subsets, real models and data, the real
trainer and the real Hugging Face ``Trainer``) and their JSON output is checked for the
expected rows and sane values. Timings are machine- and load-dependent, so no speed target is
asserted here, only that every measurement happened and is physically plausible.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float) -> tuple[str, dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "operator"), str(REPO / "trainer")])
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--quick", "--json", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("{"))
    return "\n".join(lines[:start]), json.loads("\n".join(lines[start:]))


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_trainer_throughput_quick() -> None:
    text, doc = _run("trainer_throughput.py", timeout=1500)
    rows = {r["policy"]: r for r in doc["rows"]}
    assert list(rows) == ["full", "top2", "feature-extraction"]
    for name, r in rows.items():
        for key in (
            "hf_samples_per_s",
            "ours_samples_per_s",
            "speed_ratio",
            "cpu_speed_ratio",
            "epoch1_speed_ratio",
            "hf_peak_mb",
            "ours_peak_mb",
            "memory_ratio",
        ):
            assert _positive(r[key]), (name, key, r)
        # A MiniLM process holds at least the model and torch; less than 16 GiB is sane here.
        assert 200 < r["hf_peak_mb"] < 16384, r
        assert 200 < r["ours_peak_mb"] < 16384, r
        assert r["speed_ratio"] == pytest.approx(r["ours_samples_per_s"] / r["hf_samples_per_s"])
        # Both sides train exactly the same parameters under each policy.
        assert r["hf_trainable"] == r["ours_trainable"], r
        assert name in text
    assert (
        rows["full"]["ours_trainable"]
        > rows["top2"]["ours_trainable"]
        > rows["feature-extraction"]["ours_trainable"]
    )
    assert rows["feature-extraction"]["feature_cache"] is True
    assert rows["full"]["feature_cache"] is False
    assert rows["top2"]["feature_cache"] is False
    # top-2 of MiniLM's 6 blocks: the prefix below block 4 is cached; full caches nothing.
    assert rows["top2"]["prefix_cache_boundary"] == 4
    assert rows["full"]["prefix_cache_boundary"] is None
    assert rows["full"]["target"] == 1.0
    assert rows["top2"]["target"] == 2.0
    assert rows["feature-extraction"]["target"] == 8.0
    for r in rows.values():
        assert r["threads"] == r["hf_threads"] >= 1, r
        lo, mid, hi = (r["speed_ratio_spread"][k] for k in ("min", "median", "max"))
        assert lo <= mid <= hi, r
    assert isinstance(rows["full"]["target_met"], bool)
    runs = doc["runs"]
    assert sorted((r["policy"], r["impl"]) for r in runs) == sorted(
        (p, i) for p in ("full", "top2", "feature-extraction") for i in ("hf", "ours")
    )
    assert all(r["train_examples"] == runs[0]["train_examples"] for r in runs)


def test_transfer_policies_quick(tmp_path: Path) -> None:
    doc_path = tmp_path / "transfer-policies.md"
    text, doc = _run("transfer_policies.py", "--write-docs", str(doc_path), timeout=1700)
    policies = [
        "full",
        "feature-extraction",
        "top-k-2",
        "bitfit",
        "lora",
        "dora",
        "ia3",
        "gradual-unfreezing",
        "llrd",
        "discriminative-lr",
    ]
    for model in ("minilm", "effnet"):
        rows = {r["policy"]: r for r in doc["results"][model]}
        assert list(rows) == policies, model
        for name, r in rows.items():
            assert 0.0 <= r["accuracy"] <= 1.0, (model, name, r)
            assert 0.0 <= r["f1"] <= 1.0, (model, name, r)
            assert _positive(r["wall_seconds"]), r
            assert _positive(r["train_seconds"]), r
            assert r["train_seconds"] < r["wall_seconds"], r
            assert 100 < r["peak_rss_mb"] < 16384, r
            assert 0.0 < r["trainable_share_start"] <= r["trainable_share_end"] <= 1.0, r
        assert rows["full"]["trainable_share_end"] == 1.0
        assert rows["llrd"]["trainable_share_end"] == 1.0
        assert rows["discriminative-lr"]["trainable_share_end"] == 1.0
        # DoRA adds a magnitude per output channel to LoRA; (IA)^3 trains a scale per channel.
        assert rows["lora"]["trainable_share_end"] < rows["dora"]["trainable_share_end"] < 0.1
        assert rows["ia3"]["trainable_share_end"] < rows["lora"]["trainable_share_end"]
        fe = rows["feature-extraction"]
        assert fe["trainable_share_end"] < 0.05
        assert fe["feature_cache"] is True
        assert fe["trainable_share_end"] < rows["top-k-2"]["trainable_share_end"] < 1.0
        assert rows["bitfit"]["trainable_share_end"] < rows["top-k-2"]["trainable_share_end"]
        gu = rows["gradual-unfreezing"]
        assert gu["trainable_share_start"] == pytest.approx(fe["trainable_share_start"])
        assert gu["trainable_share_end"] == 1.0
    assert doc["results"]["minilm"][0]["num_labels"] == 10
    assert doc["results"]["effnet"][0]["num_labels"] == 10
    written = doc_path.read_text()
    assert written.count("| gradual-unfreezing") == 2
    assert "EfficientNet-Lite0" in written
    assert "all-MiniLM-L6-v2" in text
    # The report's summaries and verdicts (kubegraft compare's rule) and the plots it links.
    for model in ("minilm", "effnet"):
        assert [s["policy"] for s in doc["summaries"][model]] == policies, model
        assert doc["verdicts"][model].startswith("most accurate: "), doc["verdicts"][model]
        plot = tmp_path / "img" / f"transfer-policies-{model}.svg"
        assert plot.read_text().lstrip().startswith("<?xml"), plot
        assert f"(img/{plot.name})" in written
    assert written.count("vs the best") >= 1
