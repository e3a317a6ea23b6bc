"""PEFT adapters (LoRA, DoRA, (IA)^3) injected in place into a backbone, merged back for export.

The adapters are injected with ``peft.inject_adapter_in_model`` rather than by wrapping the
model in a ``PeftModel``: parameter names keep their place (``...query.lora_A.default.weight``
next to ``...query.base_layer.weight``), so the block layout, the freeze policy, the parameter
table and checkpoints keep working unchanged. Export merges the adapters into the base
weights, so the exported model is a plain checkpoint of the original architecture.

DoRA is LoRA with ``use_dora`` (an extra ``lora_magnitude_vector``); (IA)^3 adds ``ia3_l``
scaling vectors. Both inject the same way and merge the same way (every PEFT tuner layer has
``merge`` and ``get_base_layer``), so the rest of the trainer only asks :func:`is_lora_param`.
"""

from __future__ import annotations

from torch import nn

from kubegraft.api.v1alpha1 import Ia3Spec, LoraSpec

LORA_MARKER = "_kubegraft_lora_targets"


def default_text_targets(model_type: str | None) -> list[str]:
    """PEFT's default LoRA targets for a Hugging Face model type (query/value for BERT)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if targets:
        return list(targets)
    return ["query", "value", "q_proj", "v_proj"]


def default_text_ia3_targets(model_type: str | None) -> tuple[list[str], list[str]]:
    """PEFT's default (IA)^3 (targets, feed-forward targets) for a Hugging Face model type."""
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    targets = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type or "")
    if targets:
        feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type or "")
        return list(targets), list(feedforward or [])
    return ["key", "value", "output.dense"], ["output.dense"]


def has_lora(module: nn.Module) -> bool:
    """Whether adapters (LoRA, DoRA or (IA)^3) were injected into ``module`` or any of its
    submodules."""
    return any(hasattr(m, LORA_MARKER) for m in module.modules())


def add_lora_adapters(
    module: nn.Module, spec: LoraSpec | None, *, default_targets: list[str] | str
) -> nn.Module:
    """Inject LoRA adapters into ``module`` in place (idempotent) and return it.

    Targets are ``spec.target_modules`` (module-name suffixes) or ``default_targets`` (a list
    of suffixes, or a peft full-match regex string). Raises ConfigError when no module matches.
    """
    from peft import LoraConfig, inject_adapter_in_model

    from kubegraft_trainer.errors import ConfigError

    if has_lora(module):
        return module
    spec = spec or LoraSpec()
    targets: list[str] | str = list(spec.target_modules) if spec.target_modules else default_targets
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        bias=spec.bias,
        use_dora=spec.use_dora,
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(str(exc).splitlines()[0], field="spec.freeze.lora.targetModules") from exc
    setattr(module, LORA_MARKER, targets)
    return module


def add_ia3_adapters(
    module: nn.Module,
    spec: Ia3Spec | None,
    *,
    default_targets: list[str] | str,
    default_feedforward: list[str] | str | None,
) -> nn.Module:
    """Inject (IA)^3 scaling vectors into ``module`` in place (idempotent) and return it.

    Targets and feed-forward targets are the spec's or, when ``spec.target_modules`` is unset,
    the defaults (suffix lists or peft full-match regex strings). Raises ConfigError naming the
    field when no module matches or the feed-forward modules are not among the targets.
    """
    from peft import IA3Config, inject_adapter_in_model

    from kubegraft_trainer.errors import ConfigError

    if has_lora(module):
        return module
    spec = spec or Ia3Spec()
    targets: list[str] | str = default_targets
    feedforward: list[str] | str | None = default_feedforward
    if spec.target_modules:
        targets = list(spec.target_modules)
        feedforward = list(spec.feedforward_modules or [])
    elif spec.feedforward_modules is not None:
        feedforward = list(spec.feedforward_modules)
    try:
        config = IA3Config(target_modules=targets, feedforward_modules=feedforward or [])
    except ValueError as exc:  # "feedforward_modules should be a subset of target_modules"
        raise ConfigError(
            str(exc).splitlines()[0], field="spec.freeze.ia3.feedforwardModules"
        ) from exc
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0], field="spec.freeze.ia3.targetModules") from exc
    setattr(module, LORA_MARKER, targets)
    return module


def is_lora_param(name: str) -> bool:
    """Whether a parameter name is an adapter weight: LoRA's A/B (and DoRA's magnitude) or an
    (IA)^3 scaling vector."""
    return any(name.startswith(p) or f".{p}" in name for p in ("lora_", "ia3_"))


def merge_lora(module: nn.Module) -> nn.Module:
    """Merge every adapter (LoRA, DoRA, (IA)^3) into its base layer and put the base layer
    back in its place.

    Modifies ``module`` in place (callers merge a copy); returns it.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, BaseTunerLayer):
                child.merge()
                replacements.append((parent, child_name, child.get_base_layer()))
    for parent, child_name, base in replacements:
        setattr(parent, child_name, base)
    for m in module.modules():
        if hasattr(m, LORA_MARKER):
            delattr(m, LORA_MARKER)
    return module
