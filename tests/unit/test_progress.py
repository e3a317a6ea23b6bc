"""Progress reports reach the file sink atomically and never break training on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubegraft.progress import ENV_PROGRESS_CONFIGMAP, ENV_PROGRESS_FILE, ProgressReport, publish

pytestmark = pytest.mark.unit


def test_report_written_to_file_as_camel_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "progress.json"
    monkeypatch.setenv(ENV_PROGRESS_FILE, str(target))
    publish(ProgressReport(step=7, total_steps=10, train_loss=0.5))
    data = json.loads(target.read_text())
    assert data["step"] == 7
    assert data["totalSteps"] == 10
    assert data["trainLoss"] == 0.5
    assert list(tmp_path.glob("sub/.progress.json.*")) == []  # no temp file left behind


def test_unreachable_configmap_sink_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_PROGRESS_FILE, raising=False)
    monkeypatch.setenv(ENV_PROGRESS_CONFIGMAP, "ns/job-progress")
    monkeypatch.setenv("KUBEGRAFT_API_SERVER", "https://127.0.0.1:1")
    monkeypatch.setenv("KUBEGRAFT_API_TOKEN", "t")
    publish(ProgressReport(step=1))  # must return quietly


def test_round_trip_accepts_wire_names() -> None:
    r = ProgressReport.model_validate_json('{"step": 3, "samplesPerSecond": 12.5, "f1": 0.7}')
    assert r.samples_per_second == 12.5
    assert r.f1 == 0.7
