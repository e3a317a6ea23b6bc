"""Frozen-backbone and frozen-prefix caches: compute the frozen part once, train the rest.

When only the new head trains (feature extraction) and the frozen backbone is deterministic
(eval mode: no dropout, batch-norm statistics fixed), the backbone's pooled output for an
example is the same in every epoch. Computing it once and training the head on the stored
features gives the same result as running the backbone every step, far faster: a step is a
small matrix product instead of a transformer forward pass.

Each process computes the features of its shard (an unshuffled, padded split of the set), the
shards are all-gathered, and every process ends up with the whole table ``[N, D]`` indexed by
example. The training loop then draws exactly the same examples, in the same order, as the
uncached path (same sampler, same seed), so both paths see identical data.

Partial freezing (top-k, the early stages of gradual unfreezing) gets the same treatment one
level down: when every parameter below block ``b`` is frozen, the state at that boundary
(:mod:`~kubegraft_trainer.prefix_split`: a BERT-like encoder's hidden sequence and attention
mask, an EfficientNet's feature map) is computed once with the prefix in eval mode, and the
top blocks and the head train on it, dropout inside the trainable blocks on. The table is
``N x (per-example state)`` float32: kept in memory up to ``training.cacheMemoryLimitMiB`` per
process, memory-mapped from a file under ``<output>/cache`` beyond that when the disk has
room, and not used at all otherwise (the log says why, as for every other reason).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kubegraft_trainer.blocks import HEAD, TOP, BlockLayout, part_of
from kubegraft_trainer.collectives import any_rank, gather_all
from kubegraft_trainer.data import ResumableDistributedSampler
from kubegraft_trainer.prefix_split import HIDDEN, PrefixSplitter, prefix_splitter

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


@dataclass(frozen=True)
class CachePlan:
    """What the loop caches: the pooled ``features`` of a wholly frozen backbone, or the
    state below block ``boundary`` (``prefix``) computed by ``splitter``."""

    kind: Literal["features", "prefix"]
    boundary: int = 0
    splitter: PrefixSplitter | None = None

    def describe(self) -> str:
        if self.kind == "features":
            return "frozen backbone features"
        return f"frozen prefix below block {self.boundary}"


def cache_plan(
    model: nn.Module,
    layout: BlockLayout,
    trainable: set[str],
    *,
    enabled: bool,
    strategy: str,
    freeze_batch_norm_stats: bool = True,
) -> CachePlan | str:
    """What can be cached for this trainable set, or why nothing can (a log line).

    Sound only for a classification model with a separate backbone and head whose parameters
    are not sharded away: the features when only the head trains (and the backbone is in eval
    mode), else the prefix below the lowest trainable block when nothing below it trains.
    """
    if not enabled:
        return "training.cacheFrozenFeatures is false"
    if strategy != "ddp":
        return f"strategy {strategy} shards or wraps parameters; the cache needs the plain model"
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return "the model has no separate backbone and head"
    if not trainable:
        return "nothing trains"
    parts = {n: part_of(layout, n) for n in trainable}
    if all(p == HEAD for p in parts.values()):
        backbone = getattr(model, "backbone", None)
        if backbone is None or any(m.training for m in backbone.modules()):
            return "the backbone is not in eval mode (dropout or batch-norm updates)"
        return CachePlan("features")
    below = sorted(n for n, p in parts.items() if p not in (HEAD, TOP, "block"))
    if below:
        return f"parameters below the blocks train (e.g. {below[0]})"
    boundary = (
        min(
            i for n in trainable if (i := layout.block_index(n)) is not None and parts[n] == "block"
        )
        if any(p == "block" for p in parts.values())
        else len(layout.blocks)
    )
    if boundary == 0:
        return "the bottom block trains: there is no frozen prefix to cache"
    splitter = prefix_splitter(model, layout)
    if isinstance(splitter, str):
        return splitter
    if not freeze_batch_norm_stats and _has_batch_norm(model, prefix_modules(layout, boundary)):
        return "freezeBatchNormStats is false: the frozen prefix's batch norms keep updating"
    return CachePlan("prefix", boundary=boundary, splitter=splitter)


def prefix_modules(layout: BlockLayout, boundary: int) -> list[str]:
    """The module names of the frozen prefix: the embeddings (stem) and blocks below it."""
    return [*layout.embeddings, *layout.blocks[:boundary]]


def _has_batch_norm(model: nn.Module, names: list[str]) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        for name in names
        for m in model.get_submodule(name).modules()
    )


class FeatureDataset(Dataset[dict[str, Any]]):
    """Cached features and labels, with the same ``index`` keys as the raw dataset."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "labels": self.labels[i], "index": i}


def feature_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack cached features into a batch."""
    return {
        "features": torch.stack([it["features"] for it in items]),
        "labels": torch.stack([torch.as_tensor(it["labels"]) for it in items]),
        "index": torch.tensor([int(it["index"]) for it in items]),
    }


class PrefixDataset(Dataset[dict[str, Any]]):
    """Cached boundary states (``hidden``, ``attention_mask`` for text) and labels."""

    def __init__(self, states: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.states = states
        self.labels = labels

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**{k: v[i] for k, v in self.states.items()}, "labels": self.labels[i], "index": i}


def prefix_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack cached states; text is cut to the batch's longest example (dynamic padding, as
    the raw collator pads), so a step costs what the uncached one does above the boundary."""
    out = {
        k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0] if k != "index"
    }
    out["index"] = torch.tensor([int(it["index"]) for it in items])
    if "attention_mask" in out:
        longest = int(out["attention_mask"].sum(dim=1).max())
        out["attention_mask"] = out["attention_mask"][:, :longest]
        out[HIDDEN] = out[HIDDEN][:, :longest]
    return out


class CacheTooLarge(Exception):
    """The cache fits neither the memory limit nor the disk (the message says which)."""


def allocate(
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    *,
    memory_limit_bytes: int,
    spill_dir: Path | None,
) -> torch.Tensor:
    """An uninitialised table: in memory up to the limit, else a memory-mapped file in
    ``spill_dir`` (when the disk has room for it and a tenth more)."""
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    if nbytes <= memory_limit_bytes:
        return torch.empty(shape, dtype=dtype)
    if spill_dir is None:
        raise CacheTooLarge(f"{nbytes / 2**20:.0f} MiB is over cacheMemoryLimitMiB")
    spill_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(spill_dir).free
    if nbytes * 1.1 > free:
        raise CacheTooLarge(
            f"{nbytes / 2**20:.0f} MiB is over cacheMemoryLimitMiB and {spill_dir} has only "
            f"{free / 2**20:.0f} MiB free"
        )
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    table = np.memmap(spill_dir / f"{name}.bin", dtype=np_dtype, mode="w+", shape=shape)
    return torch.from_numpy(table)


@torch.no_grad()
def compute_features(
    forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    dataset: Dataset[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]],
    *,
    batch_size: int,
    num_replicas: int,
    rank: int,
    device: torch.device,
    autocast: Callable[[], Any],
    before_batch: Callable[[], None] | None = None,
    pad_to: int | None = None,
    memory_limit_bytes: int = 2**62,
    spill_dir: Path | None = None,
    name: str = "cache",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``forward``'s per-example outputs for every example of ``dataset``, on every process.

    Each process computes its shard (unshuffled, padded to equal length), batch by batch; each
    batch is all-gathered at once and written into the tables, so no process holds more than
    one gathered batch besides them. ``pad_to`` pads dimension 1 of the outputs (a text
    state's sequence) to one length so that every batch gathers to one shape.
    ``before_batch`` is called before each batch, on every rank the same number of times
    (the loop's collective SIGTERM poll, which may raise to abandon the cache). Raises
    :class:`CacheTooLarge`, on every rank alike, when the tables fit nowhere."""
    size = len(dataset)  # type: ignore[arg-type]
    sampler = ResumableDistributedSampler(
        size, num_replicas=num_replicas, rank=rank, seed=0, shuffle=False
    )
    share = sampler.indices()
    encodings = getattr(dataset, "encodings", None)
    if isinstance(encodings, dict) and "input_ids" in encodings:
        # Texts in order of length: each padded batch holds similar lengths, so little compute
        # goes to padding (the outputs on real tokens do not depend on it).
        share = sorted(share, key=lambda i: len(encodings["input_ids"][i]))
    batches = [share[i : i + batch_size] for i in range(0, len(share), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    tables: dict[str, torch.Tensor] = {}
    labels: torch.Tensor | None = None
    for batch in loader:
        if before_batch is not None:
            before_batch()
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        with autocast():
            outputs = forward(inputs)
        outputs = {k: _padded(v.cpu(), pad_to) for k, v in outputs.items()}
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        index = gather_all(batch["index"])
        ys = gather_all(batch["labels"])
        if labels is None:
            labels = torch.empty((size, *ys.shape[1:]), dtype=ys.dtype)
            problem = ""
            try:
                for k, v in outputs.items():
                    tables[k] = allocate(
                        f"{name}-{k}-rank{rank}",
                        (size, *v.shape[1:]),
                        v.dtype,
                        memory_limit_bytes=memory_limit_bytes,
                        spill_dir=spill_dir,
                    )
            except CacheTooLarge as exc:
                problem = str(exc)
            if any_rank(bool(problem)):
                raise CacheTooLarge(problem or "another process has no room for the cache")
        labels[index] = ys
        for k, v in outputs.items():
            tables[k][index] = gather_all(v)
    if labels is None:
        raise CacheTooLarge("the data set is empty")
    return tables, labels


def _padded(t: torch.Tensor, length: int | None) -> torch.Tensor:
    if length is None or t.ndim < 2 or t.shape[1] >= length:
        return t
    pad = torch.zeros((t.shape[0], length - t.shape[1], *t.shape[2:]), dtype=t.dtype)
    return torch.cat([t, pad], dim=1)
