"""What the frozen cache may hold for a trainable set, and the prefix split's exactness.

A tiny randomly initialised BERT (3 blocks) stands in for MiniLM so that this runs in seconds;
the real checkpoints are trained cached and uncached in test_prefix_cache.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from kubegraft.api.v1alpha1 import Head
from kubegraft_trainer.feature_cache import CachePlan, PrefixDataset, cache_plan, prefix_collate
from kubegraft_trainer.heads import build_head
from kubegraft_trainer.prefix_split import prefix_splitter
from kubegraft_trainer.pretrained import hf_layout
from kubegraft_trainer.transfer_model import TextBackbone, TransferModel

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def tiny() -> tuple[TransferModel, object]:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    model = TransferModel(
        TextBackbone(BertModel(config)),
        build_head(Head(), in_features=16, num_labels=3),
        kind="text",
        num_labels=3,
    )
    return model, hf_layout(model, inner="backbone.model", head_module=model.head)


def _plan(model: nn.Module, layout: object, prefixes: tuple[str, ...], **kw: object) -> object:
    trainable = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    model.eval()
    return cache_plan(model, layout, trainable, enabled=True, strategy="ddp", **kw)  # type: ignore[arg-type]


def test_plans(tiny: tuple[TransferModel, object]) -> None:
    model, layout = tiny
    enc = "backbone.model.encoder.layer."
    assert _plan(model, layout, ("head.",)) == CachePlan("features")
    top = _plan(model, layout, ("head.", enc + "2."))
    assert isinstance(top, CachePlan)
    assert (top.kind, top.boundary) == ("prefix", 2)
    assert _plan(model, layout, ("head.", enc + "1.", enc + "2.")).boundary == 1  # type: ignore[attr-defined]
    assert "bottom block" in str(_plan(model, layout, ("head.", enc)))
    assert "below the blocks" in str(_plan(model, layout, ("head.", "backbone.model.embeddings.")))
    trainable = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert "deepspeed" in str(
        cache_plan(model, layout, trainable, enabled=True, strategy="deepspeed")  # type: ignore[arg-type]
    )
    assert "false" in str(cache_plan(model, layout, trainable, enabled=False, strategy="ddp"))  # type: ignore[arg-type]


def test_split_is_exact_and_collate_cuts_padding(tiny: tuple[TransferModel, object]) -> None:
    model, layout = tiny
    model.eval()
    splitter = prefix_splitter(model, layout)  # type: ignore[arg-type]
    assert not isinstance(splitter, str)
    batch = {
        "input_ids": torch.tensor([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
    }
    with torch.no_grad():
        whole = model.forward_features(**batch)
        for boundary in (1, 2, 3):
            state = splitter.prefix(boundary, batch)
            torch.testing.assert_close(splitter.suffix(boundary, state), whole)
        state = splitter.prefix(2, batch)
    ds = PrefixDataset(state, torch.tensor([0, 1]))
    cut = prefix_collate([ds[0], ds[1]])
    assert cut["hidden"].shape[1] == cut["attention_mask"].shape[1] == 4  # longest real example
    with torch.no_grad():
        torch.testing.assert_close(splitter.suffix(2, cut), whole)
