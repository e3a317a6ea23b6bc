"""The chart's alert rules (charts/kubegraft/rules/*.yaml) have what an on-call engineer needs:
a severity, a summary and description, a runbook_url pointing at a section of
docs/runbooks.md that exists, and a ``for:`` long enough not to flap; and every alert has a
promtool unit test (tests/data/rules/kubegraft.test.yaml) where it fires and one where it stays
quiet. promtool itself runs in tests/integration/test_alert_rules.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "charts" / "kubegraft" / "rules").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/kubegraft/kubegraft/blob/main/docs/runbooks.md#"
PROMTOOL_TESTS = ROOT / "tests" / "data" / "rules" / "kubegraft.test.yaml"


def alerts() -> list[dict[str, Any]]:
    out = []
    for path in RULES:
        groups = yaml.safe_load(path.read_text())
        assert isinstance(groups, list), f"{path}: a YAML list of rule groups"
        for g in groups:
            out += [r for r in g["rules"] if "alert" in r]
    return out


def seconds(duration: str) -> int:
    unit = {"s": 1, "m": 60, "h": 3600}
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts is not None, duration
    return sum(int(v) * unit[u] for v, u in zip(parts.groups(), "hms", strict=True) if v)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the markdown's headings."""
    out = set()
    for heading in re.findall(r"^#+\s+(.+)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_the_issue_asks_for_these_alerts() -> None:
    names = {a["alert"] for a in alerts()}
    assert names == {
        "KubegraftJobFailed",
        "KubegraftTrainingStalled",
        "KubegraftLossNaN",
        "KubegraftLossDiverging",
        "KubegraftThroughputDropped",
        "KubegraftCheckpointTooOld",
        "KubegraftOperatorDown",
        "KubegraftReconcileErrors",
    }
    assert len(names) == len(alerts()), "alert names are unique"


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_has_severity_annotations_runbook_and_for(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in ("warning", "critical")
    ann = alert["annotations"]
    assert ann["summary"].strip()
    assert len(ann["description"]) > len(ann["summary"])
    url = ann["runbook_url"]
    assert url.startswith(RUNBOOK_URL), url
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor == alert["alert"].lower()
    assert anchor in anchors(RUNBOOKS.read_text()), f"docs/runbooks.md has no section {anchor}"
    assert seconds(alert["for"]) >= 120, "a shorter for: flaps on one bad scrape"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    suite = yaml.safe_load(PROMTOOL_TESTS.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
            for exp in check["exp_alerts"]:
                assert exp["exp_annotations"]["runbook_url"].startswith(RUNBOOK_URL)
    names = {a["alert"] for a in alerts()}
    assert fires == names
    assert quiet == names
