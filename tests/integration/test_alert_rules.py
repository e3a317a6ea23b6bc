"""The chart's alert rules and dashboard queries checked by the real promtool (Debian's, from
hack/build-binaries.sh): ``promtool check rules`` on the rule groups the chart's
PrometheusRule carries, ``promtool test rules`` on tests/data/rules/kubegraft.test.yaml (each
alert fires on the series that should fire it and stays quiet on healthy ones), and every
dashboard query, with its variables substituted, parsed as PromQL. No control plane."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack_scripts import load

from kubegraft.devcluster.binaries import find_bin_dir

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = sorted((ROOT / "charts" / "kubegraft" / "rules").glob("*.yaml"))
PROMTOOL_TESTS = ROOT / "tests" / "data" / "rules" / "kubegraft.test.yaml"


def chart_rule_groups() -> list[dict[str, Any]]:
    """The groups templates/prometheusrule.yaml concatenates, in its (file name) order."""
    groups: list[dict[str, Any]] = []
    for path in RULES:
        groups += yaml.safe_load(path.read_text())
    return groups


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_bin_dir() / "promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_rules(dir: Path, groups: list[dict[str, Any]]) -> Path:
    path = dir / "kubegraft-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_check_rules(tmp_path: Path) -> None:
    write_rules(tmp_path, chart_rule_groups())
    res = promtool("check", "rules", "kubegraft-rules.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 8 rules found" in res.stdout


def test_promtool_unit_tests_of_every_alert(tmp_path: Path) -> None:
    write_rules(tmp_path, chart_rule_groups())
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    res = promtool("test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_unit_tests_fail_on_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: a stall threshold ten times too long misses the hung job."""
    groups = chart_rule_groups()
    for g in groups:
        for r in g["rules"]:
            if r.get("alert") == "KubegraftTrainingStalled":
                r["expr"] = r["expr"].replace("> 900", "> 9000")
    write_rules(tmp_path, groups)
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    res = promtool("test", "rules", PROMTOOL_TESTS.name, cwd=tmp_path)
    assert res.returncode != 0
    assert "KubegraftTrainingStalled" in res.stdout + res.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, its variables substituted as Grafana would (two jobs selected), parsed by
    promtool as the expression of a recording rule."""
    dashboards = load("dashboards")
    variables = {"namespace": ["team-a"], "finetunejob": ["a", "b.c"], "job": ["kubegraft"]}
    rules = []
    for path in sorted(dashboards.generated()):
        model = json.loads(path.read_text())
        for panel in dashboards.panel_queries(model):
            for ref, expr, _ in panel.targets:
                rules.append(
                    {
                        "record": f"dashboard:{path.stem}:{panel.id}:{ref}",
                        "expr": dashboards.interpolate(expr, variables, "1m"),
                    }
                )
        for v in model["templating"]["list"]:
            if v["type"] == "query":  # label_values(<series>, <label>): the series must parse
                series = v["query"].removeprefix("label_values(").rsplit(",", 1)[0]
                rules.append(
                    {
                        "record": f"dashboard:{path.stem}:var:{v['name']}",
                        "expr": dashboards.interpolate(series, variables, "1m"),
                    }
                )
    assert len(rules) > 30
    write_rules(tmp_path, [{"name": "dashboards", "rules": rules}])
    res = promtool("check", "rules", "kubegraft-rules.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
