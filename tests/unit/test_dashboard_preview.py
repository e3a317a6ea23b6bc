"""hack/dashboard_preview.py's pure parts: Grafana's legend formats and units, and a preview
drawn for every panel of the chart's dashboards (with "No data" where a query answered
nothing). Against a real Prometheus: tests/e2e/test_observability.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hack_scripts import load

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


preview = load("dashboard_preview")


def test_legend_format_and_units() -> None:
    labels = {"namespace": "team-a", "finetunejob": "ft", "set": "validation"}
    assert preview.legend("{{finetunejob}} {{ set }}", labels) == "ft validation"
    assert preview.legend("", {"b": "2", "a": "1"}) == '{a="1", b="2"}'
    assert preview.format_value(0.256, "percentunit") == "25.6%"
    assert preview.format_value(42.0, "percent") == "42.0%"
    assert preview.format_value(5400, "s") == "1.5 h"
    assert preview.format_value(90, "s") == "1.5 min"
    assert preview.format_value(2048, "mbytes") == "2.0 GiB"
    assert preview.format_value(12.5, "suffix: samples/s") == "12.5 samples/s"


def test_every_panel_is_drawn(tmp_path: Path) -> None:
    name = "training"  # stat and time-series panels, rows, data and "No data"
    model = json.loads((ROOT / "charts/kubegraft/dashboards" / f"{name}.json").read_text())
    panels = []
    for i, p in enumerate(preview._dashboards().panel_queries(model)):
        points = tuple((1_700_000_000.0 + t, float(t % 7)) for t in range(30)) if i % 3 else ()
        series = tuple(preview.Series(ref, f"{p.title} {ref}", points) for ref, _, _ in p.targets)
        queries = tuple((r, e) for r, e, _ in p.targets)
        panels.append(preview.PanelData(p.id, p.title, p.kind, p.unit, queries, series))
    assert panels[0].empty_targets() == [ref for ref, _ in panels[0].queries]
    out = preview.render(model, panels, tmp_path / f"{name}.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
