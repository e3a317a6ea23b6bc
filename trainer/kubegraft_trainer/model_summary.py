"""The parameter table the trainer logs at start: trainable vs total per top-level block.

Rows follow the model's :class:`~kubegraft_trainer.blocks.BlockLayout` bottom to top
(embeddings, each block, the backbone's top, the new head, anything else), so a user sees at a
glance what a freezing policy left trainable. Pure: counts ``requires_grad`` as it stands.

Under DeepSpeed ZeRO-3 a parameter built inside ``deepspeed.zero.Init`` (a Hugging Face
``from_pretrained`` with ZeRO-3 on, and the head built beside it) holds only this rank's
partition, often nothing: ``numel()`` is 0 and the full size is ``ds_numel``.
:func:`param_numel` counts the full size either way.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from kubegraft_trainer.blocks import EMBEDDINGS, HEAD, OTHER, TOP, BlockLayout, block_of


def param_numel(p: torch.Tensor) -> int:
    """The parameter's full number of elements, also when ZeRO-3 has partitioned it away."""
    return int(getattr(p, "ds_numel", p.numel()))


@dataclass(frozen=True)
class BlockCount:
    """Parameters of one row of the table."""

    block: str
    trainable: int
    total: int


def parameter_counts(model: nn.Module, layout: BlockLayout) -> list[BlockCount]:
    """Trainable and total parameters per layout row, bottom to top; empty rows left out."""
    rows: OrderedDict[str, list[int]] = OrderedDict(
        (r, [0, 0]) for r in [EMBEDDINGS, *layout.blocks, TOP, HEAD, OTHER]
    )
    for name, p in model.named_parameters():
        cell = rows.setdefault(block_of(layout, name), [0, 0])
        n = param_numel(p)
        cell[1] += n
        if p.requires_grad:
            cell[0] += n
    return [BlockCount(_short(r), t, n) for r, (t, n) in rows.items() if n]


def parameter_table(model: nn.Module, layout: BlockLayout, *, title: str = "") -> str:
    """The counts as an aligned text table with a TOTAL line."""
    counts = parameter_counts(model, layout)
    trainable = sum(c.trainable for c in counts)
    total = sum(c.total for c in counts)
    width = max([len(c.block) for c in counts] + [8])
    lines = [title] if title else []
    lines.append(f"{'block':<{width}} {'trainable':>12} {'total':>12} {'%':>6}")
    for c in counts:
        lines.append(
            f"{c.block:<{width}} {c.trainable:>12,} {c.total:>12,} {_pct(c.trainable, c.total):>6}"
        )
    lines.append(f"{'TOTAL':<{width}} {trainable:>12,} {total:>12,} {_pct(trainable, total):>6}")
    return "\n".join(lines)


def _short(row: str) -> str:
    for prefix in ("backbone.model.", "backbone.", "model.model.", "model."):
        if row.startswith(prefix):
            return row[len(prefix) :]
    return row


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"
