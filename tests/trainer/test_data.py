"""Data: formats, dotted fields, label vocabularies, seeded stratified splits and subsets,
encoding with the checkpoint's tokenizer and the backbone's image geometry, and sampling."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from trainer_helpers import KAOMOJI, MINILM, write_digits

from kubegraft.api.v1alpha1 import DatasetSpec
from kubegraft_trainer.data import (
    ImageDataset,
    ResumableDistributedSampler,
    Split,
    TextCollator,
    TextDataset,
    get_field,
    prepare_data,
    sort_label_names,
    stratified_split,
    stratified_subset,
)
from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.uris import resolve_uri

pytestmark = pytest.mark.trainer

RECORDS = [
    {
        "text": f"t{i}",
        "label": ["b", "a", "c"][i % 3],
        "meta": {"lang": {"en": f"e{i}"}},
        "n": i % 2,
    }
    for i in range(60)
]


def _write(tmp: Path, fmt: str) -> Path:
    if fmt == "jsonl":
        p = tmp / "d.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    elif fmt == "jsonl.gz":
        p = tmp / "d.jsonl.gz"
        with gzip.open(p, "wt") as f:
            f.write("\n".join(json.dumps(r) for r in RECORDS))
    elif fmt == "csv":
        p = tmp / "d.csv"
        p.write_text(
            "text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in RECORDS) + "\n"
        )
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = tmp / "d.parquet"
        pq.write_table(
            pa.Table.from_pylist([{"text": r["text"], "label": r["label"]} for r in RECORDS]), p
        )
    return p


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "csv", "parquet"])
def test_tabular_formats(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path, fmt)
    spec = DatasetSpec.model_validate({"train": {"uri": str(path)}, "validationSplit": 0.2})
    data = prepare_data(spec, task="sequence-classification", seed=1)
    assert data.label_names == ["a", "b", "c"]
    assert len(data.train) + len(data.validation or []) == 60
    assert Counter(data.validation.labels) == {0: 4, 1: 4, 2: 4}  # type: ignore[union-attr]
    assert set(data.train.inputs).isdisjoint(data.validation.inputs)  # type: ignore[union-attr]


def test_dotted_fields_include_exclude_and_numeric_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "jsonl")
    assert get_field(RECORDS[3], "meta.lang.en") == "e3"
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": str(path)},
            "validationSplit": 0.25,
            "textField": "meta.lang.en",
            "excludeLabels": ["c"],
        }
    )
    data = prepare_data(spec, task="sequence-classification", seed=0)
    assert data.label_names == ["a", "b"]
    assert all(x.startswith("e") for x in data.train.inputs)
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": str(path)},
            "validationSplit": 0.25,
            "labelField": "n",
            "includeLabels": ["1"],
        }
    )
    assert prepare_data(spec, task="sequence-classification", seed=0).label_names == ["1"]
    assert sort_label_names(["10", "9", "1"]) == ["1", "9", "10"]
    bad = DatasetSpec.model_validate(
        {"train": {"uri": str(path)}, "validationSplit": 0.2, "textField": "nope"}
    )
    with pytest.raises(ConfigError, match="textField"):
        prepare_data(bad, task="sequence-classification", seed=0)
    missing = DatasetSpec.model_validate(
        {"train": {"uri": str(tmp_path / "x.jsonl")}, "validationSplit": 0.2}
    )
    with pytest.raises(ConfigError, match=r"spec\.dataset\.train\.uri"):
        prepare_data(missing, task="sequence-classification", seed=0)


def test_split_and_subset_are_seeded_and_stratified() -> None:
    labels = [0] * 700 + [1] * 200 + [2] * 100
    tr, va = stratified_split(labels, 0.1, seed=3)
    assert Counter(labels[i] for i in va) == {0: 70, 1: 20, 2: 10}
    assert sorted(tr + va) == list(range(1000))
    assert stratified_split(labels, 0.1, seed=3) == (tr, va)
    assert stratified_split(labels, 0.1, seed=4) != (tr, va)
    sub = stratified_subset(labels, 50, seed=1)
    assert len(sub) == 50
    assert Counter(labels[i] for i in sub) == {0: 35, 1: 10, 2: 5}
    assert stratified_subset(labels, 50, seed=1) == sub
    rare = stratified_subset([0] * 98 + [1, 2], 10, seed=0)
    assert {0, 1, 2} <= {([0] * 98 + [1, 2])[i] for i in rare}  # small subsets keep rare classes


def test_kaomoji_named_eval_sets_and_max_samples(tmp_path: Path) -> None:
    shifted = tmp_path / "shifted.jsonl"  # a named eval set; unknown labels are dropped
    rows = [{"text": f":-{i}", "category": "happy" if i % 2 else "sad"} for i in range(150)]
    rows.append({"text": ":-?", "category": "no-such-category"})
    shifted.write_text("\n".join(json.dumps(r) for r in rows))
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": KAOMOJI},
            "textField": "text",
            "labelField": "category",
            "excludeLabels": ["uncategorized", "special"],
            "validationSplit": 0.1,
            "maxSamples": 500,
            "maxEvalSamples": 100,
            "evalSets": [{"name": "shifted", "uri": str(shifted)}],
        }
    )
    data = prepare_data(spec, task="sequence-classification", seed=42)
    assert len(data.train) == 500
    assert len(data.validation or []) == 100
    assert "uncategorized" not in data.label_names
    assert "special" not in data.label_names
    assert len(data.label_names) == 50
    assert len(data.eval_sets["shifted"]) == 100  # capped by maxEvalSamples
    assert {data.label_names[y] for y in data.eval_sets["shifted"].labels} == {"happy", "sad"}
    again = prepare_data(spec, task="sequence-classification", seed=42)
    assert again.train.inputs == data.train.inputs
    assert again.label_names == data.label_names


def test_tokenisation_with_the_checkpoint_tokenizer_and_dynamic_padding() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_uri(MINILM, field="x")))
    ds = TextDataset(
        Split(["(◕‿◕)", "a much longer text with many words in it", "hi"], [0, 1, 2]), tok, 8
    )
    batch = TextCollator(tok)([ds[0], ds[2]])
    assert batch["input_ids"].shape[1] == max(len(ds[0]["input_ids"]), len(ds[2]["input_ids"]))
    assert batch["labels"].tolist() == [0, 2]
    assert batch["index"].tolist() == [0, 2]
    assert len(ds[1]["input_ids"]) == 8  # truncated to maxLength
    assert (
        batch["attention_mask"].sum(1)
        == torch.tensor([len(ds[0]["input_ids"]), len(ds[2]["input_ids"])])
    ).all()


def test_image_folder_and_backbone_geometry(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "digits")
    spec = DatasetSpec.model_validate(
        {
            "train": {"uri": str(root)},
            "validationSplit": 0.2,
            "includeLabels": ["5", "6", "7", "8", "9"],
        }
    )
    data = prepare_data(spec, task="image-classification", seed=0)
    assert data.label_names == ["5", "6", "7", "8", "9"]
    ds = ImageDataset(data.train, size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    item = ds[0]
    assert item["pixel_values"].shape == (3, 32, 32)
    assert item["pixel_values"].min() >= -2.0 - 1e-6
    assert item["pixel_values"].max() <= 2.0 + 1e-6


def test_sampler_shards_reshuffles_and_skips() -> None:
    shards = [ResumableDistributedSampler(10, num_replicas=2, rank=r, seed=5) for r in (0, 1)]
    for s in shards:
        s.set_epoch(0)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 5
    assert sorted(a + b) == list(range(10))
    shards[0].set_epoch(1)
    assert list(shards[0]) != a
    shards[0].set_epoch(0)
    shards[0].skip(3)
    assert list(shards[0]) == a[3:]
    assert len(shards[0]) == 2
    padded = ResumableDistributedSampler(5, num_replicas=2, rank=1, seed=0)
    assert len(list(padded)) == 3
