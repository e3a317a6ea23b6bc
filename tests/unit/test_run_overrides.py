"""``kubegraft run --set``: values typed by the field's schema (the API model), unknown paths
refused by name, and the failure excerpt a failed run prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.commands.overrides import OverrideError, apply_override
from kubegraft.commands.run import ManifestError, failure_excerpt, load_manifest

pytestmark = pytest.mark.unit


def _doc() -> dict[str, Any]:
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"checkpoint": "hf://org/model", "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": "/d.jsonl"},
                "evalSets": [{"name": "shifted", "uri": "/s.jsonl"}],
            },
            "training": {"epochs": 3},
            "output": {"ephemeral": True},
        },
    }


@pytest.mark.parametrize(
    ("assignment", "path", "value"),
    [
        # string fields keep the text, however numeric it looks
        ("model.revision=1.0", ("model", "revision"), "1.0"),
        ("spec.model.revision=2", ("model", "revision"), "2"),
        ("metadata.name=007", None, "007"),
        ("dataset.evalSets.0.uri=/1e5", ("dataset", "evalSets", 0, "uri"), "/1e5"),
        ("distributed.strategy=ddp", ("distributed", "strategy"), "ddp"),
        # numbers, booleans and lists are read as YAML
        ("training.epochs=2", ("training", "epochs"), 2),
        ("training.learningRate=1e-4", ("training", "learningRate"), 1e-4),
        ("training.learningRate=3", ("training", "learningRate"), 3),
        ("training.gradientCheckpointing=true", ("training", "gradientCheckpointing"), True),
        ("dataset.includeLabels=[a, b]", ("dataset", "includeLabels"), ["a", "b"]),
        ("pod.nodeSelector.pool=1", ("pod", "nodeSelector", "pool"), "1"),
    ],
)
def test_values_are_typed_by_the_field(
    assignment: str, path: tuple[str | int, ...] | None, value: object
) -> None:
    doc = _doc()
    apply_override(doc, assignment)
    node: Any = doc["metadata"]["name"] if path is None else doc["spec"]
    for part in path or ():
        node = node[part]
    assert node == value
    assert type(node) is type(value)


def test_a_typed_revision_survives_validation(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    job, _ = load_manifest(
        path, ["model.revision=1.0"], nproc=None, output=str(tmp_path / "o"), master_port=29500
    )
    assert job.spec.model.revision == "1.0"


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("model.revison=1", "'revison'"),
        ("trainng.epochs=1", "'trainng'"),
        ("training.epochs.x=1", "'x'"),
    ],
)
def test_an_unknown_path_is_refused_by_name(assignment: str, named: str) -> None:
    with pytest.raises(OverrideError) as err:
        apply_override(_doc(), assignment)
    assert named in str(err.value)
    assert assignment.partition("=")[0].split(".")[0] in str(err.value)


def test_an_unknown_path_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_doc()))
    with pytest.raises(ManifestError, match=r"revison.*known here: .*revision"):
        load_manifest(path, ["model.revison=1"], nproc=None, output=None, master_port=29500)


def test_failure_excerpt_keeps_the_tail_and_earlier_errors() -> None:
    lines = [f"line {i}" for i in range(100)]
    lines[10] = "ERROR the root cause"
    shown = failure_excerpt(lines, tail=30)
    assert shown[0] == "ERROR the root cause"
    assert shown[-30:] == lines[-30:]
    assert failure_excerpt(lines[:20], tail=30) == lines[:20]
