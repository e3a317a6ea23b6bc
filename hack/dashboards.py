#!/usr/bin/env python3
"""Generates the chart's Grafana dashboards with grafana-foundation-sdk's typed builders.

    hack/in-env.sh python hack/dashboards.py           # write charts/kubegraft/dashboards/*.json
    hack/in-env.sh python hack/dashboards.py --check   # exit 1 and name the stale ones

The dashboards are described here as data (rows of :class:`PanelSpec`), and one function turns
that into the SDK's builders: panel ids, query refIds, the datasource (always the
``$datasource`` variable) and the grid are assigned in one place, so the rules that
tests/unit/test_dashboards.py enforces (the ones Grafana's dashboard linter checks) hold by
construction and the test only has to prove it. The chart's templates/dashboards.yaml turns
every generated file into a ConfigMap labelled ``grafana_dashboard: "1"``.

The series are the metrics contract (docs/observability.md): trainer series carry
``namespace`` and ``finetunejob``; the operator's carry the scrape target's ``job``. The GPU row
joins NVIDIA's DCGM exporter series to the jobs through the trainer pods' names (see
:data:`POD_OF_JOB`), so it needs neither kube-state-metrics nor a relabelling rule.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    VariableRefresh,
    VariableSort,
)

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "charts" / "kubegraft" / "dashboards"
REGENERATE = "hack/in-env.sh python hack/dashboards.py"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
"""Every panel and query variable reads the ``$datasource`` variable, never a fixed uid."""

JOBS = 'namespace=~"$namespace", finetunejob=~"$finetunejob"'
"""The label matchers of every trainer query: the selected namespace and FineTuneJobs."""
BY_JOB = "namespace, finetunejob"

POD_OF_JOB = "($finetunejob)-worker-[0-9]+-a[0-9]+"
"""The trainer pods of the selected jobs: ``<job>-worker-<rank>-a<attempt>``
(kubegraft_operator.names.pod; tests/unit/test_dashboards.py checks the two agree). Grafana
writes a multi-value ``$finetunejob`` as ``(a|b)``; PromQL regexes are anchored."""
JOB_OF_POD = "(.+)-worker-[0-9]+-a[0-9]+"
"""The same name read backwards: label_replace() gives DCGM's series a ``finetunejob``."""

OPERATOR = 'job=~"$job"'
"""The operator's series, by the scrape job the ``$job`` variable selects (a ServiceMonitor
names it after the chart's metrics Service, a static config after its job_name)."""

Kind = Literal["timeseries", "stat"]


@dataclass(frozen=True)
class Query:
    """One PromQL target; ``legend`` is Grafana's legendFormat."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """What a panel shows; the builders add the rest."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    stacked: bool = False


@dataclass(frozen=True)
class Variable:
    """A query variable over one label of one series."""

    name: str
    label: str
    description: str
    query: str
    multi: bool = False


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    variables: tuple[Variable, ...]
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...]
    tags: tuple[str, ...] = field(default=("kubegraft",))


# ---------------------------------------------------------------------------- PromQL helpers
def rate(series: str, matchers: str = JOBS, by: str = BY_JOB) -> str:
    """Per-second rate of a counter, summed per job (over the pods of its attempts)."""
    return f"sum by ({by}) (rate({series}{{{matchers}}}[$__rate_interval]))"


def quantile(q: float, histogram: str, matchers: str = JOBS, by: str = BY_JOB) -> str:
    """The ``q`` quantile of a histogram over the rate interval."""
    return (
        f"histogram_quantile({q}, sum by ({by}, le) "
        f"(rate({histogram}_bucket{{{matchers}}}[$__rate_interval])))"
    )


def dcgm(series: str, aggregate: str = "avg") -> str:
    """A DCGM exporter series of the selected jobs' trainer pods, per pod, with the job name
    (``finetunejob``) read from the pod name."""
    pods = f'namespace=~"$namespace", pod=~"{POD_OF_JOB}"'
    joined = f'label_replace({series}{{{pods}}}, "finetunejob", "$1", "pod", "{JOB_OF_POD}")'
    return f"{aggregate} by (namespace, finetunejob, pod) ({joined})"


# ---------------------------------------------------------------------------- the dashboards
def training_spec() -> DashboardSpec:
    """Training: progress, loss and evaluations, throughput, step time, reliability, GPUs."""
    each = "{{namespace}}/{{finetunejob}}"
    each_set = "{{finetunejob}} {{set}}"
    progress = (
        PanelSpec(
            "Progress",
            "Optimizer steps done over the run's planned steps (kubegraft_trainer_progress_ratio).",
            "percentunit",
            (Query(f"kubegraft_trainer_progress_ratio{{{JOBS}}}", each),),
            kind="stat",
            width=6,
            height=5,
            min=0,
            max=1,
        ),
        PanelSpec(
            "ETA",
            "Estimated time to the end of training, from the recent step rate "
            "(kubegraft_trainer_eta_seconds; 0 when done).",
            "s",
            (Query(f"kubegraft_trainer_eta_seconds{{{JOBS}}}", each),),
            kind="stat",
            width=6,
            height=5,
        ),
        PanelSpec(
            "Steps",
            "Optimizer steps done (progress x planned: resumed attempts included) and "
            "planned for the whole run.",
            "short",
            (
                Query(
                    f"round(kubegraft_trainer_progress_ratio{{{JOBS}}}"
                    f" * kubegraft_trainer_planned_steps{{{JOBS}}})",
                    f"{each} done",
                ),
                Query(f"kubegraft_trainer_planned_steps{{{JOBS}}}", f"{each} planned"),
            ),
            kind="stat",
            width=6,
            height=5,
        ),
        PanelSpec(
            "Epoch",
            "Fractional epoch of the training data (kubegraft_trainer_epoch).",
            "none",
            (Query(f"kubegraft_trainer_epoch{{{JOBS}}}", each),),
            kind="stat",
            width=6,
            height=5,
        ),
    )
    learning = (
        PanelSpec(
            "Training loss",
            "Training loss over the last logging window, mean over ranks (kubegraft_trainer_loss).",
            "none",
            (Query(f"kubegraft_trainer_loss{{{JOBS}}}", each),),
        ),
        PanelSpec(
            "Evaluation loss",
            "Loss of the latest evaluation, per evaluation set (kubegraft_trainer_eval_loss).",
            "none",
            (Query(f"kubegraft_trainer_eval_loss{{{JOBS}}}", each_set),),
        ),
        PanelSpec(
            "Evaluation accuracy and F1",
            "Accuracy and macro F1 of the latest evaluation, per evaluation set (0-1).",
            "percentunit",
            (
                Query(f"kubegraft_trainer_eval_accuracy{{{JOBS}}}", f"{each_set} accuracy"),
                Query(f"kubegraft_trainer_eval_f1{{{JOBS}}}", f"{each_set} F1"),
            ),
            min=0,
            max=1,
        ),
        PanelSpec(
            "Evaluation precision and recall",
            "Macro precision and recall of the latest evaluation, per evaluation set (0-1).",
            "percentunit",
            (
                Query(f"kubegraft_trainer_eval_precision{{{JOBS}}}", f"{each_set} precision"),
                Query(f"kubegraft_trainer_eval_recall{{{JOBS}}}", f"{each_set} recall"),
            ),
            min=0,
            max=1,
        ),
        PanelSpec(
            "Learning rate",
            "Current peak learning rate of the optimizer (kubegraft_trainer_learning_rate).",
            "none",
            (Query(f"kubegraft_trainer_learning_rate{{{JOBS}}}", each),),
        ),
        PanelSpec(
            "Gradient norm",
            "Global gradient norm before clipping, last optimizer step "
            "(kubegraft_trainer_grad_norm): spikes warn of divergence.",
            "none",
            (Query(f"kubegraft_trainer_grad_norm{{{JOBS}}}", each),),
        ),
    )
    speed = (
        PanelSpec(
            "Samples per second",
            "Training examples processed per second, all ranks "
            "(rate of kubegraft_trainer_samples_total).",
            "suffix: samples/s",
            (Query(rate("kubegraft_trainer_samples_total"), each),),
            width=8,
        ),
        PanelSpec(
            "Tokens per second",
            "Non-padding tokens processed per second, all ranks (text tasks only; "
            "rate of kubegraft_trainer_tokens_total).",
            "suffix: tokens/s",
            (Query(rate("kubegraft_trainer_tokens_total"), each),),
            width=8,
        ),
        PanelSpec(
            "Step time p50 / p99",
            "Wall time of one optimizer step: median and 99th percentile over the rate "
            "interval (kubegraft_trainer_step_duration_seconds).",
            "s",
            (
                Query(quantile(0.5, "kubegraft_trainer_step_duration_seconds"), f"{each} p50"),
                Query(quantile(0.99, "kubegraft_trainer_step_duration_seconds"), f"{each} p99"),
            ),
            width=8,
        ),
    )
    reliability = (
        PanelSpec(
            "Checkpoint age",
            "Time since the last committed checkpoint: the work a preemption would lose "
            "(alert KubegraftCheckpointTooOld).",
            "s",
            (
                Query(
                    f"time() - kubegraft_trainer_last_checkpoint_timestamp_seconds{{{JOBS}}}",
                    each,
                ),
            ),
            width=6,
        ),
        PanelSpec(
            "Time since last step",
            "Time since the last optimizer step; grows during evaluations and checkpoints, "
            "and without bound when training hangs (alert KubegraftTrainingStalled).",
            "s",
            (Query(f"time() - kubegraft_trainer_last_step_timestamp_seconds{{{JOBS}}}", each),),
            width=6,
        ),
        PanelSpec(
            "Restarts and preemptions",
            "Restarts of the job before the running attempt (attempt - 1: gang restarts and "
            "resumes after a preemption) and, of those, the preemptions.",
            "short",
            (
                Query(f"kubegraft_trainer_attempt{{{JOBS}}} - 1", f"{each} restarts"),
                Query(f"kubegraft_trainer_preemptions{{{JOBS}}}", f"{each} preemptions"),
            ),
            width=6,
        ),
        PanelSpec(
            "Trainable share",
            "Parameters receiving gradients over all parameters of the model; rises as "
            "gradual unfreezing thaws stages.",
            "percentunit",
            (
                Query(
                    f"kubegraft_trainer_trainable_parameters{{{JOBS}}}"
                    f" / kubegraft_trainer_parameters{{{JOBS}}}",
                    each,
                ),
            ),
            width=6,
            min=0,
            max=1,
        ),
    )
    gpus = (
        PanelSpec(
            "GPU utilization",
            "DCGM_FI_DEV_GPU_UTIL of the jobs' trainer pods (NVIDIA DCGM exporter), mean over "
            "each pod's GPUs; joined to the jobs by pod name.",
            "percent",
            (Query(dcgm("DCGM_FI_DEV_GPU_UTIL"), "{{pod}}"),),
            width=8,
            min=0,
            max=100,
        ),
        PanelSpec(
            "GPU memory used",
            "DCGM_FI_DEV_FB_USED (framebuffer memory in use, MiB) of the jobs' trainer pods, "
            "summed over each pod's GPUs.",
            "mbytes",
            (Query(dcgm("DCGM_FI_DEV_FB_USED", "sum"), "{{pod}}"),),
            width=8,
        ),
        PanelSpec(
            "Tensor core activity",
            "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE (share of cycles the tensor pipes are busy, 0-1) "
            "of the jobs' trainer pods, mean over each pod's GPUs.",
            "percentunit",
            (Query(dcgm("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"), "{{pod}}"),),
            width=8,
            min=0,
            max=1,
        ),
    )
    return DashboardSpec(
        uid="kubegraft-training",
        title="kubegraft / Training",
        description="FineTuneJob training: progress, loss and evaluations, throughput, step "
        "time, checkpoints, restarts, trainable share and the trainer pods' GPUs.",
        variables=(
            Variable(
                "namespace",
                "Namespace",
                "Namespaces with kubegraft trainers.",
                "label_values(kubegraft_trainer_planned_steps, namespace)",
            ),
            Variable(
                "finetunejob",
                "FineTuneJob",
                "FineTuneJobs of the namespace (several may be compared).",
                'label_values(kubegraft_trainer_planned_steps{namespace=~"$namespace"}, '
                "finetunejob)",
                multi=True,
            ),
        ),
        rows=(
            ("Progress", progress),
            ("Loss and evaluation", learning),
            ("Throughput", speed),
            ("Checkpoints, restarts, parameters", reliability),
            ("GPU (NVIDIA DCGM exporter)", gpus),
        ),
    )


def operator_spec() -> DashboardSpec:
    """Operator: jobs by state, reconcile latency and results, restarts, API errors, queue."""
    return DashboardSpec(
        uid="kubegraft-operator",
        title="kubegraft / Operator",
        description="The kubegraft operator: FineTuneJobs by state, reconciles, gang "
        "restarts, Kubernetes API errors and how long jobs wait for their pods.",
        variables=(
            Variable(
                "job",
                "Scrape job",
                "The Prometheus scrape job of the operator's /metrics.",
                "label_values(kubegraft_operator_jobs, job)",
            ),
        ),
        rows=(
            (
                "Jobs",
                (
                    PanelSpec(
                        "Operator replicas up",
                        "Operator replicas Prometheus scrapes successfully (alert "
                        "KubegraftOperatorDown when none is).",
                        "short",
                        (Query(f"sum(up{{{OPERATOR}}})", "up"),),
                        kind="stat",
                        width=6,
                    ),
                    PanelSpec(
                        "FineTuneJobs by state",
                        "FineTuneJobs the acting operator knows, by state "
                        "(kubegraft_operator_jobs; max over replicas: only the leader counts).",
                        "short",
                        (
                            Query(
                                f"max by (state) (kubegraft_operator_jobs{{{OPERATOR}}})",
                                "{{state}}",
                            ),
                        ),
                        width=18,
                        stacked=True,
                    ),
                ),
            ),
            (
                "Reconciles",
                (
                    PanelSpec(
                        "Reconcile latency p50 / p99",
                        "Time of one reconcile (observe, decide, apply, status write): median "
                        "and 99th percentile (kubegraft_operator_reconcile_duration_seconds).",
                        "s",
                        (
                            Query(
                                quantile(
                                    0.5,
                                    "kubegraft_operator_reconcile_duration_seconds",
                                    OPERATOR,
                                    "job",
                                ),
                                "p50",
                            ),
                            Query(
                                quantile(
                                    0.99,
                                    "kubegraft_operator_reconcile_duration_seconds",
                                    OPERATOR,
                                    "job",
                                ),
                                "p99",
                            ),
                        ),
                    ),
                    PanelSpec(
                        "Reconciles by result",
                        "Reconciles per second, ok or error (alert KubegraftReconcileErrors).",
                        "reqps",
                        (
                            Query(
                                rate("kubegraft_operator_reconciles_total", OPERATOR, "result"),
                                "{{result}}",
                            ),
                        ),
                    ),
                ),
            ),
            (
                "Failures and waiting",
                (
                    PanelSpec(
                        "Gang restarts by reason",
                        "Whole-gang restarts per second, by the operator's fixed reasons "
                        "(kubegraft_operator_gang_restarts_total).",
                        "reqps",
                        (
                            Query(
                                rate("kubegraft_operator_gang_restarts_total", OPERATOR, "reason"),
                                "{{reason}}",
                            ),
                        ),
                        width=8,
                        stacked=True,
                    ),
                    PanelSpec(
                        "Kubernetes API errors",
                        "Failed Kubernetes API requests per second, by operation and HTTP "
                        "status (0: no response) (kubegraft_operator_api_errors_total).",
                        "reqps",
                        (
                            Query(
                                rate(
                                    "kubegraft_operator_api_errors_total",
                                    OPERATOR,
                                    "operation, code",
                                ),
                                "{{operation}} {{code}}",
                            ),
                        ),
                        width=8,
                        stacked=True,
                    ),
                    PanelSpec(
                        "Queue wait p50 / p99",
                        "From a job's creation or resume to all its pods created, suspended "
                        "and queued time included (kubegraft_operator_queue_wait_seconds).",
                        "s",
                        (
                            Query(
                                quantile(
                                    0.5, "kubegraft_operator_queue_wait_seconds", OPERATOR, "job"
                                ),
                                "p50",
                            ),
                            Query(
                                quantile(
                                    0.99, "kubegraft_operator_queue_wait_seconds", OPERATOR, "job"
                                ),
                                "p99",
                            ),
                        ),
                        width=8,
                    ),
                ),
            ),
        ),
    )


# ---------------------------------------------------------------------------- the builders
def _target(query: Query, ref: str, instant: bool) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(query.expr).ref_id(ref).datasource(DATASOURCE)
    if query.legend:
        t = t.legend_format(query.legend)
    return t.instant() if instant else t.range()


def _panel(spec: PanelSpec, panel_id: int) -> timeseries.Panel | stat.Panel:
    builder: timeseries.Panel | stat.Panel
    if spec.kind == "stat":
        builder = (
            stat.Panel()
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
            .graph_mode(common.BigValueGraphMode.AREA)
        )
    else:
        builder = (
            timeseries.Panel()
            .line_width(1)
            .fill_opacity(10)
            .show_points(common.VisibilityMode.NEVER)
            .legend(
                common_builders.VizLegendOptions()
                .show_legend(True)
                .display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM)
            )
        )
        if spec.stacked:
            builder = builder.stacking(
                common_builders.StackingConfig().mode(common.StackingMode.NORMAL)
            )
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(DATASOURCE)
        .span(spec.width)
        .height(spec.height)
    )
    if spec.min is not None:
        builder = builder.min(spec.min)
    if spec.max is not None:
        builder = builder.max(spec.max)
    for i, query in enumerate(spec.queries):
        builder = builder.with_target(_target(query, chr(ord("A") + i), spec.kind == "stat"))
    return builder


def _variable(v: Variable) -> db.QueryVariable:
    return (
        db.QueryVariable(v.name)
        .label(v.label)
        .description(v.description)
        .datasource(DATASOURCE)
        .query(v.query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(v.multi)
        .include_all(v.multi)
    )


def build(spec: DashboardSpec) -> Dashboard:
    """The dashboard model of ``spec``: ids 1.. in reading order (rows included)."""
    d = (
        db.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(list(spec.tags))
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .timezone("browser")
        .refresh("30s")
        .with_variable(
            db.DatasourceVariable("datasource")
            .label("Data source")
            .description("The Prometheus that scrapes kubegraft.")
            .type("prometheus")
        )
    )
    for v in spec.variables:
        d = d.with_variable(_variable(v))
    next_id = 1
    for title, panels in spec.rows:
        d = d.with_row(db.Row(title).id(next_id))
        next_id += 1
        for p in panels:
            d = d.with_panel(_panel(p, next_id))
            next_id += 1
    return d.build()


def to_json(dashboard: Dashboard) -> str:
    """The dashboard as Grafana's JSON model (stable: sorted keys, a final newline)."""
    return json.dumps(dashboard, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------- reading them
@dataclass(frozen=True)
class PanelQueries:
    """A panel of a dashboard's JSON model and its PromQL targets (refId, expr, legend)."""

    id: int
    title: str
    kind: str
    unit: str
    targets: tuple[tuple[str, str, str], ...]


def panel_queries(model: dict[str, Any]) -> list[PanelQueries]:
    """The query panels of a dashboard's JSON model (rows skipped), in reading order."""
    out = []
    for p in model["panels"]:
        if p["type"] == "row":
            continue
        unit = str(p.get("fieldConfig", {}).get("defaults", {}).get("unit", ""))
        targets = tuple(
            (str(t["refId"]), str(t["expr"]), str(t.get("legendFormat", "")))
            for t in p.get("targets", [])
        )
        out.append(PanelQueries(int(p["id"]), str(p["title"]), str(p["type"]), unit, targets))
    return out


def rate_interval(step_seconds: float, scrape_seconds: float) -> str:
    """Grafana's ``$__rate_interval``: max(``$__interval`` + scrape interval, 4 x scrape
    interval), where ``$__interval`` is the query's step."""
    return f"{round(max(step_seconds + scrape_seconds, 4 * scrape_seconds) * 1000)}ms"


def _regex_escape(value: str) -> str:
    """Grafana's escaping of a variable's value inside a PromQL regex (a string literal:
    the backslash is doubled)."""
    return re.sub(r"([\\$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def interpolate(expr: str, variables: Mapping[str, Sequence[str]], rate: str) -> str:
    """``expr`` with its variables substituted as Grafana's Prometheus data source does: one
    value as itself, several (a multi-value variable) as ``(a|b)``, ``$__rate_interval`` as
    ``rate``; unknown names (label_replace's ``$1``) stay as they are."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name == "__rate_interval":
            return rate
        if name not in variables:
            return match.group(0)
        values = [_regex_escape(v) for v in variables[name]]
        return values[0] if len(values) == 1 else f"({'|'.join(values)})"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def generated() -> dict[Path, str]:
    """Every generated file and its content."""
    return {
        OUT_DIR / "training.json": to_json(build(training_spec())),
        OUT_DIR / "operator.json": to_json(build(operator_spec())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
