"""The kubectl plugin's pure parts: the progress bar, the status report and the choice of pod
for ``logs`` (tests/integration/test_kubectl_graft.py runs it against the API server)."""

from __future__ import annotations

import pytest

from kubegraft import kubectl_graft as kg

pytestmark = pytest.mark.unit


def test_progress_bar_fills_with_the_percentage() -> None:
    assert kg.progress_bar(0, width=10) == "[..........]   0%"
    assert kg.progress_bar(45, width=10) == "[####......]  45%"
    assert kg.progress_bar(100, width=10) == "[##########] 100%"
    assert kg.progress_bar(None, width=4) == "[    ]    ?"


def test_status_report_of_a_running_job() -> None:
    job = {
        "metadata": {"name": "q", "namespace": "ns"},
        "status": {
            "state": "Running",
            "progress": {
                "step": 90,
                "totalSteps": 200,
                "percent": 45,
                "epoch": 1.5,
                "eta": "2m10s",
            },
            "metrics": {"trainLoss": 0.51234, "accuracy": 0.8},
            "restarts": 2,
            "lastRestartReason": "PodFailed",
            "nodesReady": "2/2",
        },
    }
    out = kg.status_report(job)
    assert "ns/q: Running" in out
    assert "[##############................]  45%  step 90/200, epoch 1.50" in out
    assert "eta       2m10s" in out
    assert "metrics   trainLoss=0.5123 accuracy=0.8" in out
    assert "restarts  2 (last: PodFailed)" in out
    assert "failed" not in out


def test_status_report_names_the_failure_reason() -> None:
    job = {
        "metadata": {"name": "q", "namespace": "ns"},
        "status": {"state": "Failed", "reason": "BackoffLimitExceeded", "message": "exit 137"},
    }
    assert "failed    BackoffLimitExceeded: exit 137" in kg.status_report(job)
    assert kg.status_table([job]).splitlines()[1].split()[-1] == "BackoffLimitExceeded"


def _pod(name: str, rank: int, attempt: int) -> dict[str, object]:
    labels = {kg.LABEL_NODE_RANK: str(rank), kg.LABEL_ATTEMPT: str(attempt)}
    return {"metadata": {"name": name, "labels": labels}}


def test_logs_pick_the_rank_of_the_newest_attempt() -> None:
    pods = [_pod("a0", 0, 0), _pod("b0", 1, 0), _pod("a1", 0, 1), _pod("b1", 1, 1)]
    assert kg.pick_pod(pods, 0)["metadata"]["name"] == "a1"
    assert kg.pick_pod(pods, 1)["metadata"]["name"] == "b1"
    with pytest.raises(kg.PluginError, match=r"no pod of node rank 3 \(ranks with pods: 0, 1\)"):
        kg.pick_pod(pods, 3)
