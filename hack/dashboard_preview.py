#!/usr/bin/env python3
"""Draws a Grafana dashboard's panels as one PNG from a real Prometheus's answers.

Grafana itself cannot run on these machines (docs/observability.md says why), so this is how
a reader sees what the chart's dashboards show: every query of every panel, its variables
substituted as Grafana substitutes them (hack/dashboards.py), is sent to Prometheus's
``query_range`` API over the given time range, and the answers are drawn on the dashboard's
own grid: time series as lines, stat panels as their last value, each with its unit.

    hack/in-env.sh python hack/dashboard_preview.py --prometheus http://127.0.0.1:9090 \\
        --dashboard charts/kubegraft/dashboards/training.json --var namespace=team-a \\
        --var finetunejob=qs --since 15m --out training.png

tests/e2e/test_observability.py runs the same functions against a Prometheus that scraped a
real training run, checks that every query returns data, and writes the previews
docs/observability.md shows (``KUBEGRAFT_WRITE_PREVIEWS=docs/img``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _dashboards() -> ModuleType:
    """hack/dashboards.py (a script, not a package): its interpolation and panel reader."""
    if "dashboards" in sys.modules:
        return sys.modules["dashboards"]
    spec = importlib.util.spec_from_file_location("dashboards", HERE / "dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dashboards"] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Series:
    """One answered series of one target: its legend and its (unix time, value) points."""

    ref: str
    legend: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PanelData:
    id: int
    title: str
    kind: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    """(refId, the PromQL sent) per target."""
    series: tuple[Series, ...]

    def empty_targets(self) -> list[str]:
        """The refIds whose query returned no point."""
        answered = {s.ref for s in self.series if s.points}
        return [ref for ref, _ in self.queries if ref not in answered]


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' label value."""
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """Prometheus's ``/api/v1/query_range`` answer (the matrix), or an error naming the query."""
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"}
    )
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.loads(r.read())
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def fetch(
    prometheus: str,
    model: dict[str, Any],
    variables: Mapping[str, Sequence[str]],
    *,
    start: float,
    end: float,
    step: float,
    scrape_interval: float,
) -> list[PanelData]:
    """Every panel's queries over [start, end], as Grafana would send them."""
    dashboards = _dashboards()
    rate = dashboards.rate_interval(step, scrape_interval)
    out = []
    for panel in dashboards.panel_queries(model):
        queries, series = [], []
        for ref, expr, fmt in panel.targets:
            sent = dashboards.interpolate(expr, variables, rate)
            queries.append((ref, sent))
            for s in query_range(prometheus, sent, start, end, step):
                points = tuple(
                    (float(t), float(v)) for t, v in s["values"] if v not in ("NaN", "+Inf")
                )
                series.append(Series(ref, legend(fmt, s["metric"]), points))
        out.append(
            PanelData(panel.id, panel.title, panel.kind, panel.unit, tuple(queries), tuple(series))
        )
    return out


def format_value(value: float, unit: str) -> str:
    """A value in a Grafana unit, roughly as Grafana prints it."""
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "percent":
        return f"{value:.1f}%"
    if unit == "s":
        if abs(value) >= 3600:
            return f"{value / 3600:.1f} h"
        if abs(value) >= 60:
            return f"{value / 60:.1f} min"
        return f"{value:.3g} s"
    if unit == "mbytes":
        return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value:.0f} MiB"
    if unit.startswith("suffix:"):
        return f"{value:.3g} {unit.removeprefix('suffix:').strip()}"
    if unit == "reqps":
        return f"{value:.3g}/s"
    return f"{value:.4g}"


def clock(t: float) -> str:
    """A unix time as the dashboard's time axis shows it (UTC)."""
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def render(model: dict[str, Any], panels: Sequence[PanelData], out: Path) -> Path:
    """The dashboard's grid (24 columns) with each panel drawn from its data, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    data = {p.id: p for p in panels}
    times = [t for p in panels for s in p.series for t, _ in s.points]
    span = (min(times), max(times)) if times else None
    grid = {p["id"]: p["gridPos"] for p in model["panels"]}
    rows = {p["id"]: p["title"] for p in model["panels"] if p["type"] == "row"}
    height = max(g["y"] + g["h"] for g in grid.values())
    col, row = 0.62, 0.3  # inches per grid unit
    fig = plt.figure(figsize=(24 * col, height * row + 0.6), facecolor="#181b1f")
    fig.suptitle(model["title"], color="white", x=0.01, ha="left", fontsize=13)
    top = 1 - 0.6 / (height * row + 0.6)

    def box(g: dict[str, int], stat: bool) -> tuple[float, float, float, float]:
        x0, w = g["x"] / 24, g["w"] / 24
        y1 = top * (1 - g["y"] / height)
        h = top * g["h"] / height
        pad = 0.0 if stat else 0.035  # room for the value axis' labels
        return (x0 + 0.004 + pad, y1 - h + 0.02, w - 0.008 - pad, h - 0.045)

    for pid, title in rows.items():
        g = grid[pid]
        fig.text(0.005, top * (1 - (g["y"] + 0.6) / height), title, color="#ccccdc", fontsize=11,
                 weight="bold")  # fmt: skip
    for pid, p in data.items():
        ax = fig.add_axes(box(grid[pid], p.kind == "stat"), facecolor="#111217")
        ax.set_title(p.title, color="#ccccdc", fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        drawn = [s for s in p.series if s.points]
        if not drawn:
            ax.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if p.kind == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            lines = [f"{format_value(s.points[-1][1], p.unit)}" for s in drawn[:4]]
            names = [s.legend for s in drawn[:4]]
            for i, (value, name) in enumerate(zip(lines, names, strict=True)):
                y = 1 - (i + 0.75) / max(len(lines), 1) * 0.95
                ax.text(0.5, y, value, color="#73bf69", ha="center", va="center",
                        fontsize=16 if len(lines) == 1 else 11, weight="bold",
                        transform=ax.transAxes)  # fmt: skip
                ax.text(0.5, y - 0.17 / max(len(lines), 1), name, color="#8e8e8e",
                        ha="center", va="center", fontsize=6, transform=ax.transAxes)  # fmt: skip
            continue
        for s in drawn:
            ax.plot(
                [t for t, _ in s.points],
                [v for _, v in s.points],
                linewidth=1.2,
                label=s.legend[:48],
            )
        if span is not None:  # one time range for every panel, as on a dashboard
            ax.set_xlim(span[0], span[1])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: clock(t)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, unit=p.unit: format_value(v, unit)))
        ax.grid(color="#2c3235", linewidth=0.5)
        ax.legend(fontsize=6, loc="best", facecolor="#181b1f", labelcolor="#ccccdc",
                  edgecolor="#2c3235")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 15m or 2h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL of the Prometheus")
    parser.add_argument("--dashboard", type=Path, required=True, help="a dashboard JSON file")
    parser.add_argument("--var", action="append", default=[], help="NAME=VALUE[,VALUE...]")
    parser.add_argument("--since", type=_duration, default=_duration("1h"))
    parser.add_argument("--scrape-interval", type=_duration, default=_duration("30s"))
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    variables = {}
    for item in args.var:
        name, _, values = item.partition("=")
        variables[name] = values.split(",")
    model = json.loads(args.dashboard.read_text())
    end = time.time()
    step = max(args.since / 200, 1.0)
    panels = fetch(args.prometheus, model, variables, start=end - args.since, end=end,
                   step=step, scrape_interval=args.scrape_interval)  # fmt: skip
    render(model, panels, args.out)
    for p in panels:
        for ref in p.empty_targets():
            print(f"no data: {p.title} ({ref})", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
