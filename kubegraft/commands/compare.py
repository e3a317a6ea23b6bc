"""``kubegraft compare JOB.yaml --policies ...``: which freezing policy for my data?

Runs short trials of each policy on the user's own manifest -- the same data, the same budget
(``--budget-steps`` optimizer steps), ``--seeds`` seeds each -- locally, one after the other,
each a plain ``kubegraft run`` of the manifest with ``spec.freeze``, the budget and the seed
overridden (so a trial is exactly what that run would do), in ``<output>/<policy>-seed<k>``.
Then it prints the table (accuracy, macro-F1, cost in CPU-core seconds, trainable share),
writes ``<output>/compare.png`` (accuracy against cost, with standard-error bars) and
``<output>/compare.json``, and says which policy wins per unit of cost and whether the lead
is beyond noise (:mod:`kubegraft.policy_compare`). This module imports no torch.

Not done yet: ``--budget-seconds`` (a time budget needs the trainer to stop on time and still
evaluate) and ``--cluster`` (one FineTuneJob per trial); both are refused with a message.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kubegraft.commands.overrides import add_set_argument
from kubegraft.policy_compare import (
    PolicySummary,
    policy_freeze,
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
        help="comma-separated: feature-extraction, top-k:K, bitfit, lora, full",
    )
    parser.add_argument(
        "--budget-steps", type=int, default=50, help="optimizer steps per trial (default 50)"
    )
    parser.add_argument(
        "--budget-seconds", type=float, default=None, help="not supported yet (use --budget-steps)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="seeds per policy (>= 2 for a spread)")
    parser.add_argument("--nproc", type=int, default=1, help="local processes per trial")
    add_set_argument(
        parser, "an override applied to every trial, as for kubegraft run (repeatable)"
    )
    parser.add_argument(
        "--output", default=None, help="where the trials go (default: ./runs/compare-<job-name>)"
    )
    parser.add_argument("--cluster", action="store_true", help="not supported yet")
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)


def trial_overrides(policy: str, *, steps: int, seed: int) -> list[str]:
    """The ``--set`` overrides of one trial: the policy, the step budget, the seed; no
    checkpoints or evaluations inside the budget (one evaluation at the end)."""
    freeze = json.dumps(policy_freeze(policy))
    return [
        f"spec.freeze={freeze}",
        "spec.training.epochs=null",
        f"spec.training.maxSteps={steps}",
        f"spec.training.seed={seed}",
        "spec.training.evalEverySteps=null",
        "spec.training.checkpointEverySteps=null",
        "spec.training.earlyStopping=null",
    ]


def trial_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a summary needs from a trial's ``metrics.json``."""
    evals: dict[str, Any] = metrics.get("eval") or {}
    main: dict[str, Any] = evals.get("validation") or next(iter(evals.values()), {})
    return {**metrics, "eval_examples": main.get("samples")}


def plot(summaries: list[PolicySummary], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        ax.errorbar(s.cost_core_seconds, s.accuracy, yerr=2 * s.accuracy_se, fmt="o", capsize=4)
        ax.annotate(
            s.policy, (s.cost_core_seconds, s.accuracy), textcoords="offset points", xytext=(6, 4)
        )
    ax.set_xscale("log")
    ax.set_xlabel("training cost (CPU-core seconds per trial, log scale)")
    ax.set_ylabel("validation accuracy (+- 2 SE)")
    ax.set_title("kubegraft compare")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    if args.cluster or args.budget_seconds is not None:
        what = "--cluster" if args.cluster else "--budget-seconds"
        print(f"kubegraft compare: {what} is not supported yet", file=sys.stderr)
        return 2
    try:
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        for p in policies:
            policy_freeze(p)
    except ValueError as exc:
        print(f"kubegraft compare: --policies: {exc}", file=sys.stderr)
        return 2
    if args.budget_steps < 1 or args.seeds < 1:
        print("kubegraft compare: --budget-steps and --seeds must be >= 1", file=sys.stderr)
        return 2
    manifest = Path(args.manifest)
    doc = yaml.safe_load(manifest.read_text())
    name = (doc.get("metadata") or {}).get("name", manifest.stem)
    root = Path(args.output or f"runs/compare-{name}")
    root.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {}
    for policy in policies:
        for seed in range(args.seeds):
            out = root / f"{policy.replace(':', '')}-seed{seed}"
            sets = [*args.overrides, *trial_overrides(policy, steps=args.budget_steps, seed=seed)]
            cmd = [args.python, "-m", "kubegraft.cli", "run", str(manifest), "--no-progress",
                   "--nproc", str(args.nproc), "--output", str(out)]  # fmt: skip
            for s in sets:
                cmd += ["--set", s]
            print(f"trial {policy} seed {seed} -> {out}", file=sys.stderr, flush=True)
            with open(root / f"{out.name}.log", "wb") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
            metrics_file = out / "metrics.json"
            if rc.returncode != 0 or not metrics_file.exists():
                print(
                    f"  failed (exit {rc.returncode}); see {root / (out.name + '.log')}",
                    file=sys.stderr,
                )
                continue
            records.setdefault(policy, []).append(
                trial_record(json.loads(metrics_file.read_text()))
            )
    summaries = [summarise(p, records[p]) for p in policies if p in records]
    if not summaries:
        print("kubegraft compare: no trial finished", file=sys.stderr)
        return 1
    result = verdict(summaries)
    print(table(summaries))
    print()
    print(result.text)
    plot(summaries, root / "compare.png")
    (root / "compare.json").write_text(
        json.dumps(
            {
                "budget_steps": args.budget_steps,
                "seeds": args.seeds,
                "summaries": [s.__dict__ for s in summaries],
                "verdict": result.__dict__,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nplot: {root / 'compare.png'}; details: {root / 'compare.json'}")
    return 0 if len(summaries) == len(policies) else 1
