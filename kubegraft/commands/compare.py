"""``kubegraft compare JOB.yaml --policies ...``: which freezing policy for my data?

Runs short trials of each policy on the user's own manifest -- the same data, the same budget,
``--seeds`` seeds each -- then prints the table (accuracy, macro-F1, cost in CPU-core seconds,
trainable share), writes ``compare.png`` (accuracy against cost, with standard-error bars) and
``compare.json``, and says which policy wins per unit of cost and whether the lead is beyond
noise (:mod:`kubegraft.policy_compare`). This module imports no torch.

Where the trials run:

* locally (default): one after the other, each a plain ``kubegraft run`` of the manifest with
  ``spec.freeze``, the budget and the seed overridden (so a trial is exactly what that run
  would do), ``--nproc`` processes, in ``<output>/<policy>-seed<k>``;
* ``--cluster``: one FineTuneJob per trial in the kube context's namespace (or
  ``--namespace``), labelled as one comparison, results read from their status
  (:mod:`kubegraft.compare_cluster`); deleted at the end unless ``--keep``.

The budget: ``--budget-steps N`` gives every trial N optimizer steps. ``--budget-seconds S``
gives every trial the same training time, S seconds, by converting it to steps per policy:
each policy first runs a short local calibration (``--calibration-steps``, default 5), whose
``metrics.json`` splits its training time into the steps (``step_seconds``: the loop to the
end of its last step, loaders and logging included) and what a trial pays once (the
frozen-feature or prefix cache, the final evaluation and save); the trial then gets
``floor((S - fixed) / seconds_per_step)`` steps
(:func:`kubegraft.policy_compare.steps_for_budget`). Why steps and not a clock inside the
trainer that stops training at S: a trial stays a reproducible run of the manifest (the same
steps for the same seed, whatever the machine's load during it), every rank stops at the same
step without a time-based collective, the cluster's trials are plain FineTuneJobs with
``maxSteps``, and the feature-extraction cache -- most of that policy's cost -- is charged to
the budget instead of being cut off by it. The price: a calibration run per policy, and the
budget holds as well as the machine's speed during the calibration predicts the trial's; the
``compare.json`` keeps each trial's measured training seconds next to the budget. With
``--cluster``, ``--budget-seconds`` is refused: the status of a FineTuneJob does not split its
time into steps and the rest, and a local calibration would not predict a cluster node.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kubegraft.commands.overrides import OverrideError, add_set_argument, apply_override
from kubegraft.policy_compare import (
    POLICY_NAMES,
    Calibration,
    PolicySummary,
    calibration,
    policy_freeze,
    status_record,
    steps_for_budget,
    summarise,
    table,
    verdict,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare this command's arguments."""
    parser.add_argument("manifest", help="the FineTuneJob manifest (YAML)")
    parser.add_argument(
        "--policies",
        default="feature-extraction,top-k:2,lora,full",
        help="comma-separated: " + ", ".join(POLICY_NAMES),
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget-steps", type=int, default=None, help="optimizer steps per trial (default 50)"
    )
    budget.add_argument(
        "--budget-seconds",
        type=float,
        default=None,
        help="training seconds per trial, converted to steps per policy by a calibration run",
    )
    parser.add_argument(
        "--calibration-steps",
        type=int,
        default=5,
        help="steps of each policy's calibration run for --budget-seconds (default 5)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per policy (>= 2 for a spread)")
    parser.add_argument("--nproc", type=int, default=1, help="local processes per trial")
    add_set_argument(
        parser, "an override applied to every trial, as for kubegraft run (repeatable)"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="where the trials (local) and the table, plot and json go "
        "(default: ./runs/compare-<job-name>)",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="run each trial as a FineTuneJob in the current kube context",
    )
    parser.add_argument("--namespace", default=None, help="--cluster: the namespace")
    parser.add_argument("--kubeconfig", default=None, help="--cluster: the kubeconfig file")
    parser.add_argument("--context", default=None, help="--cluster: the kube context")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="--cluster: leave the trial jobs (default: deleted at the end, also after Ctrl-C "
        "or SIGTERM)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="--cluster: seconds to wait for all trials (default 3600)",
    )
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)


def trial_overrides(policy: str, *, steps: int, seed: int) -> list[str]:
    """The ``--set`` overrides of one trial: the policy, the step budget, the seed; one
    evaluation and one checkpoint, at the last step (none at the epoch ends inside the
    budget, which a time budget could not foresee), no early stopping, no exported model (a
    trial's result is its metrics)."""
    freeze = json.dumps(policy_freeze(policy))
    return [
        f"spec.freeze={freeze}",
        "spec.training.epochs=null",
        f"spec.training.maxSteps={steps}",
        f"spec.training.seed={seed}",
        f"spec.training.evalEverySteps={steps}",
        f"spec.training.checkpointEverySteps={steps}",
        "spec.training.earlyStopping=null",
        "spec.output.saveFinalModel=false",
    ]


def cluster_output(doc: dict[str, Any]) -> None:
    """A cluster trial's output: an emptyDir (``ephemeral``), never the manifest's claim. The
    trials run side by side and the operator mounts a claim's root at ``output.path``, so
    trials sharing one claim would overwrite (and resume from) each other's checkpoints; their
    results are read from status, not from files."""
    spec = doc.setdefault("spec", {})
    output = dict(spec.get("output") or {})
    output.pop("persistentVolumeClaim", None)
    output["ephemeral"] = True
    spec["output"] = output


def trial_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a summary needs from a trial's ``metrics.json``."""
    evals: dict[str, Any] = metrics.get("eval") or {}
    main: dict[str, Any] = evals.get("validation") or next(iter(evals.values()), {})
    return {**metrics, "eval_examples": main.get("samples")}


def plot(summaries: list[PolicySummary], path: Path, *, title: str = "kubegraft compare") -> None:
    """Accuracy (+- 2 standard errors) against training cost per policy, at ``path`` (its
    suffix picks the format: png, svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        ax.errorbar(s.cost_core_seconds, s.accuracy, yerr=2 * s.accuracy_se, fmt="o", capsize=4)
        ax.annotate(
            s.policy, (s.cost_core_seconds, s.accuracy), textcoords="offset points", xytext=(6, 4)
        )
    ax.set_xscale("log")
    # Plain numbers on the log axis (1e1-style minor labels overlap) and room for the names.
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.margins(x=0.2, y=0.1)
    ax.set_xlabel("training cost (CPU-core seconds per trial, log scale)")
    ax.set_ylabel("validation accuracy (+- 2 SE)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def _local_run(
    args: argparse.Namespace, root: Path, out: Path, sets: list[str]
) -> dict[str, Any] | str:
    """One local ``kubegraft run``: its ``metrics.json``, or why it failed."""
    cmd = [args.python, "-m", "kubegraft.cli", "run", args.manifest, "--no-progress",
           "--nproc", str(args.nproc), "--output", str(out)]  # fmt: skip
    for s in [*args.overrides, *sets]:
        cmd += ["--set", s]
    log_path = root / f"{out.name}.log"
    with open(log_path, "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    metrics_file = out / "metrics.json"
    if rc.returncode != 0 or not metrics_file.exists():
        return f"exit {rc.returncode}; see {log_path}"
    doc: dict[str, Any] = json.loads(metrics_file.read_text())
    return doc


def _calibrate(
    args: argparse.Namespace, root: Path, policies: list[str]
) -> tuple[dict[str, int], dict[str, Calibration], dict[str, str]]:
    """Steps per policy for ``--budget-seconds``, the calibrations, and the policies whose
    calibration failed (with why)."""
    steps: dict[str, int] = {}
    cals: dict[str, Calibration] = {}
    failed: dict[str, str] = {}
    for policy in policies:
        out = root / f"{policy.replace(':', '')}-calibration"
        print(f"calibration {policy} -> {out}", file=sys.stderr, flush=True)
        sets = trial_overrides(policy, steps=args.calibration_steps, seed=0)
        got = _local_run(args, root, out, sets)
        if isinstance(got, str):
            failed[policy] = f"calibration failed ({got})"
            continue
        cals[policy] = cal = calibration(policy, got)
        steps[policy] = steps_for_budget(args.budget_seconds, cal)
        print(
            f"  {cal.fixed_seconds:.1f}s once + {cal.seconds_per_step:.3f}s/step: "
            f"{steps[policy]} steps in {args.budget_seconds:g}s",
            file=sys.stderr,
            flush=True,
        )
    return steps, cals, failed


def _run_local(
    args: argparse.Namespace, root: Path, policies: list[str], steps: dict[str, int]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    records: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for policy in policies:
        for seed in range(args.seeds):
            out = root / f"{policy.replace(':', '')}-seed{seed}"
            print(f"trial {policy} seed {seed} -> {out}", file=sys.stderr, flush=True)
            sets = trial_overrides(policy, steps=steps[policy], seed=seed)
            got = _local_run(args, root, out, sets)
            if isinstance(got, str):
                print(f"  failed ({got})", file=sys.stderr)
                failed[f"{policy} seed {seed}"] = got
                continue
            records.setdefault(policy, []).append(trial_record(got))
    return records, failed


def _run_cluster(
    args: argparse.Namespace, doc: dict[str, Any], policies: list[str], steps: int
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    from kubegraft import compare_cluster as cc

    namespace = args.namespace or cc.current_namespace(args.kubeconfig, args.context)
    job = str((doc.get("metadata") or {}).get("name") or Path(args.manifest).stem)
    cid = cc.comparison_id(
        Path(args.manifest).read_text() + json.dumps(args.overrides),
        policies,
        f"steps={steps}",
        args.seeds,
    )
    trials = []
    for policy in policies:
        for seed in range(args.seeds):
            one = json.loads(json.dumps(doc))
            for s in trial_overrides(policy, steps=steps, seed=seed):
                apply_override(one, s)
            cluster_output(one)
            name = cc.trial_name(job, policy, seed, cid)
            manifest = cc.trial_manifest(
                one, name=name, cid=cid, policy=policy, seed=seed, namespace=namespace
            )
            trials.append(cc.Trial(policy=policy, seed=seed, name=name, manifest=manifest))
    print(f"comparison {cid} in namespace {namespace}", file=sys.stderr, flush=True)
    with cc.terminated_as_interrupt():
        done = cc.run_trials(
            trials,
            namespace=namespace,
            cid=cid,
            kubeconfig=args.kubeconfig,
            context=args.context,
            timeout_seconds=args.timeout,
            keep=args.keep,
        )
    records: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for t in trials:
        finished = done.get(t.name)
        if finished is None:
            failed[f"{t.policy} seed {t.seed}"] = f"{t.name}: not finished in {args.timeout:g}s"
            continue
        try:
            record = status_record(finished)
        except ValueError as exc:
            failed[f"{t.policy} seed {t.seed}"] = str(exc)
            continue
        records.setdefault(t.policy, []).append(record)
    return records, failed


def main(args: argparse.Namespace) -> int:
    try:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        for p in policies:
            policy_freeze(p)
    except ValueError as exc:
        print(f"kubegraft compare: --policies: {exc}", file=sys.stderr)
        return 2
    if args.cluster and args.budget_seconds is not None:
        print(
            "kubegraft compare: --budget-seconds is not supported with --cluster (a job's "
            "status does not split its time into steps and the rest); use --budget-steps",
            file=sys.stderr,
        )
        return 2
    budget_steps = args.budget_steps if args.budget_steps is not None else 50
    if budget_steps < 1 or args.seeds < 1 or args.calibration_steps < 1:
        print(
            "kubegraft compare: --budget-steps, --calibration-steps and --seeds must be >= 1",
            file=sys.stderr,
        )
        return 2
    if args.budget_seconds is not None and args.budget_seconds <= 0:
        print("kubegraft compare: --budget-seconds must be > 0", file=sys.stderr)
        return 2
    manifest = Path(args.manifest)
    doc = yaml.safe_load(manifest.read_text())
    name = (doc.get("metadata") or {}).get("name", manifest.stem)
    root = Path(args.output or f"runs/compare-{name}")
    root.mkdir(parents=True, exist_ok=True)
    cals: dict[str, Calibration] = {}
    failed: dict[str, str] = {}
    if args.cluster:
        try:
            for s in args.overrides:
                apply_override(doc, s)
            records, failed = _run_cluster(args, doc, policies, budget_steps)
        except (OverrideError, ValueError) as exc:
            print(f"kubegraft compare: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            signum: signal.Signals = getattr(exc, "signum", signal.SIGINT)  # SIGTERM's: 143
            print(f"kubegraft compare: interrupted ({signum.name})", file=sys.stderr)
            return 128 + int(signum)
        except ImportError:
            print(
                "kubegraft compare --cluster needs the kubernetes client: "
                "pip install 'kubegraft[operator]'",
                file=sys.stderr,
            )
            return 2
    else:
        if args.budget_seconds is not None:
            steps, cals, failed = _calibrate(args, root, policies)
        else:
            steps = dict.fromkeys(policies, budget_steps)
        records, run_failed = _run_local(args, root, [p for p in policies if p in steps], steps)
        failed.update(run_failed)
    summaries = [summarise(p, records[p]) for p in policies if p in records]
    if not summaries:
        print(table([], failed))
        print("kubegraft compare: no trial finished", file=sys.stderr)
        return 1
    result = verdict(summaries)
    print(table(summaries, failed))
    print()
    print(result.text)
    plot(summaries, root / "compare.png")
    (root / "compare.json").write_text(
        json.dumps(
            {
                "budget_steps": None if args.budget_seconds is not None else budget_steps,
                "budget_seconds": args.budget_seconds,
                "seeds": args.seeds,
                "where": "cluster" if args.cluster else "local",
                "calibrations": {p: c.__dict__ for p, c in cals.items()},
                "trials": {
                    p: [
                        {k: r.get(k) for k in ("step", "train_seconds", "accuracy", "f1")}
                        for r in rs
                    ]
                    for p, rs in records.items()
                },
                "failed": failed,
                "summaries": [s.__dict__ for s in summaries],
                "verdict": result.__dict__,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nplot: {root / 'compare.png'}; details: {root / 'compare.json'}")
    return 0 if not failed else 1
