"""The new task head put on top of a pretrained backbone (``spec.model.head``).

Transfer learning's "new layers on top": optional fully connected hidden layers (each preceded
by dropout and followed by the chosen activation), then dropout and a linear layer to
``num_labels``. Freshly initialised with the job's seed (the caller seeds torch first).
"""

from __future__ import annotations

from torch import nn

from kubegraft.api.v1alpha1 import Head

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def build_head(spec: Head, *, in_features: int, num_labels: int) -> nn.Sequential:
    """``[Dropout, Linear, act] * len(hidden_layers) + [Dropout, Linear(num_labels)]``.

    Layer names are stable (``hidden0``, ``act0``, ..., ``out``) so that checkpoints and freeze
    patterns such as ``head.out.*`` keep meaning the same thing.
    """
    layers: list[tuple[str, nn.Module]] = []
    width = in_features
    for i, size in enumerate(spec.hidden_layers):
        layers.append((f"drop{i}", nn.Dropout(spec.dropout)))
        layers.append((f"hidden{i}", nn.Linear(width, size)))
        layers.append((f"act{i}", _ACTIVATIONS[spec.activation]()))
        width = size
    layers.append(("drop", nn.Dropout(spec.dropout)))
    layers.append(("out", nn.Linear(width, num_labels)))
    head = nn.Sequential()
    for name, layer in layers:
        head.add_module(name, layer)
    return head
