"""The new head on top of a backbone: its layers, dropout and activation as spec.model.head
says, and the TransferModel split into forward_features / forward_head that feature caching
relies on (tiny random backbones: the pretrained ones are covered in test_pretrained)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kubegraft.api.v1alpha1 import Head
from kubegraft_trainer.architectures import ARCHITECTURES, SimpleCNN, VGGFeatures
from kubegraft_trainer.heads import build_head
from kubegraft_trainer.transfer_model import TransferModel

pytestmark = pytest.mark.trainer


def test_single_linear_head_by_default() -> None:
    head = build_head(Head(), in_features=16, num_labels=3)
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert head.out.in_features == 16
    assert head.out.out_features == 3
    assert head.drop.p == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("activation", "cls"), [("relu", nn.ReLU), ("gelu", nn.GELU), ("tanh", nn.Tanh)]
)
def test_hidden_layers_dropout_and_activation(activation: str, cls: type[nn.Module]) -> None:
    spec = Head(num_labels=4, hidden_layers=[32, 8], dropout=0.3, activation=activation)  # type: ignore[arg-type]
    head = build_head(spec, in_features=20, num_labels=4)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Dropout, nn.Linear, cls, nn.Dropout, nn.Linear, cls, nn.Dropout, nn.Linear]
    assert (head.hidden0.in_features, head.hidden0.out_features) == (20, 32)
    assert (head.hidden1.in_features, head.hidden1.out_features) == (32, 8)
    assert (head.out.in_features, head.out.out_features) == (8, 4)
    assert all(m.p == pytest.approx(0.3) for m in head if isinstance(m, nn.Dropout))
    head.train()
    x = torch.ones(64, 20)
    assert not torch.equal(head(x), head(x))  # dropout active in training
    head.eval()
    assert torch.equal(head(x), head(x))


def test_head_initialisation_follows_the_seed() -> None:
    torch.manual_seed(7)
    a = build_head(Head(), in_features=8, num_labels=2)
    torch.manual_seed(7)
    b = build_head(Head(), in_features=8, num_labels=2)
    assert torch.equal(a.out.weight, b.out.weight)


@pytest.mark.parametrize(("backbone", "size"), [(SimpleCNN, 8), (VGGFeatures, 32)])
def test_image_transfer_model_split(backbone: type[nn.Module], size: int) -> None:
    torch.manual_seed(0)
    arch = next(a for a in ARCHITECTURES.values() if a.build is backbone)
    head = build_head(Head(hidden_layers=[16]), in_features=arch.feature_dim, num_labels=5)
    model = TransferModel(backbone(), head, kind="image", num_labels=5).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(pixel_values=x)
        assert features.shape == (3, arch.feature_dim)
        assert torch.equal(model(pixel_values=x), model.forward_head(features))
    assert model(pixel_values=x).shape == (3, 5)
