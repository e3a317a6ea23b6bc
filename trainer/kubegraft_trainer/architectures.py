"""The CNN backbones a bare state-dict checkpoint can belong to, by ``spec.model.architecture``.

A state dict says nothing about the network it came from, so the manifest names it and this
registry builds the matching network *without* its classifier, as a module whose forward
returns pooled features ``[B, D]`` (what a new head sits on). Each entry also says how to read
the checkpoint's key names (the EfficientNet-Lite0 ImageNet weights shipped offline use the
``efficientnet_pytorch`` names, mapped here onto timm's definition), which keys are the old
classifier (dropped: the job gets a new head), the image geometry the data pipeline should use,
where the blocks are, and which modules LoRA adapts by default.

Architectures: ``efficientnet_lite0``, ``resnet18``, ``resnet50`` (timm definitions, which use
torchvision's key names for ResNets), ``vgg16`` (torchvision's ``features`` layout, defined
here so that torchvision/timm VGG16 state dicts load as they are) and ``simple_cnn`` (our own
tiny net for 8x8 sklearn digits, used by the pretrain -> transfer -> fine-tune demonstration).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from kubegraft_trainer.blocks import BlockLayout
from kubegraft_trainer.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class CnnArchitecture:
    """How to build one CNN backbone and read its checkpoints."""

    name: str
    build: Callable[[], nn.Module]
    """A fresh, randomly initialised backbone returning pooled features [B, D]."""
    feature_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    layout: Callable[[nn.Module], BlockLayout]
    """Block layout of a built backbone, with names relative to the backbone."""
    classifier_prefixes: tuple[str, ...]
    """Checkpoint keys of the pretrained classifier, dropped when loading."""
    lora_target_regex: str
    """Default LoRA, DoRA and (IA)^3 targets (a peft full-match regex on module names inside
    the backbone): the pointwise/1x1 and regular convs, never depthwise ones."""
    ia3_feedforward_regex: str | None = None
    """Of those, the ones whose input (IA)^3 scales (the block's last, projecting conv, as a
    transformer's feed-forward down-projection); the others get their output scaled."""
    map_keys: Callable[[StateDict, nn.Module], StateDict] | None = None
    """Renames foreign checkpoint keys onto this definition's names, when they differ."""

    def convert(self, state: StateDict, backbone: nn.Module) -> StateDict:
        """The checkpoint's tensors under the backbone's own names, classifier dropped."""
        state = {k: v for k, v in state.items() if not k.startswith(self.classifier_prefixes)}
        if self.map_keys is not None:
            state = self.map_keys(state, backbone)
        return state


# ----------------------------------------------------------------------------- EfficientNet


def _build_efficientnet_lite0() -> nn.Module:
    import timm

    # eps 1e-3 as in the TF-trained EfficientNet-Lite weights (and efficientnet_pytorch).
    model: nn.Module = timm.create_model(
        "efficientnet_lite0", pretrained=False, num_classes=0, bn_eps=1e-3
    )
    return model


# efficientnet_pytorch block-internal names -> timm names. The first block of EfficientNet has
# no expansion (timm: DepthwiseSeparableConv); every other one is an InvertedResidual.
_EFFNET_DS = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFNET_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_EFFNET_BLOCK = re.compile(r"^_blocks\.(\d+)\.([A-Za-z0-9_]+)\.(.+)$")


def _map_efficientnet_pytorch_keys(state: StateDict, backbone: nn.Module) -> StateDict:
    """Rename ``_conv_stem``/``_blocks.N._depthwise_conv``/... onto timm's efficientnet names."""
    if not any(k.startswith(("_conv_stem", "_blocks.")) for k in state):
        return state  # already timm names (e.g. our own export)
    stages = list(backbone.blocks)  # type: ignore[arg-type]
    flat: list[tuple[int, int, bool]] = []  # (stage, index in stage, is depthwise-separable)
    for s, stage in enumerate(stages):
        for i, block in enumerate(stage):
            flat.append((s, i, not hasattr(block, "conv_pwl")))
    out: StateDict = {}
    for key, tensor in state.items():
        match = _EFFNET_BLOCK.match(key)
        if match:
            n, module, rest = int(match.group(1)), match.group(2), match.group(3)
            if n >= len(flat):
                out[key] = tensor  # reported as unexpected by the caller
                continue
            s, i, separable = flat[n]
            names = _EFFNET_DS if separable else _EFFNET_IR
            out[f"blocks.{s}.{i}.{names.get(module, module)}.{rest}"] = tensor
            continue
        head, _, rest = key.partition(".")
        out[f"{_EFFNET_TOP[head]}.{rest}" if head in _EFFNET_TOP else key] = tensor
    return out


def _efficientnet_layout(backbone: nn.Module) -> BlockLayout:
    n = len(backbone.blocks)  # type: ignore[arg-type]
    return BlockLayout(
        embeddings=["conv_stem", "bn1"],
        blocks=[f"blocks.{i}" for i in range(n)],
        head=[],
        top=["conv_head", "bn2"],
    )


# ----------------------------------------------------------------------------------- ResNet


def _build_timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        model: nn.Module = timm.create_model(name, pretrained=False, num_classes=0)
        return model

    return build


def _resnet_layout(backbone: nn.Module) -> BlockLayout:
    return BlockLayout(
        embeddings=["conv1", "bn1"],
        blocks=["layer1", "layer2", "layer3", "layer4"],
        head=[],
    )


# -------------------------------------------------------------------------------------- VGG

_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                               512, 512, 512, "M", 512, 512, 512, "M"]  # fmt: skip


class VGGFeatures(nn.Module):
    """VGG16's convolutional base with global average pooling: the classic "VGG16 without its
    top" feature extractor. ``features`` indexes exactly as torchvision's, so torchvision and
    timm checkpoints load without renaming."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _vgg_conv_regex() -> str:
    """The conv layers of ``features`` (not its ReLUs and max-pools, which PEFT cannot adapt),
    as a peft full-match regex: ``features\\.(0|2|5|...)``."""
    index, convs = 0, []
    for v in _VGG16_CFG:
        if v == "M":
            index += 1
        else:
            convs.append(str(index))
            index += 2  # conv, ReLU
    return rf"features\.({'|'.join(convs)})"


def _vgg_layout(backbone: nn.Module) -> BlockLayout:
    # Each conv layer is a block (the unit Keras-style VGG recipes freeze by).
    convs = [f"features.{i}" for i, m in enumerate(backbone.features) if isinstance(m, nn.Conv2d)]  # type: ignore[arg-type]
    return BlockLayout(embeddings=[], blocks=convs, head=[])


# ------------------------------------------------------------------------------- simple_cnn


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class SimpleCNN(nn.Module):
    """A tiny conv net for 8x8 digit images (works at any size): a stem and three blocks,
    global-average pooled to 128 features. Small enough to pretrain on CPU in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32))
        self.blocks = nn.Sequential(
            nn.Sequential(*_conv_bn(32, 64), nn.MaxPool2d(2)),
            nn.Sequential(*_conv_bn(64, 128), nn.MaxPool2d(2)),
            nn.Sequential(*_conv_bn(128, 128)),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)


def _simple_cnn_layout(backbone: nn.Module) -> BlockLayout:
    return BlockLayout(embeddings=["stem"], blocks=["blocks.0", "blocks.1", "blocks.2"], head=[])


# --------------------------------------------------------------------------------- registry

ARCHITECTURES: Mapping[str, CnnArchitecture] = {
    "efficientnet_lite0": CnnArchitecture(
        name="efficientnet_lite0",
        build=_build_efficientnet_lite0,
        feature_dim=1280,
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        layout=_efficientnet_layout,
        classifier_prefixes=("_fc.", "classifier."),
        lora_target_regex=r"blocks\.\d+\.\d+\.(conv_pw|conv_pwl)",
        ia3_feedforward_regex=r"blocks\.\d+\.\d+\.conv_pwl",
        map_keys=_map_efficientnet_pytorch_keys,
    ),
    "resnet18": CnnArchitecture(
        name="resnet18",
        build=_build_timm("resnet18"),
        feature_dim=512,
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        layout=_resnet_layout,
        classifier_prefixes=("fc.",),
        lora_target_regex=r"layer\d\.\d+\.conv[12]",
        ia3_feedforward_regex=r"layer\d\.\d+\.conv2",
    ),
    "resnet50": CnnArchitecture(
        name="resnet50",
        build=_build_timm("resnet50"),
        feature_dim=2048,
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        layout=_resnet_layout,
        classifier_prefixes=("fc.",),
        lora_target_regex=r"layer\d\.\d+\.conv[123]",
        ia3_feedforward_regex=r"layer\d\.\d+\.conv3",
    ),
    "vgg16": CnnArchitecture(
        name="vgg16",
        build=VGGFeatures,
        feature_dim=512,
        image_size=224,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        layout=_vgg_layout,
        # torchvision's classifier.*, timm's pre_logits.* (fc6/fc7 as convs) and head.*
        classifier_prefixes=("classifier.", "pre_logits.", "head."),
        lora_target_regex=_vgg_conv_regex(),
    ),
    "simple_cnn": CnnArchitecture(
        name="simple_cnn",
        build=SimpleCNN,
        feature_dim=128,
        image_size=8,
        image_mean=(0.3, 0.3, 0.3),
        image_std=(0.38, 0.38, 0.38),
        layout=_simple_cnn_layout,
        classifier_prefixes=("classifier.", "fc."),
        lora_target_regex=r"(stem|blocks\.\d+)\.0",
    ),
}


def get_architecture(
    name: str | None, *, field: str = "spec.model.architecture"
) -> CnnArchitecture:
    """The registered architecture called ``name``; ConfigError listing the known ones."""
    if not name:
        raise ConfigError(
            f"required for a state-dict checkpoint; one of {', '.join(sorted(ARCHITECTURES))}",
            field=field,
        )
    key = name.strip().lower().replace("-", "_")
    if key not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}", field=field
        )
    return ARCHITECTURES[key]
