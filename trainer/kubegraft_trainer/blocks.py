"""Where a model's parameters sit: embeddings (or a CNN's stem), repeated blocks, and the head.

Every freezing policy, the layer-wise learning-rate decay and the parameter table speak in
these terms, so the model builders (:mod:`kubegraft_trainer.pretrained`) describe each model
they make with a :class:`BlockLayout` of dotted parameter-name prefixes, and nothing else in
the trainer has to know a particular architecture's module names.

Decisions, kept here so they are written once:

* ``blocks`` are listed bottom to top; "top-k" means the last k entries.
* ``head`` holds only the *new* task head (``head`` of a ``TransferModel``, ``lm_head`` of a
  causal LM): what feature extraction trains and what ``forward_head`` computes.
* ``top`` holds backbone parameters that sit above the last block (EfficientNet's
  ``conv_head``/``bn2``, BERT's pooler, a decoder's final norm). They belong to the backbone,
  so feature extraction keeps them frozen, and they train (and get their learning rate)
  together with the topmost block.
* Anything matched by none of these is ``other``: it trains under ``full`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EMBEDDINGS = "embeddings"
TOP = "top"
HEAD = "head"
OTHER = "other"


def has_prefix(name: str, prefix: str) -> bool:
    """Whether dotted ``name`` lies under ``prefix`` (``blocks.1`` does not cover ``blocks.10``)."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class BlockLayout:
    """Parameter-name prefixes of a model's parts, blocks bottom to top."""

    embeddings: list[str]
    """Prefixes of the token/position embeddings, or of a CNN's stem."""
    blocks: list[str]
    """Prefixes of the repeated blocks, bottom to top (e.g. ``backbone.model.encoder.layer.0``)."""
    head: list[str]
    """Prefixes of the new task head."""
    top: list[str] = field(default_factory=list)
    """Backbone prefixes above the last block; they go with the topmost block."""

    def __hash__(self) -> int:  # lists are not hashable; layouts are compared by value
        return hash((tuple(self.embeddings), tuple(self.blocks), tuple(self.head), tuple(self.top)))

    def prefixed(self, prefix: str) -> BlockLayout:
        """The same layout for a model nested under ``prefix`` (e.g. ``backbone``)."""

        def p(names: list[str]) -> list[str]:
            return [f"{prefix}.{n}" if n else prefix for n in names]

        return BlockLayout(p(self.embeddings), p(self.blocks), p(self.head), p(self.top))

    def block_index(self, param_name: str) -> int | None:
        """Index (bottom = 0) of the block holding ``param_name``; ``top`` parts count as the
        topmost block; None for embeddings, head and other parameters."""
        name = _strip_wrappers(param_name)
        # Longest prefix wins, so nested prefixes (a block inside a stage) resolve sensibly.
        best: tuple[int, int] | None = None
        for i, prefix in enumerate(self.blocks):
            if has_prefix(name, prefix) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
        if best is not None:
            return best[0]
        if self.blocks and any(has_prefix(name, p) for p in self.top):
            return len(self.blocks) - 1
        return None


def _strip_wrappers(name: str) -> str:
    """Parameter names as the layout knows them, without DDP/compile wrapper prefixes."""
    for wrapper in ("module.", "_orig_mod."):
        while name.startswith(wrapper):
            name = name[len(wrapper) :]
    return name


def part_of(layout: BlockLayout, param_name: str) -> str:
    """Which part a parameter is in: ``embeddings``, ``block``, ``top``, ``head`` or ``other``."""
    name = _strip_wrappers(param_name)
    if any(has_prefix(name, p) for p in layout.head):
        return HEAD
    if any(has_prefix(name, p) for p in layout.blocks):
        return "block"
    if any(has_prefix(name, p) for p in layout.top):
        return TOP
    if any(has_prefix(name, p) for p in layout.embeddings):
        return EMBEDDINGS
    return OTHER


def block_of(layout: BlockLayout, param_name: str) -> str:
    """The row a parameter is counted in: the block's prefix (e.g. ``backbone.blocks.3``), or
    ``embeddings``, ``top``, ``head`` or ``other``. Used by the parameter table and LLRD."""
    part = part_of(layout, param_name)
    if part == "block":
        index = layout.block_index(param_name)
        assert index is not None
        return layout.blocks[index]
    return part
