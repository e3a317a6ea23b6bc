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
from datetime import datetime
from typing import Any

POLICY_NAMES = ("feature-extraction", "top-k:K", "bitfit", "lora", "dora", "ia3", "full")


def policy_freeze(policy: str) -> dict[str, Any]:
    """The ``spec.freeze`` of a policy name: ``feature-extraction``, ``top-k:K``, ``bitfit``,
    ``lora``, ``dora`` (LoRA with ``useDora``), ``ia3``, ``full``. Raises ValueError naming
    the accepted forms."""
    name, _, arg = policy.partition(":")
    if name == "top-k":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"policy {policy!r}: top-k needs a block count, e.g. top-k:2")
        return {"preset": "top-k", "topK": int(arg)}
    if name == "dora" and not arg:
        return {"preset": "lora", "lora": {"useDora": True}}
    if arg or name not in ("feature-extraction", "bitfit", "lora", "ia3", "full"):
        raise ValueError(f"unknown policy {policy!r}; use {', '.join(POLICY_NAMES)}")
    return {"preset": name}


@dataclass(frozen=True)
class Calibration:
    """One policy's cost model from a short calibration run: ``fixed_seconds`` once per trial
    (the frozen-feature or prefix cache, the final evaluation and save) plus
    ``seconds_per_step`` per optimizer step."""

    policy: str
    steps: int
    fixed_seconds: float
    seconds_per_step: float


def calibration(policy: str, metrics: dict[str, Any]) -> Calibration:
    """The cost model of a calibration run's ``metrics.json``: ``step_seconds`` is the
    training loop's time to the end of its last step (data loaders and logging windows
    included, so a policy of tiny steps is not charged for its optimizer steps alone), the
    rest of ``train_seconds`` (the cache, the evaluation and checkpoint after the last step)
    is paid once per trial."""
    steps = int(metrics["step"])
    if steps < 1:
        raise ValueError(f"policy {policy}: the calibration run did no step")
    step_seconds = float(metrics["step_seconds"])
    return Calibration(
        policy=policy,
        steps=steps,
        fixed_seconds=max(float(metrics["train_seconds"]) - step_seconds, 0.0),
        seconds_per_step=step_seconds / steps,
    )


def steps_for_budget(budget_seconds: float, cal: Calibration) -> int:
    """The optimizer steps a trial of ``cal``'s policy can do in ``budget_seconds`` of
    training: what is left after its fixed cost, divided by its step time; at least one (a
    policy whose fixed cost alone exceeds the budget still gets one step, and the table shows
    its real cost)."""
    if budget_seconds <= 0:
        raise ValueError("the time budget must be > 0 seconds")
    left = budget_seconds - cal.fixed_seconds
    return max(1, math.floor(left / max(cal.seconds_per_step, 1e-9)))


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
    noise_known: bool = True
    """Whether ``accuracy_se`` estimates anything: several seeds, or a known validation size
    for the binomial error. Without either, no lead can be called beyond noise."""


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
        noise_known=len(trials) > 1 or n_eval is not None,
    )


def _rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def status_record(job: dict[str, Any]) -> dict[str, Any]:
    """A cluster trial's record, read from its finished FineTuneJob (as the API returns it):
    accuracy and macro-F1 from ``status.metrics``, the parameter counts from
    ``status.parameters``, and as training seconds the job's running time
    (``completionTime - startTime - suspendedSeconds``: the pods' loading time included, so
    cluster costs are a little higher than local ones, alike for every policy) on
    ``nodes x procsPerNode`` processes of ``threadsPerProcess`` threads (1 when unset: the
    cost is then in process-seconds). Raises ValueError with the reason for a trial that
    did not succeed or reported no metrics."""
    name = (job.get("metadata") or {}).get("name", "?")
    status: dict[str, Any] = job.get("status") or {}
    if status.get("state") != "Succeeded":
        why = status.get("reason") or status.get("state") or "unknown"
        message = status.get("message")
        raise ValueError(f"{name}: {why}" + (f": {message}" if message else ""))
    metrics: dict[str, Any] = status.get("metrics") or {}
    params: dict[str, Any] = status.get("parameters") or {}
    if metrics.get("accuracy") is None or metrics.get("f1") is None or not params.get("total"):
        raise ValueError(f"{name}: succeeded but reported no accuracy, F1 or parameter counts")
    if not status.get("startTime") or not status.get("completionTime"):
        raise ValueError(f"{name}: no startTime/completionTime in its status")
    seconds = (
        _rfc3339(status["completionTime"]) - _rfc3339(status["startTime"])
    ).total_seconds() - float(status.get("suspendedSeconds") or 0)
    dist: dict[str, Any] = (job.get("spec") or {}).get("distributed") or {}
    return {
        "accuracy": float(metrics["accuracy"]),
        "f1": float(metrics["f1"]),
        "train_seconds": max(seconds, 0.0),
        "processes": int(dist.get("nodes") or 1) * int(dist.get("procsPerNode") or 1),
        "threads_per_process": int(dist.get("threadsPerProcess") or 1),
        "trainable_parameters": int(params.get("trainable") or 0),
        "total_parameters": int(params["total"]),
        "eval_examples": None,
        "step": int((status.get("progress") or {}).get("step") or 0),
    }


def beyond_noise(a: PolicySummary, b: PolicySummary) -> bool:
    """Whether ``a``'s accuracy lead over ``b`` exceeds twice their combined standard error
    (never when either has no noise estimate at all)."""
    if not (a.noise_known and b.noise_known):
        return False
    return a.accuracy - b.accuracy > 2 * math.hypot(a.accuracy_se, b.accuracy_se)


def pareto_front(summaries: list[PolicySummary]) -> list[str]:
    """The policies no other policy beats on both accuracy and cost (cheaper or as cheap and
    more accurate, or as accurate and cheaper), cheapest first: the honest shortlist when
    the budget matters as much as the last point of accuracy."""
    front = [
        s
        for s in summaries
        if not any(
            o is not s
            and o.cost_core_seconds <= s.cost_core_seconds
            and o.accuracy >= s.accuracy
            and (o.cost_core_seconds < s.cost_core_seconds or o.accuracy > s.accuracy)
            for o in summaries
        )
    ]
    return [s.policy for s in sorted(front, key=lambda s: s.cost_core_seconds)]


@dataclass(frozen=True)
class Verdict:
    best: str
    runner_up: str | None
    lead: float
    lead_beyond_noise: bool
    best_per_cost: str
    """The cheapest policy whose accuracy is within noise of the best's (the best itself when
    its lead over every cheaper one is beyond noise)."""
    pareto: list[str]
    """:func:`pareto_front`, cheapest first."""
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
        if not (best.noise_known and runner.noise_known):
            judged = "cannot tell (one seed and no validation size: no noise estimate)"
        elif clear:
            judged = "beyond noise"
        else:
            judged = "within noise (more seeds or data would tell)"
        lines.append(f"its lead over {runner.policy} is {lead:+.3f}: {judged}")
        if min(best.trials, runner.trials) < 2 and best.noise_known and runner.noise_known:
            lines.append(
                "  (one seed: only the validation set's sampling error is counted, not the "
                "seed-to-seed spread; --seeds 2 or more tells)"
            )
    if cheapest is not best:
        ratio = best.cost_core_seconds / max(cheapest.cost_core_seconds, 1e-9)
        lines.append(
            f"best per unit of cost: {cheapest.policy}, within noise of {best.policy} "
            f"at 1/{ratio:.1f} of its cost"
        )
    else:
        lines.append(f"best per unit of cost: {best.policy}")
    front = pareto_front(summaries)
    lines.append(f"accuracy/cost Pareto front (cheapest first): {', '.join(front)}")
    return Verdict(
        best=best.policy,
        runner_up=runner.policy if runner else None,
        lead=lead,
        lead_beyond_noise=clear,
        best_per_cost=cheapest.policy,
        pareto=front,
        text="\n".join(lines),
    )


def table(summaries: list[PolicySummary], failed: dict[str, str] | None = None) -> str:
    """The comparison as a plain-text table; ``failed``: policy -> why none of its trials
    finished, shown as a row of its own."""
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
    for policy, why in (failed or {}).items():
        rows.append(f"{policy:<20} {'failed':>6}  {why}")
    return "\n".join(rows)
