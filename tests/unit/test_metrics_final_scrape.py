"""Rank 0 keeps /metrics up at the end of a run until Prometheus has read the final values
(``KUBEGRAFT_METRICS_FINAL_SCRAPE_SECONDS``): without it a run's last evaluation usually never
reaches Prometheus, since the process exits right after writing metrics.json."""

from __future__ import annotations

import threading
import urllib.request

import pytest

from kubegraft.devcluster.cluster import free_port
from kubegraft_trainer.metrics_exporter import TrainingMetrics

pytestmark = pytest.mark.unit


def test_hold_returns_after_a_scrape_that_reads_the_final_values() -> None:
    m = TrainingMetrics(namespace="team-a", finetunejob="ft")
    port = m.serve(free_port())
    assert port is not None
    url = f"http://127.0.0.1:{port}/metrics"
    urllib.request.urlopen(url, timeout=10).read()  # an earlier scrape does not count
    result: list[bool] = []
    holder = threading.Thread(target=lambda: result.append(m.hold_until_scraped(120)))
    m.on_end(step=7)  # the final values, set before the hold begins
    holder.start()
    while holder.is_alive():  # scrape until the holder has seen one that began after it
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        holder.join(timeout=0.05)
    assert result == [True]
    assert 'kubegraft_trainer_eta_seconds{finetunejob="ft",namespace="team-a"} 0.0' in body


def test_no_hold_by_default_and_a_bounded_one_without_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = TrainingMetrics(namespace="team-a", finetunejob="ft")
    monkeypatch.delenv("KUBEGRAFT_METRICS_FINAL_SCRAPE_SECONDS", raising=False)
    assert m.hold_until_scraped() is False
    monkeypatch.setenv("KUBEGRAFT_METRICS_FINAL_SCRAPE_SECONDS", "0.1")
    assert m.hold_until_scraped() is False  # nobody scrapes: it gives up after the bound
