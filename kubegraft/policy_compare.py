"""Pure functions behind ``kubegraft compare``: policies as specs, trial summaries, the verdict.

A trial is one short run of one freezing policy on the user's manifest (same data, same
budget, one seed); its ``metrics.json`` gives accuracy, macro-F1, training seconds, processes
and threads, and the trainable and total parameter counts. Per policy the trials are summarised
as mean and standard error; the verdict names the most accurate policy, says whether its lead
over the runner-up is beyond noise, and names the policy that wins per unit of cost: the
cheapest one whose accuracy is within noise of the best.

Noise: with several seeds, the standard error of the mean over seeds; with one seed (or when
larger), the binomial standard error of an accuracy measured on ``n`` validation examples,
``sqrt(p (1 - p) / n)``. A lead is beyond noise when it exceeds twice the combined standard
error of the two means (about a 95% two-sided test for independent estimates).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

POLICY_NAMES = ("feature-extraction", "top-k:K", "bitfit", "lora", "full")


def policy_freeze(policy: str) -> dict[str, Any]:
    """The ``spec.freeze`` of a policy name: ``feature-extraction``, ``top-k:K``, ``bitfit``,
    ``lora``, ``full``. Raises ValueError naming the accepted forms."""
    name, _, arg = policy.partition(":")
    if name == "top-k":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"policy {policy!r}: top-k needs a block count, e.g. top-k:2")
        return {"preset": "top-k", "topK": int(arg)}
    if arg or name not in ("feature-extraction", "bitfit", "lora", "full"):
        raise ValueError(f"unknown policy {policy!r}; use {', '.join(POLICY_NAMES)}")
    return {"preset": name}


@dataclass(frozen=True)
class PolicySummary:
    """One policy's trials: means, standard errors and the cost of one trial."""

    policy: str
    trials: int
    accuracy: float
    accuracy_se: float
    f1: float
    f1_se: float
    cost_core_seconds: float
    """Mean training CPU-core seconds of a trial (seconds x processes x threads)."""
    trainable_share: float


def _se(values: list[float], *, binomial_n: int | None) -> float:
    """Standard error of the mean of ``values`` (ratios), at least the binomial one."""
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    binomial = (
        math.sqrt(max(mean * (1 - mean), 0.0) / binomial_n / len(values)) if binomial_n else 0.0
    )
    return max(spread, binomial)


def summarise(policy: str, trials: list[dict[str, Any]]) -> PolicySummary:
    """Summarise the ``metrics.json`` documents of one policy's trials."""
    if not trials:
        raise ValueError(f"policy {policy}: no trial finished")
    acc = [float(t["accuracy"]) for t in trials]
    f1 = [float(t["f1"]) for t in trials]
    n_eval = min(int(t.get("eval_examples") or 0) for t in trials) or None
    cost = statistics.fmean(
        float(t["train_seconds"])
        * int(t.get("processes") or 1)
        * int(t.get("threads_per_process") or 1)
        for t in trials
    )
    share = statistics.fmean(
        int(t["trainable_parameters"]) / max(int(t["total_parameters"]), 1) for t in trials
    )
    return PolicySummary(
        policy=policy,
        trials=len(trials),
        accuracy=statistics.fmean(acc),
        accuracy_se=_se(acc, binomial_n=n_eval),
        f1=statistics.fmean(f1),
        f1_se=_se(f1, binomial_n=n_eval),
        cost_core_seconds=cost,
        trainable_share=share,
    )


def beyond_noise(a: PolicySummary, b: PolicySummary) -> bool:
    """Whether ``a``'s accuracy lead over ``b`` exceeds twice their combined standard error."""
    return a.accuracy - b.accuracy > 2 * math.hypot(a.accuracy_se, b.accuracy_se)


@dataclass(frozen=True)
class Verdict:
    best: str
    runner_up: str | None
    lead: float
    lead_beyond_noise: bool
    best_per_cost: str
    """The cheapest policy whose accuracy is within noise of the best's (the best itself when
    its lead over every cheaper one is beyond noise)."""
    text: str


def verdict(summaries: list[PolicySummary]) -> Verdict:
    """Which policy is most accurate, whether beyond noise, and which wins per unit of cost."""
    if not summaries:
        raise ValueError("nothing to compare")
    ranked = sorted(summaries, key=lambda s: s.accuracy, reverse=True)
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    clear = runner is not None and beyond_noise(best, runner)
    tied = [s for s in summaries if s is best or not beyond_noise(best, s)]
    cheapest = min(tied, key=lambda s: s.cost_core_seconds)
    lead = best.accuracy - runner.accuracy if runner else 0.0
    lines = [f"most accurate: {best.policy} ({best.accuracy:.3f} +- {best.accuracy_se:.3f})"]
    if runner is not None:
        lines.append(
            f"its lead over {runner.policy} is {lead:+.3f}: "
            + ("beyond noise" if clear else "within noise (more seeds or data would tell)")
        )
    if cheapest is not best:
        ratio = best.cost_core_seconds / max(cheapest.cost_core_seconds, 1e-9)
        lines.append(
            f"best per unit of cost: {cheapest.policy}, within noise of {best.policy} "
            f"at 1/{ratio:.1f} of its cost"
        )
    else:
        lines.append(f"best per unit of cost: {best.policy}")
    return Verdict(
        best=best.policy,
        runner_up=runner.policy if runner else None,
        lead=lead,
        lead_beyond_noise=clear,
        best_per_cost=cheapest.policy,
        text="\n".join(lines),
    )


def table(summaries: list[PolicySummary]) -> str:
    """The comparison as a plain-text table."""
    head = (
        f"{'policy':<20} {'trials':>6} {'accuracy':>16} {'macro-F1':>16} "
        f"{'cost core-s':>12} {'trainable':>10}"
    )
    rows = [head, "-" * len(head)]
    for s in summaries:
        rows.append(
            f"{s.policy:<20} {s.trials:>6} {s.accuracy:>9.3f} +-{s.accuracy_se:.3f}"
            f" {s.f1:>9.3f} +-{s.f1_se:.3f} {s.cost_core_seconds:>12.1f}"
            f" {s.trainable_share:>9.1%}"
        )
    return "\n".join(rows)
