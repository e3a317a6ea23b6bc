"""The freezing policy (``spec.freeze``) applied to a real model: which parameters train.

A :class:`FreezePolicy` is built from the FreezeSpec and the model's
:class:`~kubegraft_trainer.blocks.BlockLayout`. ``trainable_names`` is the pure heart of it
(model names in, the exact trainable set out); ``apply`` sets ``requires_grad`` to match and
keeps batch-norm layers whose parameters are all frozen in eval mode, so their running
statistics do not move. The rules, in order (later ones win):

1. the preset (or, from the first gradual-unfreezing stage on, that stage's ``topK``):
   ``full`` everything; ``feature-extraction`` the head; ``top-k`` the top K blocks (with the
   backbone parts above them) and the head; ``bitfit`` every bias and the head; ``lora`` the
   adapters (A/B, plus DoRA's magnitudes with ``useDora``, plus biases per ``lora.bias``) and
   the head; ``ia3`` the (IA)^3 scaling vectors and the head;
2. ``freezeEmbeddings``: true freezes the embeddings/stem, false trains them, omitted follows
   the preset (a stage with ``topK`` omitted unfreezes everything, embeddings included);
3. ``freezePatterns`` freeze matching parameters; 4. ``trainPatterns`` train matching ones.

Gradual unfreezing never rebuilds the optimizer: ``param_groups`` puts *every* parameter in
it from the start (frozen ones just get no gradient, so AdamW leaves them untouched), and the
current stage is part of the checkpoint (``state_dict``), so a resume is exact. Stage 0 is the
preset's own configuration; stage i >= 1 is ``gradualUnfreezing.stages[i-1]``.

Per-block learning rates, one rule (:func:`lr_scale`): the head (and anything outside the
layout) gets ``lr``. Layer-wise decay: block i from the top (i = 0 for the topmost)
``lr * decay^(i+1)``, the embeddings ``lr * decay^(n_blocks+1)``. Discriminative rates
(fastai's slice): the n blocks fall into G contiguous groups (block b in group b*G // n), and
group g (0 = bottom, with the embeddings) gets ``lr * lowestFactor^((G-g)/G)``, so the rates
are evenly spaced in log scale from ``lr * lowestFactor`` up to the head's ``lr``. ``top``
parts go with the topmost block in both. Biases and norm weights (every parameter with <= 1
dimension) get no weight decay.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kubegraft.api.v1alpha1 import FreezePreset, FreezeSpec, ScheduleUnit
from kubegraft_trainer.blocks import (
    EMBEDDINGS,
    HEAD,
    TOP,
    BlockLayout,
    _strip_wrappers,
    block_of,
    part_of,
)
from kubegraft_trainer.lora import is_lora_param
from kubegraft_trainer.model_summary import param_numel, parameter_table

_FROZEN_BN = "_kubegraft_frozen_bn"


class FreezePolicy:
    """One job's freezing policy over one model layout, with the gradual-unfreezing stage."""

    def __init__(
        self,
        spec: FreezeSpec,
        layout: BlockLayout,
        *,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        self.spec = spec
        self.layout = layout
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.stage = 0
        """The stage last applied (restored from a checkpoint by ``load_state_dict``)."""

    @classmethod
    def from_spec(
        cls,
        spec: FreezeSpec,
        layout: BlockLayout,
        *,
        total_steps: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> FreezePolicy:
        """The policy for ``spec.freeze`` on a model described by ``layout``."""
        return cls(spec, layout, total_steps=total_steps, steps_per_epoch=steps_per_epoch)

    # --------------------------------------------------------------------------- stages

    @property
    def num_stages(self) -> int:
        """1 (the preset) plus the number of gradual-unfreezing stages."""
        schedule = self.spec.gradual_unfreezing
        return 1 + (len(schedule.stages) if schedule else 0)

    def stage_at(self, *, epoch: int, step: int) -> int:
        """Index of the stage in force at (0-based) ``epoch`` / optimizer ``step``."""
        schedule = self.spec.gradual_unfreezing
        if schedule is None:
            return 0
        value = epoch if schedule.unit == ScheduleUnit.EPOCH else step
        stage = 0
        for i, s in enumerate(schedule.stages, start=1):
            if s.at <= value:
                stage = i
        return stage

    def advance(self, model: nn.Module, *, epoch: int, step: int) -> bool:
        """Apply the stage in force now if it differs from the current one; True if it changed."""
        stage = self.stage_at(epoch=epoch, step=step)
        if stage == self.stage:
            return False
        self.apply(model, stage=stage)
        return True

    def _top_k(self, stage: int) -> tuple[str, int | None]:
        """The block selection of a stage: (mode, k) with mode preset name or 'stage'."""
        if stage < 0 or stage >= self.num_stages:
            raise ValueError(f"stage {stage} out of range 0..{self.num_stages - 1}")
        if stage == 0:
            return self.spec.preset.value, self.spec.top_k
        assert self.spec.gradual_unfreezing is not None
        return "stage", self.spec.gradual_unfreezing.stages[stage - 1].top_k

    # ----------------------------------------------------------------------- the rule set

    def trainable_names(self, model: nn.Module, *, stage: int = 0) -> set[str]:
        """The exact set of parameter names (as ``model.named_parameters()`` gives them) that
        train in ``stage``. Pure: reads names only, changes nothing."""
        mode, k = self._top_k(stage)
        spec = self.spec
        n_blocks = len(self.layout.blocks)
        all_blocks = mode == "stage" and k is None
        first_trainable_block = n_blocks  # no block
        if mode == FreezePreset.FULL.value or all_blocks:
            first_trainable_block = 0
        elif mode in (FreezePreset.TOP_K.value, "stage"):
            first_trainable_block = max(0, n_blocks - (k or 0))
        lora_bias_modules = (
            _lora_wrapped_modules(model) if mode == FreezePreset.LORA.value else set()
        )

        trainable: set[str] = set()
        for name, _ in model.named_parameters():
            plain = _strip_wrappers(name)
            part = part_of(self.layout, plain)
            is_bias = plain.rsplit(".", 1)[-1] == "bias"
            if part == HEAD or mode == FreezePreset.FULL.value or all_blocks:
                on = True
            elif mode == FreezePreset.BITFIT.value:
                on = is_bias
            elif mode == FreezePreset.IA3.value:
                on = is_lora_param(plain)
            elif mode == FreezePreset.LORA.value:
                lora_bias = spec.lora.bias if spec.lora else "none"
                on = is_lora_param(plain) or (
                    is_bias
                    and (
                        lora_bias == "all"
                        or (lora_bias == "lora_only" and _bias_owner(plain) in lora_bias_modules)
                    )
                )
            elif part in ("block", TOP):
                index = self.layout.block_index(plain)
                on = index is not None and index >= first_trainable_block
            else:  # embeddings and other, under feature-extraction / top-k / a topK stage
                on = False
            if part == EMBEDDINGS and spec.freeze_embeddings is not None:
                on = not spec.freeze_embeddings
            if spec.freeze_patterns and _matches(plain, spec.freeze_patterns):
                on = False
            if spec.train_patterns and _matches(plain, spec.train_patterns):
                on = True
            if on:
                trainable.add(name)
        return trainable

    def apply(self, model: nn.Module, *, stage: int = 0) -> None:
        """Set ``requires_grad`` exactly per the policy for ``stage`` and freeze BN statistics.

        Batch-norm layers whose own parameters are all frozen (or, without affine parameters,
        whose block has nothing trainable) are put in eval mode when freezeBatchNormStats is
        set; call :meth:`set_train_mode` instead of ``model.train()`` to keep them so.
        """
        if self.spec.preset in (FreezePreset.LORA, FreezePreset.IA3) and not any(
            is_lora_param(n) for n, _ in model.named_parameters()
        ):
            kind = "LoRA" if self.spec.preset == FreezePreset.LORA else "(IA)^3"
            raise ValueError(
                f"preset {self.spec.preset.value} but the model has no {kind} adapters: load it "
                "with pretrained.load_model (or call pretrained.inject_lora) before applying the "
                "policy"
            )
        trainable = self.trainable_names(model, stage=stage)
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
        self._mark_frozen_batch_norm(model)
        self.stage = stage
        if model.training:
            self.set_train_mode(model)
        else:
            model.eval()

    def _mark_frozen_batch_norm(self, model: nn.Module) -> None:
        trainable_rows: set[str] = {
            block_of(self.layout, n) for n, p in model.named_parameters() if p.requires_grad
        }
        for name, module in model.named_modules():
            if not isinstance(module, _BatchNorm):
                continue
            own = list(module.parameters(recurse=False))
            if own:
                frozen = not any(p.requires_grad for p in own)
            else:
                frozen = block_of(self.layout, name + ".weight") not in trainable_rows
            setattr(module, _FROZEN_BN, bool(frozen and self.spec.freeze_batch_norm_stats))

    def set_train_mode(self, model: nn.Module) -> None:
        """``model.train()``, except that frozen batch-norm layers stay in eval mode."""
        model.train()
        for module in model.modules():
            if getattr(module, _FROZEN_BN, False):
                module.eval()

    # ------------------------------------------------------------------ optimizer groups

    def lr_scale(self, param_name: str) -> float:
        """The factor this policy applies to ``param_name``'s learning rate (:func:`lr_scale`)."""
        return lr_scale(self.spec, self.layout, param_name)

    def param_groups(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        trainable_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups over ALL parameters (or only the trainable ones).

        One group per (layout row, decay/no-decay) with per-block rates (layer-wise decay or
        discriminative rates), else per decay/no-decay. Each group has ``params``, ``lr``,
        ``weight_decay`` and, for logs and tests, ``name``, ``lr_scale`` and ``param_names``.
        """
        per_row = has_block_rates(self.spec)
        groups: OrderedDict[tuple[str, bool], dict[str, Any]] = OrderedDict()
        for name, param in model.named_parameters():
            if trainable_only and not param.requires_grad:
                continue
            row = block_of(self.layout, name) if per_row else "all"
            decays = param.ndim > 1
            key = (row, decays)
            if key not in groups:
                scale = self.lr_scale(name)
                groups[key] = {
                    "params": [],
                    "param_names": [],
                    "lr": lr * scale,
                    "lr_scale": scale,
                    "weight_decay": weight_decay if decays else 0.0,
                    "name": f"{row}/{'decay' if decays else 'no_decay'}",
                }
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        return list(groups.values())

    # ----------------------------------------------------------------- state and reports

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps so that resume restores the same stage."""
        return {
            "stage": self.stage,
            "num_stages": self.num_stages,
            "preset": self.spec.preset.value,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the stage; call :meth:`apply` with ``stage=self.stage`` afterwards."""
        stage = int(state["stage"])
        if not 0 <= stage < self.num_stages:
            raise ValueError(
                f"checkpointed freeze stage {stage} does not exist in this policy "
                f"({self.num_stages} stages): the freeze spec changed since the checkpoint"
            )
        self.stage = stage

    def counts(self, model: nn.Module) -> tuple[int, int]:
        """(trainable, total) parameter counts as ``requires_grad`` stands now (full sizes,
        also of parameters ZeRO-3 has partitioned)."""
        total = trainable = 0
        for _, p in model.named_parameters():
            n = param_numel(p)
            total += n
            if p.requires_grad:
                trainable += n
        return trainable, total

    def summary_table(self, model: nn.Module) -> str:
        """Trainable vs total parameters per top-level block (bottom to top), as text."""
        title = (
            f"freeze policy: preset={self.spec.preset.value} "
            f"stage={self.stage}/{self.num_stages - 1}"
        )
        return parameter_table(model, self.layout, title=title)


def has_block_rates(spec: FreezeSpec) -> bool:
    """Whether ``spec`` gives blocks their own learning rates (layer-wise decay other than 1.0,
    or discriminative rates per block group)."""
    return spec.discriminative_lr is not None or spec.layerwise_lr_decay not in (None, 1.0)


def lr_scale(spec: FreezeSpec, layout: BlockLayout, param_name: str) -> float:
    """``param_name``'s learning rate as a multiple of ``training.learningRate`` (the module
    docstring states the rule): the one place where per-block rates are decided."""
    if not has_block_rates(spec):
        return 1.0
    plain = _strip_wrappers(param_name)
    n_blocks = len(layout.blocks)
    part = part_of(layout, plain)
    index: int | None
    if part in ("block", TOP):
        index = layout.block_index(plain)
    elif part == EMBEDDINGS:
        index = -1  # below the bottom block
    else:
        return 1.0  # head and other
    if index is None:
        return 1.0
    slice_ = spec.discriminative_lr
    if slice_ is not None:
        groups = slice_.groups
        group = max(0, index) * groups // max(1, n_blocks)
        return float(slice_.lowest_factor ** ((groups - group) / groups))
    assert spec.layerwise_lr_decay is not None
    return float(spec.layerwise_lr_decay ** (n_blocks - index))


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _bias_owner(name: str) -> str:
    """The LoRA-wrapped module a ``...X.base_layer.bias`` belongs to (``...X``)."""
    owner = name.rsplit(".", 1)[0]
    return owner.removesuffix(".base_layer")


def _lora_wrapped_modules(model: nn.Module) -> set[str]:
    return {
        _strip_wrappers(name)
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and name
    }
