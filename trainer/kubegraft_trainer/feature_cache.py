"""Frozen-backbone feature cache: compute the backbone once, train the head for many epochs.

When only the new head trains (feature extraction) and the frozen backbone is deterministic
(eval mode: no dropout, batch-norm statistics fixed), the backbone's pooled output for an
example is the same in every epoch. Computing it once and training the head on the stored
features gives the same result as running the backbone every step, far faster: a step is a
small matrix product instead of a transformer forward pass.

Each process computes the features of its shard (an unshuffled, padded split of the set), the
shards are all-gathered, and every process ends up with the whole table ``[N, D]`` indexed by
example. The training loop then draws exactly the same examples, in the same order, as the
uncached path (same sampler, same seed), so both paths see identical data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kubegraft_trainer.blocks import HEAD, part_of
from kubegraft_trainer.collectives import gather_all
from kubegraft_trainer.data import ResumableDistributedSampler

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def cache_blocker(
    model: nn.Module, layout: Any, trainable: set[str], *, enabled: bool, strategy: str
) -> str | None:
    """Why the feature cache cannot be used (None when it can).

    The cache is sound only for a classification model whose trainable parameters all lie in
    the head, whose backbone is in eval mode, and whose parameters are not sharded away.
    """
    if not enabled:
        return "training.cacheFrozenFeatures is false"
    if strategy != "ddp":
        return f"strategy {strategy} shards or wraps parameters; the cache needs the plain model"
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        return "the model has no separate backbone and head"
    if not trainable:
        return "nothing trains"
    outside = [n for n in trainable if part_of(layout, n) != HEAD]
    if outside:
        return f"backbone parameters train (e.g. {sorted(outside)[0]})"
    backbone = getattr(model, "backbone", None)
    if backbone is None or any(m.training for m in backbone.modules()):
        return "the backbone is not in eval mode (dropout or batch-norm updates)"
    return None


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


@torch.no_grad()
def compute_features(
    model: nn.Module,
    dataset: Dataset[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]],
    *,
    batch_size: int,
    num_replicas: int,
    rank: int,
    device: torch.device,
    autocast: Callable[[], Any],
    before_batch: Callable[[], None] | None = None,
) -> FeatureDataset:
    """The backbone features of every example of ``dataset``, on every process.

    ``before_batch`` is called before each batch, on every rank the same number of times
    (the shards are padded to one length): the loop's collective SIGTERM poll, which may
    raise to abandon the cache."""
    size = len(dataset)  # type: ignore[arg-type]
    sampler = ResumableDistributedSampler(
        size, num_replicas=num_replicas, rank=rank, seed=0, shuffle=False
    )
    share = sampler.indices()
    encodings = getattr(dataset, "encodings", None)
    if isinstance(encodings, dict) and "input_ids" in encodings:
        # Texts in order of length: each padded batch holds similar lengths, so little compute
        # goes to padding (mean pooling ignores padding, so the features do not depend on it).
        share = sorted(share, key=lambda i: len(encodings["input_ids"][i]))
    batches = [share[i : i + batch_size] for i in range(0, len(share), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    was_training = model.training
    model.eval()
    feats, labels, indices = [], [], []
    for batch in loader:
        if before_batch is not None:
            before_batch()
        inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUTS}
        with autocast():
            f = model.forward_features(**inputs)  # type: ignore[operator]
        feats.append(f.float().cpu())
        labels.append(batch["labels"])
        indices.append(batch["index"])
    model.train(was_training)
    local_f = torch.cat(feats)
    local_y = torch.cat(labels)
    local_i = torch.cat(indices)
    all_f = gather_all(local_f)
    all_y = gather_all(local_y)
    all_i = gather_all(local_i)
    table = torch.empty((size, all_f.shape[1]), dtype=torch.float32)
    ys = torch.empty((size, *all_y.shape[1:]), dtype=all_y.dtype)
    table[all_i] = all_f
    ys[all_i] = all_y
    return FeatureDataset(table, ys)
