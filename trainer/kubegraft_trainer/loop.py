"""The distributed training loop: one FineTuneJob spec in, a trained and exported model out.

Called by :mod:`kubegraft_trainer.entrypoint` in every process torchrun starts. The order of
things, and why:

1. Accelerate reads the torchrun environment. DDP on CPU runs over gloo (``cpu=True``); DeepSpeed
   gets its config from :func:`~kubegraft_trainer.deepspeed_config.build_deepspeed_config`
   through Accelerate's DeepSpeed plugin (on CPU with the gloo backend named explicitly, since
   Accelerate otherwise leaves the process group to DeepSpeed and counts one process).
2. Data is read and split identically on every process (seeded), the model is loaded with the
   data's number of labels, and the freeze policy is applied; a checkpoint's trainer state is
   read *before* wrapping so that the freeze stage in force is the one the wrapper sees.
3. The optimizer is AdamW over the policy's parameter groups: every parameter for DDP (frozen
   ones get no gradient, so gradual unfreezing needs no new optimizer), only the trainable ones
   for DeepSpeed (ZeRO partitions what it is given). Frozen parameters have
   ``requires_grad=False``, so autograd never runs backward through a frozen prefix.
4. When only the head trains, the backbone's features are computed once
   (:mod:`~kubegraft_trainer.feature_cache`) and the head trains on them; when only the top
   blocks train, the hidden states below them are computed once and the top blocks and the
   head train on those (recomputed when a gradual-unfreezing stage moves the boundary).
5. Each optimizer step: stage update (gradual unfreezing; DDP is re-wrapped because its
   reducer is built for the parameters that required grad when it was made), micro-batches
   with the accumulation boundary on the last only (DDP's ``no_sync`` before it, DeepSpeed's
   engine steps on it), clipping, step; then logging, preemption check,
   evaluation, checkpoint. The data position (epoch, micro-batches done) is saved with each
   checkpoint so a resumed run continues with exactly the next batch.
6. At the end: final evaluation, export (``<output>/model``) and ``<output>/metrics.json``.

SIGTERM is honoured in every phase (:mod:`~kubegraft_trainer.signals`): loading and export
are interrupted at once; feature caching, evaluation, steps and saves poll the flag
collectively (per batch, per step, after a save) and stop together, saving a checkpoint
first when steps were done since the last one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kubegraft.api.v1alpha1 import FineTuneJobSpec, Precision, SchedulerKind, Strategy, Task
from kubegraft.cpu_share import available_cpus, process_threads
from kubegraft.progress import ProgressPublisher, ProgressReport, sinks_from_env, write_atomically
from kubegraft_trainer.checkpointing import CheckpointManager, read_best, read_trainer_state
from kubegraft_trainer.collectives import gather_all
from kubegraft_trainer.data import (
    IGNORE_INDEX,
    PreparedData,
    ResumableDistributedSampler,
    build_dataset,
    prepare_data,
)
from kubegraft_trainer.deepspeed_config import build_deepspeed_config
from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.evaluation import classification_metrics, evaluate, is_improvement
from kubegraft_trainer.feature_cache import (
    MODEL_INPUTS,
    CachePlan,
    CacheTooLarge,
    FeatureDataset,
    PrefixDataset,
    cache_plan,
    compute_features,
    feature_collate,
    prefix_collate,
    prefix_modules,
)
from kubegraft_trainer.freeze import FreezePolicy
from kubegraft_trainer.history import eval_records, step_record
from kubegraft_trainer.metrics_exporter import LogWindow, TrainingMetrics, run_info_from_env
from kubegraft_trainer.prefix_split import HIDDEN, PrefixSplitter
from kubegraft_trainer.pretrained import ModelBundle, load_model, without_zero3_init
from kubegraft_trainer.run_identity import identity_problem, job_uid, run_identity
from kubegraft_trainer.run_report import write_run_report
from kubegraft_trainer.signals import Preempted, PreemptionFlag

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LABELS_FILE = "labels.json"
CACHE_DIR = "cache"


class _StopAgreed(Exception):
    """Every rank agreed to stop (SIGTERM) at the same point of ``phase``."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


# ------------------------------------------------------------------------------------ helpers


class TrainStep(nn.Module):
    """What the distributed wrapper wraps: a batch dict in, logits out.

    Cached batches (``features``) go through the head only, cached prefix states
    (``hidden``) through the top blocks (``prefix``: the splitter and boundary) and the head;
    raw batches through the whole model. Floating inputs are cast to ``input_dtype``
    (DeepSpeed bf16/fp16 keeps the weights in that dtype and does not cast inputs itself).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_dtype: torch.dtype | None = None
        self.prefix: tuple[PrefixSplitter, int] | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.input_dtype) if self.input_dtype and t.is_floating_point() else t

        if "features" in batch:
            logits: torch.Tensor = self.model.forward_head(cast(batch["features"]))  # type: ignore[operator]
            return logits
        if HIDDEN in batch and self.prefix is not None:
            splitter, boundary = self.prefix
            state = {k: cast(v) for k, v in batch.items() if k in (HIDDEN, "attention_mask")}
            features = splitter.suffix(boundary, state)
            logits = self.model.forward_head(features)  # type: ignore[operator]
            return logits
        inputs = {k: cast(v) for k, v in batch.items() if k in MODEL_INPUTS}
        out: torch.Tensor = self.model(**inputs)
        return out


def lr_lambda(kind: SchedulerKind, *, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at optimizer step ``s``: linear warmup, then the schedule."""

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / (warmup + 1)
        if kind == SchedulerKind.CONSTANT:
            return 1.0
        span = max(1, total - warmup)
        progress = min(1.0, max(0.0, (s - warmup) / span))
        if kind == SchedulerKind.LINEAR:
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def batch_counts(micro: list[dict[str, torch.Tensor]]) -> tuple[int, int | None]:
    """Examples and non-padding tokens in the micro-batches of one step, as processed: an
    epoch's short last batch counts what it holds. Text batches are counted by their attention
    mask, which the frozen-prefix cache keeps with its hidden states (the trainable top blocks
    still process every token); tokens are None for batches without tokens (images, pooled
    features)."""
    samples = sum(int(b["labels"].shape[0]) for b in micro)
    if all("attention_mask" in b for b in micro):
        return samples, sum(int(b["attention_mask"].sum()) for b in micro)
    if all("input_ids" in b for b in micro):
        return samples, sum(int(b["input_ids"].numel()) for b in micro)
    return samples, None


def warmup_steps(spec: FineTuneJobSpec, total: int) -> int:
    t = spec.training
    if t.warmup_steps is not None:
        return t.warmup_steps
    if t.warmup_ratio is not None:
        return int(t.warmup_ratio * total)
    return 0


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, ignoring padding."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


@dataclass
class LoopState:
    """The loop's position and bookkeeping; saved as trainer_state.json in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    """Micro-batches of the current epoch already trained on (per process)."""
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    """Evaluations in a row without an early-stopping improvement."""
    early_stopping_best: float | None = None
    stopped_early: bool = False
    freeze: dict[str, Any] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)
    last_eval: dict[str, Any] = field(default_factory=dict)
    train_loss: float | None = None
    log_history: list[dict[str, Any]] = field(default_factory=list)
    """The run's history (:mod:`~kubegraft_trainer.history`), kept on rank 0 and carried by
    the checkpoints so that a resumed run continues it."""
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    """The latest evaluation's confusion matrix per set (classification)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_accelerator(spec: FineTuneJobSpec) -> Any:
    """An Accelerator for the spec's strategy, backend and precision."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    d = spec.distributed
    precision = {Precision.FP32: "no", Precision.BF16: "bf16", Precision.FP16: "fp16"}[
        spec.training.precision
    ]
    gpu = torch.cuda.is_available() and d.backend != "gloo"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    handlers: list[Any] = []
    kwargs: dict[str, Any] = {
        "step_scheduler_with_optimizer": False,
        "mixed_precision": precision,
        # the same number DeepSpeed's config carries (Accelerate warns when the two differ);
        # the loop sets the accumulation boundary itself (Trainer._optimizer_step)
        "gradient_accumulation_steps": spec.training.gradient_accumulation_steps,
    }
    if d.strategy == Strategy.DEEPSPEED:
        if world > 1 and not torch.cuda.is_available():
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        elif d.backend != "auto":
            handlers.append(InitProcessGroupKwargs(backend=d.backend))
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=build_deepspeed_config(spec, world_size=world)
        )
    else:
        if not gpu:
            kwargs["cpu"] = True
        elif d.backend == "gloo":
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if not gpu and precision == "fp16":
        # Admission refuses fp16 with gpusPerNode 0 or backend gloo; with gpusPerNode unset
        # (one GPU per process) only this machine can tell that it has no CUDA device.
        raise ConfigError(
            "fp16 mixed precision needs a GPU and this machine has no CUDA device; use bf16 or "
            "fp32 on CPU",
            field="spec.training.precision",
        )
    return Accelerator(kwargs_handlers=handlers, **kwargs)


# --------------------------------------------------------------------------------------- loop


class Trainer:
    """One run of one spec in this process (rank); :meth:`run` returns the metrics."""

    def __init__(
        self,
        spec: FineTuneJobSpec,
        *,
        job_name: str,
        preemption: PreemptionFlag | None = None,
        job_uid: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self.spec = spec
        self.job_name = job_name
        self.namespace = namespace
        self.job_uid = job_uid
        self.output = Path(spec.output.path)
        self.preemption = preemption or PreemptionFlag()
        self.deepspeed = spec.distributed.strategy == Strategy.DEEPSPEED
        self.task = spec.model.task
        self.metrics: TrainingMetrics | None = None
        self.grad_norm: float | None = None
        """Global gradient norm (before clipping) of the last optimizer step."""
        self.samples_this_run = 0
        """Training examples processed by all ranks in this process's run (counted)."""
        self.progress: ProgressPublisher | None = None

    # ---------------------------------------------------------------------------- setup

    def _setup(self) -> None:
        from accelerate.utils import set_seed

        spec, t = self.spec, self.spec.training
        self.threads = process_threads(
            os.environ,
            spec_threads=spec.distributed.threads_per_process,
            cpus=available_cpus(),
            procs_per_node=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        )
        torch.set_num_threads(self.threads)
        self.acc = make_accelerator(spec)
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.main = self.acc.is_main_process
        if self.main:
            log.info("%d intra-op CPU threads per process", self.threads)
        if self.main:
            # Heartbeats from the first moment: loading a large model can take a while.
            self.progress = ProgressPublisher(
                sinks_from_env(), interval=spec.run_policy.progress_interval_seconds
            ).start()
            self.output.mkdir(parents=True, exist_ok=True)
            self.metrics = TrainingMetrics(namespace=self.namespace, finetunejob=self.job_name)
            port = self.metrics.serve()
            if port:
                log.info("serving Prometheus metrics on :%d/metrics", port)
        self._report(phase="loading")
        set_seed(t.seed)
        self.data: PreparedData = prepare_data(spec.dataset, task=self.task.value, seed=t.seed)
        if self.data.validation is None and not self.data.eval_sets:
            raise ConfigError(
                "no validation examples: give validation, validationSplit or evalSets",
                field="spec.dataset",
            )
        self.label_names = self.data.label_names
        num_labels = len(self.label_names) if self.task != Task.CAUSAL_LM else None
        if num_labels is not None and spec.model.head.num_labels is not None:
            if spec.model.head.num_labels < num_labels:
                raise ConfigError(
                    f"{spec.model.head.num_labels} classes declared but the data has "
                    f"{num_labels} labels",
                    field="spec.model.head.numLabels",
                )
            num_labels = spec.model.head.num_labels
        self.num_labels = num_labels
        self.bundle: ModelBundle = load_model(spec, num_labels=num_labels)
        self.model: nn.Module = self.bundle.model
        enable_checkpointing = getattr(self.model, "enable_gradient_checkpointing", None)
        if t.gradient_checkpointing and callable(enable_checkpointing):
            enable_checkpointing()

        self.train_ds, self.collate = build_dataset(self.data.train, self.bundle, spec.dataset)
        self.eval_ds: dict[str, tuple[Dataset[Any], Any]] = {}
        if self.data.validation is not None:
            self.eval_ds["validation"] = build_dataset(
                self.data.validation, self.bundle, spec.dataset
            )
        for name, split in self.data.eval_sets.items():
            self.eval_ds[name] = build_dataset(split, self.bundle, spec.dataset)

        # Steps: micro-batches per process per epoch, grouped into optimizer steps.
        bs, gas = t.per_device_batch_size, t.gradient_accumulation_steps
        per_process = math.ceil(len(self.data.train) / self.world)
        self.micro_per_epoch = math.ceil(per_process / bs)
        if self.deepspeed and self.micro_per_epoch < gas:
            raise ConfigError(
                f"an epoch has {self.micro_per_epoch} micro-batches per process, fewer than "
                f"gradientAccumulationSteps={gas}",
                field="spec.training.gradientAccumulationSteps",
            )
        self.steps_per_epoch = max(1, self.micro_per_epoch // gas)
        self.micro_used = min(self.micro_per_epoch, self.steps_per_epoch * gas)
        self.total_steps = t.max_steps or (t.epochs or 1) * self.steps_per_epoch
        self.samples_per_step = bs * gas * self.world

        # Checkpoint to resume from (the same one on every rank, and only one of this run),
        # read before the freeze stage is applied.
        self.ckpt = CheckpointManager(
            self.output / CHECKPOINT_DIR, keep=spec.output.keep_checkpoints
        )
        self.identity = run_identity(
            spec,
            job_name=self.job_name,
            uid=job_uid(self.job_uid, name=self.job_name, namespace=None),
        )
        self.resume_from = self.ckpt.agreed_latest(self.acc)
        self.state = LoopState(label_names=list(self.label_names))
        if self.resume_from is not None:
            saved = read_trainer_state(self.resume_from)
            problem = identity_problem(
                saved.get("run"), self.identity, checkpoint=str(self.resume_from)
            )
            if problem is not None:
                raise ConfigError(problem, field="spec.output")
            if saved.get("label_names", []) != list(self.label_names):
                raise ConfigError(
                    f"the checkpoint {self.resume_from} was trained on labels "
                    f"{saved.get('label_names')}, the data now has {list(self.label_names)}",
                    field="spec.dataset",
                )
            known = set(LoopState.__dataclass_fields__)
            self.state = LoopState(**{k: v for k, v in saved.items() if k in known})

        self.policy = FreezePolicy.from_spec(
            spec.freeze,
            self.bundle.layout,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
        )
        if self.state.freeze:
            try:
                self.policy.load_state_dict(self.state.freeze)
            except ValueError as exc:
                raise ConfigError(str(exc), field="spec.freeze") from exc
            stage = self.policy.stage
        else:
            stage = self.policy.stage_at(epoch=self.state.epoch, step=self.state.step)
        self.policy.apply(self.model, stage=stage)
        self._set_train_mode()
        self._log_parameters()
        if self.trainable == 0:
            # backward would fail with an autograd error; say what to change instead. A causal
            # LM with tied input/output embeddings is the usual case: its LM head *is* the
            # embedding matrix, so freezing the embeddings freezes the head too.
            raise ConfigError(
                f"the freeze policy (stage {stage}) leaves no parameter trainable"
                + (
                    "; this model's LM head is tied to its input embeddings, so set "
                    "freezeEmbeddings: false to train it"
                    if self.task == Task.CAUSAL_LM
                    else ""
                ),
                field="spec.freeze",
            )
        if self.main and self.task == Task.CAUSAL_LM and t.metric_for_best != "loss":
            log.info(
                "causal-lm is evaluated on loss and perplexity: the best checkpoint and early "
                "stopping use loss, not %s",
                t.metric_for_best,
            )

        self.plan: CachePlan | None = None
        self._plan_cache()

        # Optimizer, schedule, wrapper.
        warm = warmup_steps(spec, self.total_steps)
        schedule = lr_lambda(t.scheduler, warmup=warm, total=self.total_steps)
        self.step_module = TrainStep(self.model)
        if self.deepspeed:
            from accelerate.utils import DummyOptim, DummyScheduler

            groups = self.policy.param_groups(
                self.model, lr=t.learning_rate, weight_decay=t.weight_decay, trainable_only=True
            )
            groups = [
                {k: v for k, v in g.items() if k != "param_names"} for g in groups if g["params"]
            ]
            optimizer: Any = DummyOptim(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
            scheduler: Any = DummyScheduler(
                optimizer,
                total_num_steps=self.total_steps,
                warmup_num_steps=warm,
                lr_scheduler_callable=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            )
            if t.precision == Precision.BF16:
                self.step_module.input_dtype = torch.bfloat16
            elif t.precision == Precision.FP16:
                self.step_module.input_dtype = torch.float16
        else:
            groups = self.policy.param_groups(
                self.model, lr=t.learning_rate, weight_decay=t.weight_decay
            )
            optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        prepare_started = time.perf_counter()
        self.wrapped, self.optimizer, self.scheduler = self.acc.prepare(
            self.step_module, optimizer, scheduler
        )
        if self.main:
            log.info(
                "%s ready in %.1fs",
                type(self.wrapped).__name__,
                time.perf_counter() - prepare_started,
            )
        if self.resume_from is not None:
            self._report(phase="loading", latest_checkpoint=str(self.resume_from))
            try:
                self.acc.load_state(str(self.resume_from))
            except (RuntimeError, ValueError, KeyError) as exc:
                if not _is_shape_mismatch(exc):
                    raise
                # Retrying cannot help: the checkpoint was written for another network (a
                # checkpoint from before run identities, or weights changed under the same
                # model.checkpoint URI).
                raise ConfigError(
                    f"the checkpoint {self.resume_from} does not fit this model (another "
                    f"architecture or head): {str(exc).splitlines()[0][:300]}; delete it or "
                    "use another output to start afresh",
                    field="spec.model",
                ) from exc
            if self.main:
                log.info(
                    "resumed from %s at step %d (epoch %d, batch %d)",
                    self.resume_from,
                    self.state.step,
                    self.state.epoch,
                    self.state.batches_done,
                )

    def _plan_cache(self) -> None:
        """Decide what the current trainable set lets the loop cache (``self.plan``)."""
        t = self.spec.training
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        plan = cache_plan(
            self.model,
            self.bundle.layout,
            trainable,
            # (a causal LM has no separate backbone and head: cache_plan says so)
            enabled=t.cache_frozen_features,
            strategy=self.spec.distributed.strategy.value,
            freeze_batch_norm_stats=self.spec.freeze.freeze_batch_norm_stats,
        )
        self.plan = None if isinstance(plan, str) else plan
        if isinstance(plan, str) and t.cache_frozen_features and self.main:
            log.info("frozen-feature cache not used: %s", plan)
        self._set_train_mode()

    def _cache_features(self) -> None:
        """The frozen cache of the plan (after the weights are final). Collective and possibly
        long, so the stop flag is polled per batch; no step has been done yet in this run (or
        since the stage change that asked for it) that a SIGTERM here would lose."""
        self.train_source: tuple[Dataset[Any], Any] = (self.train_ds, self.collate)
        self.eval_sources = dict(self.eval_ds)
        self.step_module.prefix = None
        self.cache_seconds = getattr(self, "cache_seconds", 0.0)
        plan = self.plan
        if plan is None:
            return
        self._report(phase="caching")
        started = time.perf_counter()
        self.model.eval()
        try:
            train = self._cached(self.train_ds, self.collate, "train", plan)
            evals = {k: (self._cached(ds, c, k, plan)) for k, (ds, c) in self.eval_ds.items()}
        except _StopAgreed as stop:
            self._stop(stop.phase)
        except CacheTooLarge as exc:
            if self.main:
                log.info("frozen-feature cache not used: %s", exc)
            self.plan = None
            self._set_train_mode()
            return
        self._set_train_mode()
        self.train_source, self.eval_sources = train, evals
        if plan.kind == "prefix":
            assert plan.splitter is not None
            self.step_module.prefix = (plan.splitter, plan.boundary)
        seconds = time.perf_counter() - started
        self.cache_seconds += seconds
        if self.main:
            log.info(
                "cached %s of %d examples in %.1fs", plan.describe(), len(self.data.train), seconds
            )

    def _cached(
        self, ds: Dataset[Any], collate: Any, name: str, plan: CachePlan
    ) -> tuple[Dataset[Any], Any]:
        model: Any = self.model
        pad_to = None
        if plan.kind == "features":

            def forward(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                return {"features": model.forward_features(**inputs)}

        else:
            splitter, boundary = plan.splitter, plan.boundary
            assert splitter is not None

            def forward(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
                return splitter.prefix(boundary, inputs)

            encodings = getattr(ds, "encodings", None)
            if isinstance(encodings, dict) and encodings.get("input_ids"):
                pad_to = max(len(ids) for ids in encodings["input_ids"])
        tables, labels = compute_features(
            forward,
            ds,
            collate,
            batch_size=max(64, self.spec.training.per_device_batch_size),
            num_replicas=self.world,
            rank=self.rank,
            device=self.acc.device,
            autocast=self.acc.autocast,
            before_batch=lambda: self._poll_stop("caching features"),
            pad_to=pad_to,
            memory_limit_bytes=self.spec.training.cache_memory_limit_mib * 2**20,
            spill_dir=self.output / CACHE_DIR,
            name=f"{name}-{plan.kind}{plan.boundary}",
        )
        if plan.kind == "features":
            return FeatureDataset(tables["features"], labels), feature_collate
        return PrefixDataset(tables, labels), prefix_collate

    def _replan(self) -> bool:
        """After a stage change: re-plan the cache and rebuild it if the plan moved (collective:
        every rank changes stage at the same step). True when the data sources changed."""
        before = (self.plan.kind, self.plan.boundary) if self.plan else None
        self._plan_cache()
        after = (self.plan.kind, self.plan.boundary) if self.plan else None
        if before == after:
            return False
        self._cache_features()
        self.wrapped.train()
        self._set_train_mode()
        return True

    def _drop_cache_files(self) -> None:
        """Remove this process's memory-mapped cache files (they can be large)."""
        rank = getattr(self, "rank", None)
        if rank is None:
            return
        for path in (self.output / CACHE_DIR).glob(f"*-rank{rank}.bin"):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------- preemption

    def _poll_stop(self, phase: str) -> None:
        """Collective: every rank calls it at the same point; raises _StopAgreed on all of
        them when any one was asked to stop."""
        if self.preemption.agreed():
            raise _StopAgreed(phase)

    def _polled(self, batches: Iterable[Any], phase: str) -> Iterator[Any]:
        """``batches``, polling the stop flag before each (every rank has as many)."""
        for batch in batches:
            self._poll_stop(phase)
            yield batch

    def _stop(self, phase: str) -> NoReturn:
        """All ranks agreed to stop: save when steps were done since the last checkpoint
        (collective), then raise Preempted."""
        sig = self.preemption.signal_name or "SIGTERM"
        step = getattr(self, "state", LoopState()).step
        if step > 0 and step != getattr(self, "last_saved_step", step):
            self._save()
            raise Preempted(f"{sig} while {phase}: checkpoint saved at step {step}")
        raise Preempted(f"{sig} while {phase}: nothing new to save since step {step}")

    def _set_train_mode(self) -> None:
        self.policy.set_train_mode(self.model)
        plan = getattr(self, "plan", None)
        if plan is not None and plan.kind == "prefix":
            # The cached prefix ran in eval mode: the uncached path of this run must not differ.
            for name in prefix_modules(self.bundle.layout, plan.boundary):
                self.model.get_submodule(name).eval()
        backbone = getattr(self.model, "backbone", None)
        if isinstance(backbone, nn.Module) and not any(
            p.requires_grad for p in backbone.parameters()
        ):
            # A wholly frozen backbone runs deterministically: no dropout, no BN updates. This
            # is what makes its features cacheable, and the uncached path behaves the same.
            backbone.eval()

    def _log_parameters(self) -> None:
        trainable, total = self.policy.counts(self.model)
        self.trainable, self.total_params = trainable, total
        if self.main:
            log.info("\n%s", self.policy.summary_table(self.model))
            if self.metrics:
                self.metrics.on_parameters(
                    trainable=trainable, total=total, stage=self.policy.stage
                )

    def _rewrap(self) -> None:
        """DDP builds its gradient reducer for the parameters that require grad when it is
        made; after a stage change it must be made again."""
        from accelerate.utils import DistributedType

        if self.acc.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            return
        self.acc._models = [m for m in self.acc._models if m is not self.wrapped]
        self.wrapped = self.acc.prepare_model(self.step_module)

    # ------------------------------------------------------------------------- progress

    def _report(self, *, phase: str, **fields: Any) -> None:
        if not getattr(self, "main", False):
            return
        ev = (getattr(self, "state", None) and self.state.last_eval.get("validation")) or {}
        report = ProgressReport(
            phase=phase,
            step=getattr(self, "state", LoopState()).step,
            total_steps=getattr(self, "total_steps", None),
            train_loss=getattr(self, "state", LoopState()).train_loss,
            eval_loss=ev.get("loss"),
            accuracy=ev.get("accuracy"),
            precision=ev.get("precision"),
            recall=ev.get("recall"),
            f1=ev.get("f1"),
            trainable_parameters=getattr(self, "trainable", None),
            total_parameters=getattr(self, "total_params", None),
            # the latest throughput stays in every later report (saving, evaluating, done),
            # so a short run that finishes between two polls still shows it
            samples_per_second=getattr(self, "samples_per_second", None),
            time=_now(),
        )
        for k, v in fields.items():
            setattr(report, k, v)
        best = read_best(self.output / CHECKPOINT_DIR)
        if best:
            report.best_checkpoint, report.best_metric = best["path"], best.get("metric")
        if self.progress is not None:
            self.progress.update(report)

    # ----------------------------------------------------------------------------- steps

    def _loader(
        self, ds: Dataset[Any], collate: Any, sampler: ResumableDistributedSampler, bs: int
    ) -> DataLoader[Any]:
        g = torch.Generator()
        g.manual_seed(self.spec.training.seed)
        # An own generator: creating the iterator must not draw from the global RNG, or a
        # resumed run's dropout would drift from an uninterrupted one's.
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.spec.training.num_workers,
            generator=g,
        )

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.acc.device) for k, v in batch.items()}
        logits = self.wrapped(batch)
        if self.task == Task.CAUSAL_LM:
            return causal_lm_loss(logits, batch["labels"])
        return nn.functional.cross_entropy(logits.float(), batch["labels"])

    def _optimizer_step(self, micro: list[dict[str, torch.Tensor]]) -> float:
        """One optimizer step over the micro-batches of one accumulation window.

        A window is ``gradientAccumulationSteps`` micro-batches, fewer only when an epoch has
        fewer micro-batches than that (DDP; ``micro_used``); its gradient is the mean of the
        micro-batches' losses, as one batch of all of them would give.

        The accumulation boundary is set explicitly for every micro-batch: Accelerate's
        ``sync_gradients`` is False before the last micro-batch of the window and True on it.
        Under DDP the earlier micro-batches run under ``no_sync`` (no all-reduce) and the
        optimizer wrapper steps on the boundary only; under DeepSpeed Accelerate passes the flag
        to the engine (``set_gradient_accumulation_boundary``) and calls ``engine.step()``,
        which clips, steps the optimizer and the LR schedule, on the boundary only. (Left at
        its default, True, every micro-batch was a boundary and ZeRO stepped the optimizer and
        the schedule once per micro-batch.) Accelerate's ``accumulate()`` is not used: it
        counts micro-batches itself and could not end a short window.
        """
        t = self.spec.training
        n = len(micro)
        # Accelerate divides a DDP loss by its gradient_accumulation_steps and DeepSpeed's
        # engine by the config's; both are training.gradientAccumulationSteps
        # (make_accelerator, build_deepspeed_config). Rescaled so that a window of n
        # micro-batches averages over n (a factor of exactly 1 for a full window).
        rescale = self.acc.gradient_accumulation_steps / n
        total = 0.0
        for i, batch in enumerate(micro):
            boundary = i == n - 1
            self.acc.sync_gradients = boundary
            ctx: AbstractContextManager[Any] = (
                nullcontext() if boundary else self.acc.no_sync(self.wrapped)
            )
            with ctx:
                loss = self._loss(batch)
                self.acc.backward(loss * rescale)
            total += float(loss.detach())
        if not self.deepspeed:
            # The norm is measured whether or not it is clipped (max_norm inf scales by 1):
            # the grad_norm gauge. After DDP's all-reduce every rank has the global gradient.
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = self.acc.clip_grad_norm_(
                params, t.max_grad_norm if t.max_grad_norm is not None else math.inf
            )
            self.grad_norm = float(norm) if norm is not None else None
            self.optimizer.step()
        else:  # the engine clipped and stepped on the boundary, and kept the global norm
            norm = getattr(self.wrapped, "get_global_grad_norm", lambda: None)()
            self.grad_norm = float(norm) if norm is not None else None
        self.scheduler.step()  # under DeepSpeed a no-op: the engine stepped it on the boundary
        self.optimizer.zero_grad(set_to_none=True)
        return total / n

    def _evaluate(self) -> dict[str, Any]:
        self._report(phase="evaluating")
        self.wrapped.eval()
        bs = max(self.spec.training.per_device_batch_size, 32)
        results: dict[str, Any] = {}
        for name, (ds, collate) in self.eval_sources.items():
            started = time.perf_counter()
            sampler = ResumableDistributedSampler(
                len(ds),  # type: ignore[arg-type]
                num_replicas=self.world,
                rank=self.rank,  # type: ignore[arg-type]
                seed=0,
                shuffle=False,
            )
            loader = self._polled(self._loader(ds, collate, sampler, bs), "evaluating")
            if self.task == Task.CAUSAL_LM:
                results[name] = self._evaluate_lm(loader)
            else:
                results[name] = evaluate(
                    self._eval_forward,
                    loader,
                    device=self.acc.device,
                    label_names=self.label_names,
                    per_class=False,
                    confusion=True,
                )
                self.state.confusion[name] = results[name].pop("confusion_matrix")
            if self.metrics:
                self.metrics.on_eval(name, results[name], seconds=time.perf_counter() - started)
        self.wrapped.train()
        self._set_train_mode()
        return results

    def _eval_forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.deepspeed:
            out: torch.Tensor = self.wrapped(batch)
            return out
        with self.acc.autocast():
            return self.step_module(batch)  # type: ignore[no-any-return]

    @torch.no_grad()
    def _evaluate_lm(self, loader: Iterable[dict[str, torch.Tensor]]) -> dict[str, Any]:
        loss_sum = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            batch = {k: v.to(self.acc.device) for k, v in batch.items()}
            logits = self._eval_forward(batch).float()
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            ce = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            loss_sum += torch.tensor([float(ce), float(mask.sum())], dtype=torch.float64)
        total = gather_all(loss_sum.unsqueeze(0)).sum(0)
        loss = float(total[0]) / max(float(total[1]), 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(total[1])}

    def _main_metric(self, results: dict[str, Any]) -> dict[str, Any]:
        if "validation" in results:
            return dict(results["validation"])
        return dict(next(iter(results.values())))

    def _metric_for_best(self, main: dict[str, Any] | None = None) -> str:
        """The metric that picks the best checkpoint: the spec's, except that a causal LM
        (whose evaluation has no classification metrics) and an evaluation without that
        metric use loss."""
        name = self.spec.training.metric_for_best
        if self.task == Task.CAUSAL_LM or (main is not None and name not in main):
            return "loss"
        return name

    def _after_eval(self, results: dict[str, Any]) -> bool:
        """Record an evaluation; returns whether it is the best so far."""
        t = self.spec.training
        self.state.last_eval = results
        main = self._main_metric(results)
        metric_name = self._metric_for_best(main)
        value = float(main[metric_name])
        best = is_improvement(metric_name, value, self.state.best_metric)
        if best:
            self.state.best_metric, self.state.best_step = value, self.state.step
        if t.early_stopping is not None:
            es = t.early_stopping
            es_name = es.metric if es.metric in main and self.task != Task.CAUSAL_LM else "loss"
            if is_improvement(
                es_name, float(main[es_name]), self.state.early_stopping_best, es.min_delta
            ):
                self.state.early_stopping_best = float(main[es_name])
                self.state.bad_evals = 0
            else:
                self.state.bad_evals += 1
                if self.state.bad_evals >= es.patience:
                    self.state.stopped_early = True
        if self.main:
            log.info("step %d eval: %s", self.state.step, _brief(results))
            self.state.log_history += eval_records(
                step=self.state.step, epoch=self._epoch(), results=results
            )
        self._report(
            phase="training",
            eval_sets={
                k: {m: float(v) for m, v in r.items() if isinstance(v, (int, float))}
                for k, r in results.items()
            },
        )
        return best

    def _save(self, *, is_best: bool = False) -> Path | None:
        self._report(phase="saving")
        self.state.freeze = self.policy.state_dict()
        started = time.perf_counter()
        path = self.ckpt.save(
            self.acc,
            step=self.state.step,
            trainer_state={**asdict(self.state), "run": self.identity.to_dict()},
            metric=self.state.best_metric,
            is_best=is_best,
        )
        self.last_saved_step = self.state.step
        if path is None:  # not every rank's part was visible: nothing committed (logged)
            self._report(phase="training")
            return None
        if self.metrics:
            self.metrics.on_checkpoint(seconds=time.perf_counter() - started, timestamp=time.time())
        self._report(
            phase="training", latest_checkpoint=str(path), latest_checkpoint_step=self.state.step
        )
        return path

    # ------------------------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        """Train to the end (or early stop) and export; raises Preempted after a SIGTERM save."""
        try:
            return self._run()
        finally:
            self._drop_cache_files()
            if self.progress is not None:
                self.progress.close()

    def _run(self) -> dict[str, Any]:
        started = time.time()
        with self.preemption.interruptible("loading"):
            self._setup()
        self._cache_features()
        if self.metrics:
            self.metrics.on_start(run_info_from_env(self.total_steps), step=self.state.step)
        t = self.spec.training
        ds, collate = self.train_source
        sampler = ResumableDistributedSampler(
            len(ds),  # type: ignore[arg-type]
            num_replicas=self.world,
            rank=self.rank,  # type: ignore[arg-type]
            seed=t.seed,
            shuffle=True,
        )
        self.last_saved_step = self.state.step if self.resume_from is not None else -1
        last_eval_step = (
            self.state.step if self.state.last_eval and self.resume_from is not None else -1
        )
        self.wrapped.train()
        self._set_train_mode()
        self._report(phase="training")
        try:
            self._train(sampler, ds, collate, last_eval_step)
        except _StopAgreed as stop:
            self._stop(stop.phase)
        loop_seconds = time.perf_counter() - self.train_started
        self.train_seconds = self.cache_seconds + loop_seconds
        self.samples_per_second = round(self.samples_this_run / max(loop_seconds, 1e-9), 2)
        # Everything is in the last checkpoint: an export cut short is simply redone.
        with self.preemption.interruptible("exporting"):
            summary = self._finish(started)
        if self.metrics:  # rank 0: let Prometheus read the final values before exiting
            self.metrics.hold_until_scraped()
        return summary

    def _train(
        self,
        sampler: ResumableDistributedSampler,
        ds: Dataset[Any],
        collate: Any,
        last_eval_step: int,
    ) -> None:
        """Steps, evaluations and checkpoints to the end; raises _StopAgreed on SIGTERM."""
        t = self.spec.training
        bs, gas = t.per_device_batch_size, t.gradient_accumulation_steps
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
        window_samples, window_tokens = 0, 0
        self.train_started = train_started = time.perf_counter()
        self.steps_this_run = 0
        # The loop's time to the end of its latest step (loaders and logging windows included,
        # the evaluation and checkpoint after that step not): kubegraft compare's calibration.
        self.step_seconds = 0.0

        def log_window() -> None:
            """Collective: every rank at the same steps (logging boundaries, the end)."""
            nonlocal window_loss, window_steps, window_start, window_samples, window_tokens
            window = self._reduce_window(
                window_loss / window_steps, window_samples, window_tokens, train_started
            )
            elapsed = time.perf_counter() - window_start
            self.state.train_loss = window.loss
            self.samples_per_second = round(window.samples / max(elapsed, 1e-9), 2)
            self.samples_this_run += window.samples
            self._log_step(window, window.samples / max(elapsed, 1e-9))
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            window_samples, window_tokens = 0, 0

        while self.state.step < self.total_steps and not self.state.stopped_early:
            sampler.set_epoch(self.state.epoch)
            sampler.skip(self.state.batches_done * bs)
            batches: Iterator[dict[str, torch.Tensor]] = iter(
                self._loader(ds, collate, sampler, bs)
            )
            epoch_end = False
            while not epoch_end and self.state.step < self.total_steps:
                step_started = time.perf_counter()
                stage = self.policy.stage_at(epoch=self.state.epoch, step=self.state.step)
                if stage != self.policy.stage:
                    self.policy.apply(self.model, stage=stage)
                    self._rewrap()
                    self._set_train_mode()
                    self._log_parameters()
                    if self._replan():
                        # Same sampler, same position: only where the examples come from changes.
                        ds, collate = self.train_source
                        sampler.set_epoch(self.state.epoch)
                        sampler.skip(self.state.batches_done * bs)
                        batches = iter(self._loader(ds, collate, sampler, bs))
                n_micro = min(gas, self.micro_used - self.state.batches_done)
                micro = [next(batches) for _ in range(n_micro)]
                loss = self._optimizer_step(micro)
                self.state.step += 1
                samples, tokens = batch_counts(micro)
                window_samples += samples
                window_tokens += tokens if tokens is not None else -1  # < 0: no text batches
                if self.metrics:
                    self.metrics.on_step(
                        step=self.state.step,
                        seconds=time.perf_counter() - step_started,
                        lr=self._lr(),
                        grad_norm=self.grad_norm,
                        timestamp=time.time(),
                    )
                if self.progress is not None:  # carried by the next heartbeat
                    self.progress.update(step=self.state.step, urgent=False)
                self.steps_this_run += 1
                self.state.batches_done += n_micro
                window_loss += loss
                window_steps += 1
                if self.state.batches_done >= self.micro_used:
                    self.state.epoch += 1
                    self.state.batches_done = 0
                    epoch_end = True

                if self.state.step % t.log_every_steps == 0 or self.state.step == self.total_steps:
                    log_window()

                self._poll_stop("training")
                self.step_seconds = time.perf_counter() - train_started

                do_eval = (
                    t.eval_every_steps is not None and self.state.step % t.eval_every_steps == 0
                ) or (t.eval_every_steps is None and epoch_end)
                is_best = False
                if do_eval:
                    is_best = self._after_eval(self._evaluate())
                    last_eval_step = self.state.step
                do_ckpt = (
                    t.checkpoint_every_steps is not None
                    and self.state.step % t.checkpoint_every_steps == 0
                ) or (t.checkpoint_every_steps is None and epoch_end)
                if do_ckpt or is_best:  # the best evaluation is always a checkpoint
                    self._save(is_best=is_best)
                    self._poll_stop("saving")  # a SIGTERM during the save: it is saved now
                if self.state.stopped_early:
                    if self.main:
                        log.info("early stopping at step %d", self.state.step)
                    break

        if window_steps:  # stopped early inside a logging window: count its work too
            log_window()
        if self.metrics:
            self.metrics.on_end(step=self.state.step)
        if last_eval_step != self.state.step:
            is_best = self._after_eval(self._evaluate())
            if is_best:
                self._save(is_best=True)
        if self.last_saved_step != self.state.step:
            self._save()
        self._poll_stop("saving")  # a SIGTERM during the last evaluation or save

    def _lr(self) -> float:
        if hasattr(self.scheduler, "get_last_lr"):
            return float(self.scheduler.get_last_lr()[0])
        return 0.0

    def _reduce_window(
        self, loss: float, samples: int, tokens: int, train_started: float
    ) -> LogWindow:
        """The logging window over all ranks, in one collective that every rank joins: sums
        of samples and tokens, the mean loss, the max of GPU memory (CUDA only)."""
        cuda = self.acc.device.type == "cuda"
        allocated = torch.cuda.memory_allocated(self.acc.device) if cuda else 0
        peak = torch.cuda.max_memory_allocated(self.acc.device) if cuda else 0
        row = torch.tensor([[loss, samples, tokens, allocated, peak]], dtype=torch.float64)
        table = gather_all(row)
        per_step = (time.perf_counter() - train_started) / max(self.steps_this_run, 1)
        return LogWindow(
            loss=float(table[:, 0].mean()),
            samples=int(table[:, 1].sum()),
            tokens=int(table[:, 2].sum()) if bool((table[:, 2] >= 0).all()) else None,
            epoch=self._epoch(),
            eta_seconds=per_step * (self.total_steps - self.state.step),
            gpu_memory_allocated_bytes=int(table[:, 3].max()) if cuda else None,
            gpu_memory_peak_bytes=int(table[:, 4].max()) if cuda else None,
        )

    def _log_step(self, window: LogWindow, throughput: float) -> None:
        if not self.main:
            return
        self.state.log_history.append(
            step_record(
                step=self.state.step,
                epoch=window.epoch,
                loss=window.loss,
                learning_rate=self._lr(),
                samples_per_second=throughput,
                grad_norm=self.grad_norm,
            )
        )
        log.info(
            "step %d/%d epoch %.2f loss %.4f lr %.2e %.1f samples/s",
            self.state.step,
            self.total_steps,
            window.epoch,
            window.loss,
            self._lr(),
            throughput,
        )
        if self.metrics:
            self.metrics.on_log(window)
        self._report(
            phase="training",
            epoch=round(window.epoch, 4),
            samples_per_second=round(throughput, 2),
            eta_seconds=int(window.eta_seconds),
        )

    def _epoch(self) -> float:
        """The fractional epoch reached."""
        return float(self.state.epoch + self.state.batches_done / max(self.micro_used, 1))

    def _finish(self, started: float) -> dict[str, Any]:
        results = self.state.last_eval
        state_dict = None
        if self.deepspeed:
            full = self.acc.get_state_dict(self.wrapped)  # collective under ZeRO-3; rank 0 gets it
            if full is not None:
                state_dict = {k.removeprefix("model."): v for k, v in full.items()}
        self.acc.wait_for_everyone()
        summary: dict[str, Any] = {}
        if self.main:
            self._report(phase="saving")
            model_dir = self.output / MODEL_DIR
            if self.spec.output.save_final_model:
                model = self.acc.unwrap_model(self.wrapped).model
                ds = self.spec.distributed.deepspeed
                if state_dict is not None and ds is not None and ds.zero_stage == 3:
                    # ZeRO-3 partitioned the module's parameters in place (empty tensors
                    # here): export into a fresh, unpartitioned copy of the architecture,
                    # built whole on this rank alone (no zero.Init, whose broadcasts would
                    # wait for the other ranks).
                    with without_zero3_init():
                        model = load_model(self.spec, num_labels=self.num_labels).model
                self.bundle.export(
                    model, model_dir, labels=self.label_names or None, state_dict=state_dict
                )
                (model_dir / LABELS_FILE).write_text(json.dumps(self.label_names, indent=2) + "\n")
            main = self._main_metric(results) if results else {}
            best = read_best(self.output / CHECKPOINT_DIR)
            summary = {
                "job": self.job_name,
                "step": self.state.step,
                "total_steps": self.total_steps,
                "epochs_done": self.state.epoch,
                "stopped_early": self.state.stopped_early,
                "train_loss": self.state.train_loss,
                "eval": results,
                **{
                    k: main.get(k)
                    for k in ("loss", "accuracy", "precision", "recall", "f1")
                    if k in main
                },
                "num_labels": len(self.label_names),
                "chance_accuracy": self._chance(),
                "label_names": self.label_names,
                "train_examples": len(self.data.train),
                "processes": self.world,
                "threads_per_process": self.threads,
                "strategy": self.spec.distributed.strategy.value,
                "feature_cache": self.plan is not None and self.plan.kind == "features",
                "prefix_cache_boundary": (
                    self.plan.boundary
                    if self.plan is not None and self.plan.kind == "prefix"
                    else None
                ),
                "trainable_parameters": self.trainable,
                "total_parameters": self.total_params,
                "best_checkpoint": best["path"] if best else None,
                "best_metric": best.get("metric") if best else None,
                "metric_for_best": self._metric_for_best(main or None),
                "wall_seconds": round(time.time() - started, 2),
                "train_seconds": round(self.train_seconds, 2),
                "cache_seconds": round(self.cache_seconds, 2),
                "step_seconds": round(self.step_seconds, 4),
                "samples_per_second": round(self.samples_per_second, 2),
                "model_dir": str(self.output / MODEL_DIR)
                if self.spec.output.save_final_model
                else None,
            }
            write_atomically(
                self.output / METRICS_FILE, json.dumps(summary, indent=2, default=str) + "\n"
            )
            write_run_report(
                self.output,
                job=self.job_name,
                spec=self.spec,
                summary=summary,
                records=self.state.log_history,
                confusion=self.state.confusion,
                parameter_table=self.policy.summary_table(self.model),
                model_dir=model_dir if self.spec.output.save_final_model else None,
            )
            self._report(phase="done")
        self.acc.wait_for_everyone()
        return summary

    def _chance(self) -> float | None:
        """Accuracy of always predicting the most frequent validation class (the bar to beat)."""
        split = self.data.validation or next(iter(self.data.eval_sets.values()), None)
        if split is None or not split.labels or self.task == Task.CAUSAL_LM:
            return None
        counts: dict[int, int] = {}
        for y in split.labels:
            counts[y] = counts.get(y, 0) + 1
        return max(counts.values()) / len(split.labels)


_SHAPE_MISMATCH = (
    "size mismatch",
    "Missing key(s)",
    "Unexpected key(s)",
    "doesn't match the size of optimizer's group",
    "parameter group that doesn't match",
)


def _is_shape_mismatch(exc: BaseException) -> bool:
    """Whether loading a checkpoint failed because it belongs to another network (as
    opposed to an I/O error, which a retry may fix)."""
    text = str(exc)
    return any(marker in text for marker in _SHAPE_MISMATCH)


def _brief(results: dict[str, Any]) -> str:
    parts = []
    for name, m in results.items():
        parts.append(
            name
            + " "
            + " ".join(
                f"{k}={v:.4f}"
                for k, v in m.items()
                if k in ("loss", "accuracy", "f1", "perplexity")
            )
        )
    return "; ".join(parts)


__all__ = ["LoopState", "Preempted", "TrainStep", "Trainer", "classification_metrics", "lr_lambda"]
