"""The models the trainer fine-tunes: a pretrained backbone plus a new head.

:class:`TransferModel` is the one shape every classification job has: ``backbone`` maps a batch
to pooled features ``[B, D]`` and ``head`` maps features to logits. Keeping the two apart lets
the freezing policies name them, lets the loop cache a frozen backbone's features
(``forward_features`` once, ``forward_head`` every epoch) and lets export write the backbone in
its native format. :class:`CausalLMModel` wraps a Hugging Face causal LM so that its forward
returns plain logits like every other model here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

ModelKind = Literal["text", "image", "causal-lm"]

_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextBackbone(nn.Module):
    """A Hugging Face encoder (``AutoModel``) with mean pooling over the attention mask.

    Mean pooling is what sentence-transformers checkpoints such as all-MiniLM-L6-v2 were
    trained with, so their pooled features are meaningful before any fine-tuning (which is
    what feature extraction relies on); for BERT-style checkpoints it is as good as [CLS].
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, torch.Tensor] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden: torch.Tensor = self.model(**kwargs).last_hidden_state
        return self.pool(hidden, attention_mask)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean of the hidden states over the real (unmasked) tokens."""
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TransferModel(nn.Module):
    """A pretrained backbone (pooled features) and a new classification head.

    ``forward(**batch)`` takes ``input_ids``/``attention_mask``/``token_type_ids`` (text) or
    ``pixel_values`` (images) and returns logits ``[B, num_labels]``; other keys in the batch
    (``labels``) are ignored.
    """

    def __init__(
        self, backbone: nn.Module, head: nn.Module, *, kind: ModelKind, num_labels: int
    ) -> None:
        super().__init__()
        self.backbone: Any = backbone
        self.head = head
        self.kind = kind
        self.num_labels = num_labels

    def forward_features(self, **batch: Any) -> torch.Tensor:
        """The backbone alone: pooled features ``[B, D]``."""
        if self.kind == "image":
            features: torch.Tensor = self.backbone(batch["pixel_values"])
            return features
        inputs = {k: batch[k] for k in _TEXT_INPUTS if batch.get(k) is not None}
        features = self.backbone(**inputs)
        return features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The head alone: logits from (possibly cached) features."""
        logits: torch.Tensor = self.head(features)
        return logits

    def forward(self, **batch: Any) -> torch.Tensor:
        return self.forward_head(self.forward_features(**batch))

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the backbone's activations in backward (Hugging Face backbones only)."""
        inner = getattr(self.backbone, "model", None)
        if inner is not None and hasattr(inner, "gradient_checkpointing_enable"):
            inner.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        elif hasattr(self.backbone, "set_grad_checkpointing"):  # timm models
            self.backbone.set_grad_checkpointing(True)


class CausalLMModel(nn.Module):
    """A Hugging Face causal LM whose forward returns logits ``[B, T, V]``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model
        self.kind: ModelKind = "causal-lm"

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
    ) -> torch.Tensor:
        logits: torch.Tensor = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits
        return logits

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward."""
        self.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
