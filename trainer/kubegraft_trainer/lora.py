"""LoRA adapters (PEFT) injected in place into a backbone, and merged back for export.

The adapters are injected with ``peft.inject_adapter_in_model`` rather than by wrapping the
model in a ``PeftModel``: parameter names keep their place (``...query.lora_A.default.weight``
next to ``...query.base_layer.weight``), so the block layout, the freeze policy, the parameter
table and checkpoints keep working unchanged. Export merges the adapters into the base
weights, so the exported model is a plain checkpoint of the original architecture.
"""

from __future__ import annotations

from torch import nn

from kubegraft.api.v1alpha1 import LoraSpec

LORA_MARKER = "_kubegraft_lora_targets"


def default_text_targets(model_type: str | None) -> list[str]:
    """PEFT's default LoRA targets for a Hugging Face model type (query/value for BERT)."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type or "")
    if targets:
        return list(targets)
    return ["query", "value", "q_proj", "v_proj"]


def has_lora(module: nn.Module) -> bool:
    """Whether LoRA adapters were injected into ``module`` or any of its submodules."""
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
    )
    try:
        inject_adapter_in_model(config, module)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise ConfigError(str(exc).splitlines()[0], field="spec.freeze.lora.targetModules") from exc
    setattr(module, LORA_MARKER, targets)
    return module


def is_lora_param(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter weight."""
    return ".lora_" in name or name.startswith("lora_")


def merge_lora(module: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base layer and put the base layer back in its place.

    Modifies ``module`` in place (callers merge a copy); returns it.
    """
    from peft.tuners.lora import LoraLayer

    replacements: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, LoraLayer):
                child.merge()
                replacements.append((parent, child_name, child.get_base_layer()))
    for parent, child_name, base in replacements:
        setattr(parent, child_name, base)
    for m in module.modules():
        if hasattr(m, LORA_MARKER):
            delattr(m, LORA_MARKER)
    return module
