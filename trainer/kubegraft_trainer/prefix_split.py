"""A backbone cut at a block boundary: the frozen prefix and the trainable suffix.

With the bottom ``b`` blocks frozen (top-k, the early stages of gradual unfreezing), the
output of block ``b - 1`` for an example never changes, so the loop computes it once
(:mod:`~kubegraft_trainer.feature_cache`) and trains the suffix (blocks ``b..``, the parts
above them and the head) on the stored hidden states. A :class:`PrefixSplitter` knows how to
run the two halves of one architecture family:

* Hugging Face encoders with ``embeddings`` and ``encoder.layer`` (BERT, MiniLM, RoBERTa, ...):
  the state at the boundary is the hidden sequence ``[B, T, H]`` plus the attention mask; the
  halves are run through *views* of the Hugging Face model (a shallow copy whose layer list is
  the prefix's or the suffix's layers, sharing every module and parameter with the model), so
  the library's own attention-mask handling and layer calls are used, whatever its version.
* timm EfficientNets (``conv_stem``, ``bn1``, ``blocks``, ``conv_head``, ``bn2``): the state
  is the feature map after stage ``b - 1``.

The splitter checks that its block list is the layout's (``layout.blocks[i]`` is its i-th
block), so a boundary index means the same in both.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

import torch
from torch import nn

from kubegraft_trainer.blocks import BlockLayout

HIDDEN = "hidden"
"""Batch key of the cached boundary state (with ``attention_mask`` for text)."""


class PrefixSplitter(Protocol):
    """The two halves of one backbone at a block boundary."""

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks, bottom to top (the layout's ``blocks``)."""
        ...

    def prefix(self, boundary: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-example state below block ``boundary`` (``hidden``, maybe ``attention_mask``)."""
        ...

    def suffix(self, boundary: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's pooled features ``[B, D]`` from the state at ``boundary``."""
        ...


class _Given(nn.Module):
    """Embeddings that return the hidden states they are given (the suffix view's input)."""

    def forward(
        self, *_: Any, inputs_embeds: torch.Tensor | None = None, **__: Any
    ) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


def _view(module: nn.Module, **children: nn.Module | None) -> nn.Module:
    """A shallow copy of ``module`` with some children replaced: every other submodule and
    every parameter is shared, and ``module`` itself is unchanged."""
    view = copy.copy(module)
    view._modules = dict(module._modules)
    for name, child in children.items():
        view._modules[name] = child
    return view


class HfEncoderSplitter:
    """A :class:`~kubegraft_trainer.transfer_model.TextBackbone` over a BERT-like encoder."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone
        self.hf: nn.Module = backbone.model
        self.layers: nn.ModuleList = backbone.model.encoder.layer

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def _run(self, boundary: int, *, top: bool, **inputs: torch.Tensor) -> torch.Tensor:
        enc: nn.Module = self.hf.get_submodule("encoder")
        layers = self.layers[boundary:] if top else self.layers[:boundary]
        encoder_view = _view(enc, layer=nn.ModuleList(list(layers)))
        # The pooler is unused (mean pooling): skip it in both halves.
        extra: dict[str, nn.Module | None] = {"encoder": encoder_view, "pooler": None}
        if top:
            extra["embeddings"] = _Given()
        view = _view(self.hf, **extra)
        out: torch.Tensor = view(**inputs).last_hidden_state
        return out

    def prefix(self, boundary: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {
            k: batch[k]
            for k in ("input_ids", "attention_mask", "token_type_ids")
            if batch.get(k) is not None
        }
        hidden = self._run(boundary, top=False, **inputs)
        return {HIDDEN: hidden, "attention_mask": batch["attention_mask"]}

    def suffix(self, boundary: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = state["attention_mask"]
        hidden = self._run(boundary, top=True, inputs_embeds=state[HIDDEN], attention_mask=mask)
        pooled: torch.Tensor = self.backbone.pool(hidden, mask)
        return pooled


class EfficientNetSplitter:
    """A timm EfficientNet backbone (``num_classes=0``: ``forward_head`` pools)."""

    def __init__(self, backbone: Any) -> None:
        self.net = backbone

    def blocks(self) -> list[nn.Module]:
        return list(self.net.blocks)

    def prefix(self, boundary: int, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.net.bn1(self.net.conv_stem(batch["pixel_values"]))
        for stage in self.net.blocks[:boundary]:
            x = stage(x)
        return {HIDDEN: x}

    def suffix(self, boundary: int, state: dict[str, torch.Tensor]) -> torch.Tensor:
        x = state[HIDDEN]
        for stage in self.net.blocks[boundary:]:
            x = stage(x)
        x = self.net.bn2(self.net.conv_head(x))
        pooled: torch.Tensor = self.net.forward_head(x)
        return pooled


def prefix_splitter(model: nn.Module, layout: BlockLayout) -> PrefixSplitter | str:
    """The splitter of ``model``'s backbone, or why there is none."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(model, "forward_head"):
        return "the model has no separate backbone and head"
    splitter: PrefixSplitter
    inner = getattr(backbone, "model", None)
    if hasattr(backbone, "pool") and hasattr(getattr(inner, "encoder", None), "layer"):
        if not hasattr(inner, "embeddings"):
            return f"{type(inner).__name__} has no embeddings module to cut after"
        splitter = HfEncoderSplitter(backbone)
    elif all(hasattr(backbone, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        splitter = EfficientNetSplitter(backbone)
    else:
        return f"no prefix split is known for {type(inner or backbone).__name__}"
    mine = splitter.blocks()
    if len(mine) != len(layout.blocks) or any(
        model.get_submodule(name) is not block
        for name, block in zip(layout.blocks, mine, strict=True)
    ):
        return "the model's block layout is not the splitter's block list"
    return splitter
