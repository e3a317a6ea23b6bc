"""Labelled data: from the manifest's data sources to per-process torch data loaders.

Sits between the manifest (``spec.dataset``) and the training loop. Reading is split from
encoding so the pure parts (which examples, which labels, which split) are testable without a
model:

1. :func:`read_examples` reads one source (jsonl/csv, optionally gzipped, parquet, or an image
   folder with one sub-folder per class) into parallel lists of inputs and label names,
   following dotted field paths such as ``names.en``.
2. :func:`prepare_data` applies include/exclude, builds the label vocabulary (sorted, so ids
   are stable across runs and processes, and saved with the model), carves a seeded stratified
   validation split, takes seeded stratified ``maxSamples`` subsets and reads the named
   evaluation sets. Every process computes the same result from the same seed, so no
   broadcast is needed.
3. :func:`build_dataset` encodes a split for the model: the checkpoint's own tokenizer (no
   padding here; :class:`TextCollator` pads each batch to its longest example) or image
   transforms with the backbone's size/mean/std. Every item carries its ``index`` so the
   feature cache and the evaluation can identify examples across processes.
4. :class:`ResumableDistributedSampler` shards and shuffles per epoch (seed + epoch, as
   ``DistributedSampler`` does) and can skip the batches an interrupted run already did.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from kubegraft.api.v1alpha1 import DataFormat, DatasetSpec, DataSource
from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.uris import resolve_uri

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IGNORE_INDEX = -100
"""Label value the loss ignores (padding in causal-LM labels)."""


# ------------------------------------------------------------------------------------ reading


@dataclass
class Split:
    """One set of examples: inputs (texts or image paths) and label ids (-1 when unlabelled)."""

    inputs: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class PreparedData:
    """What the loop needs: the train split, validation, named eval sets and label names."""

    train: Split
    validation: Split | None
    eval_sets: dict[str, Split] = field(default_factory=dict)
    label_names: list[str] = field(default_factory=list)


def get_field(record: Any, dotted: str) -> Any:
    """``record["a"]["b"]`` for ``"a.b"``; a flat key containing dots wins if present."""
    if isinstance(record, dict) and dotted in record:
        return record[dotted]
    value = record
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(dotted)
    return value


def infer_format(source: DataSource, path: Path) -> DataFormat:
    """The source's declared format, or one inferred from the path."""
    if source.format is not None:
        return source.format
    if path.is_dir():
        return DataFormat.IMAGE_FOLDER
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    for suffix, fmt in (
        (".jsonl", DataFormat.JSONL),
        (".json", DataFormat.JSONL),
        (".csv", DataFormat.CSV),
        (".parquet", DataFormat.PARQUET),
    ):
        if name.endswith(suffix):
            return fmt
    raise ConfigError(f"cannot infer the format of {path.name!r}; set format", field="format")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_records(path: Path, fmt: DataFormat) -> list[dict[str, Any]]:
    """All records of a tabular file as dicts."""
    if fmt == DataFormat.JSONL:
        records = []
        with _open_text(path) as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{path}: line {line_no} is not JSON: {exc}") from exc
        return records
    if fmt == DataFormat.CSV:
        with _open_text(path) as f:
            return list(csv.DictReader(f))
    if fmt == DataFormat.PARQUET:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows: list[dict[str, Any]] = table.to_pylist()
        return rows
    raise ConfigError(f"{fmt} is not a tabular format")


def _label_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_examples(
    source: DataSource, spec: DatasetSpec, *, field_name: str, image: bool, labelled: bool = True
) -> tuple[list[str], list[str]]:
    """Inputs (texts or absolute image paths) and label names of one source."""
    path = resolve_uri(source.uri, field=f"{field_name}.uri")
    fmt = infer_format(source, path)
    if fmt == DataFormat.IMAGE_FOLDER:
        if not path.is_dir():
            raise ConfigError(f"{path} is not a directory", field=f"{field_name}.uri")
        inputs, labels = [], []
        for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            for file in sorted(class_dir.rglob("*")):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    inputs.append(str(file))
                    labels.append(class_dir.name)
        if not inputs:
            raise ConfigError(
                f"no images in class sub-folders of {path}", field=f"{field_name}.uri"
            )
        return inputs, labels
    records = read_records(path, fmt)
    if not records:
        raise ConfigError(f"{path} holds no records", field=f"{field_name}.uri")
    input_field = spec.image_field if image else spec.text_field
    inputs, labels = [], []
    for i, record in enumerate(records):
        try:
            value = get_field(record, input_field)
        except KeyError:
            raise ConfigError(
                f"record {i} of {path.name} has no field {input_field!r}",
                field="spec.dataset." + ("imageField" if image else "textField"),
            ) from None
        if image:
            p = Path(str(value))
            value = str(p if p.is_absolute() else (path.parent / p))
        inputs.append(str(value))
        if labelled:
            try:
                labels.append(_label_text(get_field(record, spec.label_field)))
            except KeyError:
                raise ConfigError(
                    f"record {i} of {path.name} has no field {spec.label_field!r}",
                    field="spec.dataset.labelField",
                ) from None
        else:
            labels.append("")
    return inputs, labels


# ---------------------------------------------------------------------------------- selection


def sort_label_names(names: Sequence[str]) -> list[str]:
    """Label vocabulary in a stable order: numeric labels by value, others alphabetically."""
    unique = set(names)
    if all(n.lstrip("-").isdigit() for n in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def filter_labels(
    inputs: list[str],
    labels: list[str],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """Keep only included labels, or drop excluded ones."""
    keep_set = set(include) if include else None
    drop_set = set(exclude or ())
    pairs = [
        (x, y)
        for x, y in zip(inputs, labels, strict=True)
        if (keep_set is None or y in keep_set) and y not in drop_set
    ]
    return [x for x, _ in pairs], [y for _, y in pairs]


def _by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels):
        groups[y].append(i)
    return groups


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices (train, held-out) with about ``fraction`` of each class held out, seeded.

    Classes with a single example stay in train. Indices come back sorted.
    """
    rng = random.Random(seed)
    train, held = [], []
    groups = _by_class(labels)
    for cls in sorted(groups):
        idx = list(groups[cls])
        rng.shuffle(idx)
        n_held = round(len(idx) * fraction) if len(idx) > 1 else 0
        n_held = min(n_held, len(idx) - 1)
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return sorted(train), sorted(held)


def stratified_subset(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """At most ``n`` indices keeping class proportions (largest remainders), seeded, sorted.

    Every class keeps at least one example while ``n`` allows it, so a small subset does not
    silently lose rare classes.
    """
    if n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    groups = _by_class(labels)
    total = len(labels)
    quotas = {c: n * len(ix) / total for c, ix in groups.items()}
    take = {
        c: max(1, math.floor(q)) if n >= len(groups) else math.floor(q) for c, q in quotas.items()
    }
    left = n - sum(take.values())
    if left > 0:
        for c in sorted(groups, key=lambda c: (-(quotas[c] - math.floor(quotas[c])), c)):
            if left == 0:
                break
            if take[c] < len(groups[c]):
                take[c] += 1
                left -= 1
    chosen: list[int] = []
    for c in sorted(groups):
        idx = list(groups[c])
        rng.shuffle(idx)
        chosen.extend(idx[: min(take[c], len(idx))])
    rng.shuffle(chosen)
    return sorted(chosen[:n])


def _encode(labels: list[str], ids: dict[str, int]) -> list[int]:
    return [ids[y] for y in labels]


def prepare_data(spec: DatasetSpec, *, task: str, seed: int) -> PreparedData:
    """Read and split every source of ``spec``; the same on every process for a given seed."""
    image = task == "image-classification"
    labelled = task != "causal-lm"
    x, y = read_examples(
        spec.train, spec, field_name="spec.dataset.train", image=image, labelled=labelled
    )
    if labelled:
        x, y = filter_labels(x, y, spec.include_labels, spec.exclude_labels)
        if not x:
            raise ConfigError(
                "no training examples are left after includeLabels/excludeLabels",
                field="spec.dataset",
            )
        names = sort_label_names(y)
    else:
        names = []
    ids = {n: i for i, n in enumerate(names)}
    train = Split(x, _encode(y, ids) if labelled else [-1] * len(x))

    def read_other(source: DataSource, field_name: str) -> Split:
        xs, ys = read_examples(source, spec, field_name=field_name, image=image, labelled=labelled)
        if not labelled:
            return Split(xs, [-1] * len(xs))
        xs, ys = filter_labels(xs, ys, spec.include_labels, spec.exclude_labels)
        unknown = sorted({v for v in ys if v not in ids})
        if unknown:
            log.warning(
                "%s: dropping examples with labels not in train: %s", field_name, unknown[:10]
            )
        pairs = [(a, ids[b]) for a, b in zip(xs, ys, strict=True) if b in ids]
        return Split([a for a, _ in pairs], [b for _, b in pairs])

    validation: Split | None = None
    if spec.validation is not None:
        validation = read_other(spec.validation, "spec.dataset.validation")
    elif spec.validation_split is not None:
        keep, held = stratified_split(train.labels, spec.validation_split, seed)
        validation = Split([train.inputs[i] for i in held], [train.labels[i] for i in held])
        train = Split([train.inputs[i] for i in keep], [train.labels[i] for i in keep])
    if spec.max_samples is not None and len(train) > spec.max_samples:
        keep_idx = stratified_subset(train.labels, spec.max_samples, seed)
        train = Split([train.inputs[i] for i in keep_idx], [train.labels[i] for i in keep_idx])
    eval_sets = {
        e.name: read_other(e, f"spec.dataset.evalSets[{e.name}]") for e in (spec.eval_sets or [])
    }
    if spec.max_eval_samples is not None:

        def cap(s: Split) -> Split:
            if len(s) <= (spec.max_eval_samples or 0):
                return s
            k = stratified_subset(s.labels, spec.max_eval_samples or 0, seed + 1)
            return Split([s.inputs[i] for i in k], [s.labels[i] for i in k])

        validation = cap(validation) if validation is not None else None
        eval_sets = {k: cap(v) for k, v in eval_sets.items()}
    if validation is not None and len(validation) == 0:
        validation = None
    return PreparedData(train=train, validation=validation, eval_sets=eval_sets, label_names=names)


# ----------------------------------------------------------------------------------- encoding


class TextDataset(Dataset[dict[str, Any]]):
    """Texts tokenised once with the checkpoint's tokenizer (unpadded; the collator pads)."""

    def __init__(
        self, split: Split, tokenizer: Any, max_length: int, *, causal_lm: bool = False
    ) -> None:
        self.labels = split.labels
        self.causal_lm = causal_lm
        enc = tokenizer(list(split.inputs), truncation=True, max_length=max_length, padding=False)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        self.encodings = {k: enc[k] for k in keys}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = item["input_ids"] if self.causal_lm else self.labels[i]
        item["index"] = i
        return item


class TextCollator:
    """Pads a batch to its longest example (dynamic padding) with the tokenizer's pad id."""

    def __init__(self, tokenizer: Any, *, causal_lm: bool = False) -> None:
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.causal_lm = causal_lm

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(it["input_ids"]) for it in items)
        out: dict[str, torch.Tensor] = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in items[0]:
                continue
            pad = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor(
                [list(it[key]) + [pad] * (longest - len(it[key])) for it in items]
            )
        if self.causal_lm:
            labels = [
                list(it["input_ids"]) + [IGNORE_INDEX] * (longest - len(it["input_ids"]))
                for it in items
            ]
            out["labels"] = torch.tensor(labels)
        else:
            out["labels"] = torch.tensor([int(it["labels"]) for it in items])
        out["index"] = torch.tensor([int(it["index"]) for it in items])
        return out


class ImageDataset(Dataset[dict[str, Any]]):
    """Images resized to the backbone's input size and normalised with its mean/std.

    Decoded tensors are kept in memory after first use when the set is small (the digits case),
    so later epochs do not decode again.
    """

    CACHE_LIMIT_BYTES = 512 * 2**20

    def __init__(
        self, split: Split, *, size: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.paths = split.inputs
        self.labels = split.labels
        self.size = size
        self.mean = torch.tensor(list(mean)).view(-1, 1, 1)
        self.std = torch.tensor(list(std)).view(-1, 1, 1)
        self.channels = len(list(mean))
        per_image = self.channels * size * size * 4
        self._cache: dict[int, torch.Tensor] | None = (
            {} if per_image * len(self.paths) <= self.CACHE_LIMIT_BYTES else None
        )

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as raw:
            img = raw.convert("L" if self.channels == 1 else "RGB")
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        pixels = data.view(self.size, self.size, self.channels).permute(2, 0, 1).float() / 255.0
        return (pixels - self.mean) / self.std

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._cache is not None and i in self._cache:
            pixels = self._cache[i]
        else:
            pixels = self.load(i)
            if self._cache is not None:
                self._cache[i] = pixels
        return {"pixel_values": pixels, "labels": self.labels[i], "index": i}


def image_collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks image items into a batch."""
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "labels": torch.tensor([int(it["labels"]) for it in items]),
        "index": torch.tensor([int(it["index"]) for it in items]),
    }


def build_dataset(
    split: Split, bundle: Any, spec: DatasetSpec
) -> tuple[Dataset[dict[str, Any]], Any]:
    """The encoded dataset and its collate function for the model ``bundle`` describes."""
    if bundle.kind == "image":
        size = int(spec.image_size or bundle.image_size)
        return ImageDataset(
            split, size=size, mean=bundle.image_mean, std=bundle.image_std
        ), image_collate
    if bundle.tokenizer is None:
        raise ConfigError(
            "the checkpoint has no tokenizer; text data needs one", field="spec.model.checkpoint"
        )
    causal = bundle.kind == "causal-lm"
    tokenizer = bundle.tokenizer
    if causal and tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return (
        TextDataset(split, tokenizer, spec.max_length, causal_lm=causal),
        TextCollator(tokenizer, causal_lm=causal),
    )


# ----------------------------------------------------------------------------------- sampling


class ResumableDistributedSampler(Sampler[int]):
    """This process's share of the data for one epoch, shuffled by (seed, epoch).

    Like ``torch.utils.data.DistributedSampler`` (the order is a function of seed and epoch
    only, padded by repetition so every process gets the same number of items), plus
    :meth:`skip` so a resumed run continues mid-epoch exactly where the checkpoint was taken.
    """

    def __init__(
        self, size: int, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True
    ) -> None:
        self.size = size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_items = 0
        self.num_samples = math.ceil(size / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (and forget any skip from a previous epoch)."""
        self.epoch = epoch
        self.skip_items = 0

    def skip(self, items: int) -> None:
        """Leave out the first ``items`` of this epoch's share (already trained on)."""
        self.skip_items = items

    def indices(self) -> list[int]:
        """This process's full share for the current epoch, before any skip."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.num_replicas
        if total > len(order):
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip_items :])

    def __len__(self) -> int:
        return max(self.num_samples - self.skip_items, 0)
