"""From a pretrained checkpoint to a model with a new head: what every training pod does first.

``load_model(spec, num_labels=...)`` reads ``spec.model`` and returns a :class:`ModelBundle`:
the model (a :class:`~kubegraft_trainer.transfer_model.TransferModel` for classification, a
:class:`~kubegraft_trainer.transfer_model.CausalLMModel` for causal-lm), its tokenizer or
image geometry for the data pipeline, and its :class:`~kubegraft_trainer.blocks.BlockLayout`
for the freeze policy. With preset ``lora`` (or ``ia3``) the adapters are already injected, so the
structure is final before the optimizer and the distributed wrapper see it.

Checkpoints, in the order they are recognised:

* ``hf://org/name`` -- downloaded from the Hugging Face Hub (revision and the ``HF_TOKEN``
  mounted from the token Secret honoured; ``HF_HUB_OFFLINE=1`` means cache only), then loaded
  as a Hugging Face directory.
* a Hugging Face directory (``config.json``; safetensors preferred, ``.bin`` read by
  transformers with ``weights_only``).
* a directory written by :meth:`ModelBundle.export` for a CNN (``kubegraft.json`` +
  ``model.safetensors``): its architecture is read from ``kubegraft.json``.
* a state-dict file (``.safetensors``; ``.pth``/``.pt``/``.bin`` through
  ``torch.load(weights_only=True)``) for ``spec.model.architecture``.

Nothing here unpickles arbitrary objects. Every failure a user can fix (missing, corrupt or
mismatched checkpoint, a Hub repo or revision that does not exist or is denied, missing
num_labels) is a :class:`ConfigError` naming the field, which the entrypoint turns into exit
code 78; a Hub that is down, rate-limiting, slow or unreachable is a :class:`RetryableError`
(exit 1: the operator restarts after its back-off) -- :func:`classify_hub_error`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kubegraft.api.v1alpha1 import (
    CheckpointFormat,
    FineTuneJobSpec,
    FreezePreset,
    Head,
    ModelSpec,
    Task,
)
from kubegraft_trainer.architectures import CnnArchitecture, StateDict, get_architecture
from kubegraft_trainer.blocks import BlockLayout
from kubegraft_trainer.errors import ConfigError, RetryableError
from kubegraft_trainer.heads import build_head
from kubegraft_trainer.lora import (
    add_ia3_adapters,
    add_lora_adapters,
    default_text_ia3_targets,
    default_text_targets,
    has_lora,
    merge_lora,
)
from kubegraft_trainer.model_summary import param_numel
from kubegraft_trainer.transfer_model import CausalLMModel, ModelKind, TextBackbone, TransferModel
from kubegraft_trainer.uris import HF_SCHEME, is_hub_uri, resolve_uri

log = logging.getLogger(__name__)

CHECKPOINT_FIELD = "spec.model.checkpoint"
ARCHITECTURE_FIELD = "spec.model.architecture"
NUM_LABELS_FIELD = "spec.model.head.numLabels"
HF_TOKEN_ENV = "HF_TOKEN"
"""Environment variable with a Hub token (`kubegraft run`); in a pod the token Secret
(spec.model.tokenSecretRef) is a file whose path is in HF_TOKEN_PATH."""
EXPORT_MANIFEST = "kubegraft.json"
EXPORT_WEIGHTS = "model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
EXPORT_FORMAT_VERSION = "kubegraft.io/export-v1"
STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*", "merges*"]


@dataclass
class ModelBundle:
    """A model ready for a freeze policy, with what the data pipeline needs to feed it."""

    model: nn.Module
    """A TransferModel (classification) or a CausalLMModel (causal-lm)."""
    kind: Literal["text", "image", "causal-lm"]
    tokenizer: Any | None
    """The checkpoint's Hugging Face tokenizer (text and causal-lm)."""
    image_size: int | None
    """Side of the square input images the backbone was pretrained at (images only)."""
    image_mean: tuple[float, float, float] | None
    image_std: tuple[float, float, float] | None
    layout: BlockLayout
    """Where embeddings, blocks and head are, as parameter-name prefixes of ``model``."""
    num_labels: int | None = None
    architecture: str | None = None
    """The CNN architecture, or the Hugging Face model type."""
    head_spec: Head = field(default_factory=Head)
    source: str = ""
    """The checkpoint as the manifest named it (recorded in kubegraft.json on export)."""

    def export(
        self,
        model: nn.Module,
        out_dir: Path,
        *,
        labels: Sequence[str] | None = None,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write the final model to ``out_dir``.

        Hugging Face backbones: ``save_pretrained`` of the backbone (safetensors) and the
        tokenizer, ``head.safetensors`` and ``kubegraft.json`` describing the head (a causal LM
        is saved whole). CNNs: ``model.safetensors`` (the TransferModel's state dict, backbone
        under ``backbone.``) and ``kubegraft.json``; ``load_model`` reads that directory (or
        the file with the architecture named) back as a pretrained backbone.

        ``model`` may be wrapped (DDP, ``torch.compile``); ``state_dict`` replaces its weights
        when the caller gathered them itself (ZeRO-3, FSDP). LoRA adapters are merged.
        """
        model = _unwrap(model)
        if state_dict is not None or has_lora(model):
            model = copy.deepcopy(model)
            if state_dict is not None:
                model.load_state_dict(dict(state_dict))
            merge_lora(model)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, Any] = {
            "format": EXPORT_FORMAT_VERSION,
            "kind": self.kind,
            "architecture": self.architecture,
            "source": self.source,
        }
        if self.kind != "causal-lm":
            manifest["numLabels"] = self.num_labels
            manifest["head"] = self.head_spec.to_wire()
            manifest["pooling"] = "mean" if self.kind == "text" else "global-average"
        if labels is not None:
            manifest["labels"] = list(labels)
        if extra:
            manifest.update(extra)

        from safetensors.torch import save_file

        if isinstance(model, CausalLMModel):
            model.model.save_pretrained(out_dir)
        elif isinstance(model, TransferModel) and isinstance(model.backbone, TextBackbone):
            if labels is not None:
                model.backbone.model.config.id2label = dict(enumerate(labels))
                model.backbone.model.config.label2id = {n: i for i, n in enumerate(labels)}
            model.backbone.model.save_pretrained(out_dir)
            save_file(_plain(model.head.state_dict()), str(out_dir / HEAD_WEIGHTS))
            manifest["weights"] = {"backbone": "model.safetensors", "head": HEAD_WEIGHTS}
        else:
            save_file(_plain(model.state_dict()), str(out_dir / EXPORT_WEIGHTS))
            manifest["weights"] = {"model": EXPORT_WEIGHTS}
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)
        (out_dir / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _plain(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ------------------------------------------------------------------------------------- entry


def load_model(spec: FineTuneJobSpec, *, num_labels: int | None) -> ModelBundle:
    """Load ``spec.model``'s checkpoint, add the new head, and (preset lora) inject adapters.

    ``num_labels`` is the number of classes the data has (or None to take
    ``spec.model.head.numLabels``); classification needs one of them, and they must agree.
    Raises ConfigError for anything the user must fix.
    """
    mspec = spec.model
    labels = _num_labels(mspec, num_labels)
    source, fmt, architecture = _locate(mspec)
    # An explicit format that does not fit the task is refused at admission (ModelSpec's
    # rules); these two checks are for format auto, which only the files on disk decide.
    if fmt == CheckpointFormat.HUGGINGFACE:
        if mspec.task == Task.IMAGE_CLASSIFICATION:
            raise ConfigError(
                "image-classification needs a CNN state-dict checkpoint (format state-dict with "
                "an architecture); Hugging Face image models are not supported yet",
                field="spec.model.format",
            )
        bundle = _load_huggingface(source, mspec, labels)
    else:
        if mspec.task != Task.IMAGE_CLASSIFICATION:
            raise ConfigError(
                f"a state-dict checkpoint is for image-classification with a CNN architecture; "
                f"task {mspec.task.value} needs a Hugging Face checkpoint",
                field=CHECKPOINT_FIELD,
            )
        assert labels is not None
        bundle = _load_state_dict_model(source, get_architecture(architecture), mspec, labels)
    bundle.source = mspec.checkpoint
    if spec.freeze.preset in (FreezePreset.LORA, FreezePreset.IA3):
        inject_lora(bundle, spec)
    return bundle


def inject_lora(bundle: ModelBundle, spec: FineTuneJobSpec) -> None:
    """Inject the preset's adapters into the bundle's backbone (idempotent): LoRA (DoRA with
    ``lora.useDora``) for preset lora, (IA)^3 for preset ia3, on the architecture's default
    targets unless the spec names them."""
    model = bundle.model
    feedforward: list[str] | str | None
    cnn = False
    if isinstance(model, CausalLMModel):
        inner: nn.Module = model.model
    elif isinstance(model, TransferModel) and isinstance(model.backbone, TextBackbone):
        inner = model.backbone.model
    elif isinstance(model, TransferModel):
        inner, cnn = model.backbone, True
    else:  # pragma: no cover - load_model only makes the two kinds above
        raise TypeError(f"cannot add adapters to {type(model).__name__}")
    if cnn:
        arch = get_architecture(bundle.architecture)
        targets: list[str] | str = arch.lora_target_regex
        ia3_targets: list[str] | str = arch.lora_target_regex
        feedforward = arch.ia3_feedforward_regex
    else:
        model_type = getattr(getattr(inner, "config", None), "model_type", None)
        targets = default_text_targets(model_type)
        ia3_targets, feedforward = default_text_ia3_targets(model_type)
    if spec.freeze.preset == FreezePreset.IA3:
        add_ia3_adapters(
            inner, spec.freeze.ia3, default_targets=ia3_targets, default_feedforward=feedforward
        )
    else:
        add_lora_adapters(inner, spec.freeze.lora, default_targets=targets)


def _num_labels(mspec: ModelSpec, num_labels: int | None) -> int | None:
    if mspec.task == Task.CAUSAL_LM:
        return None
    declared = mspec.head.num_labels
    if num_labels is not None and declared is not None and num_labels != declared:
        raise ConfigError(
            f"{declared} classes declared but the data has {num_labels} labels",
            field=NUM_LABELS_FIELD,
        )
    labels = num_labels if num_labels is not None else declared
    if labels is None:
        raise ConfigError(
            f"required for task {mspec.task.value} (or derive it from the data's labels)",
            field=NUM_LABELS_FIELD,
        )
    if labels < 1:
        raise ConfigError(f"must be at least 1, got {labels}", field=NUM_LABELS_FIELD)
    return labels


def _locate(mspec: ModelSpec) -> tuple[Path, CheckpointFormat, str | None]:
    """Where the checkpoint is locally, its format and (state dicts) its architecture."""
    if is_hub_uri(mspec.checkpoint):
        # (format state-dict with hf:// is refused at admission: ModelSpec's rules)
        return _download_from_hub(mspec), CheckpointFormat.HUGGINGFACE, None
    path = resolve_uri(mspec.checkpoint, field=CHECKPOINT_FIELD)
    architecture = mspec.architecture
    if path.is_dir():
        if (path / "config.json").is_file() and mspec.format != CheckpointFormat.STATE_DICT:
            return path, CheckpointFormat.HUGGINGFACE, None
        manifest = _read_export_manifest(path)
        if manifest is not None and mspec.format != CheckpointFormat.HUGGINGFACE:
            saved = manifest.get("architecture")
            if architecture and saved and _norm(architecture) != _norm(saved):
                raise ConfigError(
                    f"{architecture!r}, but the checkpoint {path} was exported from {saved!r}",
                    field=ARCHITECTURE_FIELD,
                )
            return path / EXPORT_WEIGHTS, CheckpointFormat.STATE_DICT, architecture or saved
        want = (
            "Hugging Face directory (config.json)"
            if mspec.format != "state-dict"
            else "state-dict file"
        )
        raise ConfigError(f"{path} is a directory but not a {want}", field=CHECKPOINT_FIELD)
    if mspec.format == CheckpointFormat.HUGGINGFACE:
        raise ConfigError(
            f"{path} is a file; a Hugging Face checkpoint is a directory with config.json",
            field=CHECKPOINT_FIELD,
        )
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise ConfigError(
            f"{path}: unknown checkpoint file type {path.suffix!r} (expected one of "
            f"{', '.join(STATE_DICT_SUFFIXES)})",
            field=CHECKPOINT_FIELD,
        )
    if architecture is None:
        manifest = _read_export_manifest(path.parent)
        architecture = manifest.get("architecture") if manifest else None
    return path, CheckpointFormat.STATE_DICT, architecture


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _read_export_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / EXPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}", field=CHECKPOINT_FIELD) from exc
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------- the Hub


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) asks for cache only."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _download_from_hub(mspec: ModelSpec) -> Path:
    """A local snapshot of ``hf://org/name`` (weights as safetensors when the repo has them)."""
    repo_id = mspec.checkpoint[len(HF_SCHEME) :].strip("/")
    if repo_id.count("/") > 1 or not repo_id:
        raise ConfigError(
            f"{mspec.checkpoint!r}: expected hf://<org>/<name>", field=CHECKPOINT_FIELD
        )
    from huggingface_hub import get_token, snapshot_download

    token = get_token()  # HF_TOKEN, else the file at HF_TOKEN_PATH (the pod's Secret volume)
    if mspec.token_secret_ref is not None and token is None:
        log.warning(
            "spec.model.tokenSecretRef is set but neither %s nor the file at HF_TOKEN_PATH "
            "holds a token",
            HF_TOKEN_ENV,
        )
    offline = hub_offline()
    from huggingface_hub import set_client_factory

    # The Hub client's default has no timeout: a Hub that accepts and never answers would
    # hold the pod forever (its heartbeats going on). HF_HUB_DOWNLOAD_TIMEOUT bounds each wait.
    set_client_factory(_hub_client)

    where = f"{mspec.checkpoint}" + (f"@{mspec.revision}" if mspec.revision else "")
    try:
        local = Path(
            snapshot_download(
                repo_id,
                revision=mspec.revision,
                token=token,
                allow_patterns=_HUB_FILES,
                local_files_only=offline,
            )
        )
        if not any(local.rglob("*.safetensors")):  # an older repo: .bin weights, read weights-only
            local = Path(
                snapshot_download(
                    repo_id,
                    revision=mspec.revision,
                    token=token,
                    allow_patterns=[*_HUB_FILES, "*.bin"],
                    local_files_only=offline,
                )
            )
    except Exception as exc:  # the Hub client raises many types (HTTP, offline, auth)
        if offline:
            reason = (
                "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache "
                f"({type(exc).__name__}); mount the model and give its path instead"
            )
            raise ConfigError(f"cannot fetch {where}: {reason}", field=CHECKPOINT_FIELD) from exc
        permanent, reason = classify_hub_error(exc)
        error = ConfigError if permanent else RetryableError
        raise error(f"cannot fetch {where}: {reason}", field=CHECKPOINT_FIELD) from exc
    return local


def _hub_client() -> Any:
    """huggingface_hub's own client, with a timeout on every connect and read for requests
    that name none (its repo-info call passes ``timeout=None``, which would wait forever)."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils._http import default_client_factory

    bound = httpx2.Timeout(float(constants.HF_HUB_DOWNLOAD_TIMEOUT)).as_dict()

    def with_timeout(request: Any) -> None:
        given = request.extensions.get("timeout") or {}
        if all(v is None for v in given.values()):
            request.extensions["timeout"] = bound

    client = default_client_factory()
    hooks = client.event_hooks
    hooks["request"] = [*hooks.get("request", []), with_timeout]
    client.event_hooks = hooks
    return client


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, outermost first (the Hub client wraps the HTTP
    error it fell back from in a LocalEntryNotFoundError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify_hub_error(exc: BaseException) -> tuple[bool, str]:
    """Whether a Hub failure is permanent (the job's configuration: 401/403/404, a revision
    that does not exist) and the reason in a few words. Everything else -- timeouts,
    connection errors, 5xx, 429, anything unknown -- may go away, so it is retryable."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    for e in _causes(exc):
        name = type(e).__name__
        if isinstance(e, RevisionNotFoundError):
            return True, f"revision not found on the Hub ({name})"
        response = getattr(e, "response", None) if isinstance(e, HfHubHTTPError) else None
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            if status in (401, 403):
                return True, (
                    f"access denied (HTTP {status}, {name}); set spec.model.tokenSecretRef to "
                    "a token with access"
                )
            if status == 404:
                return True, f"not found on the Hub (HTTP 404, {name})"
            if status == 429:
                return False, f"rate-limited by the Hub (HTTP 429, {name}); will retry"
            return False, f"the Hub answered HTTP {status} ({name}); will retry"
        if isinstance(e, (httpx2.TimeoutException, TimeoutError)):
            return False, f"the Hub did not answer in time ({name}); will retry"
        if isinstance(e, (httpx2.TransportError, ConnectionError)):
            return False, f"the Hub is unreachable ({name}: {_first_line(e)[:160]}); will retry"
    return False, f"the Hub request failed ({type(exc).__name__}: {_first_line(exc)[:160]})"


# ------------------------------------------------------------------------ Hugging Face dirs


def _load_huggingface(path: Path, mspec: ModelSpec, num_labels: int | None) -> ModelBundle:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise ConfigError(
            f"{path}: not a usable Hugging Face config ({type(exc).__name__}: {_first_line(exc)})",
            field=CHECKPOINT_FIELD,
        ) from exc
    if mspec.task == Task.CAUSAL_LM:
        hf = _from_pretrained(AutoModelForCausalLM, path, config, extra={})
    else:
        hf = _from_pretrained(AutoModel, path, config, extra={"add_pooling_layer": False})
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ConfigError(
            f"{path}: cannot load the tokenizer ({type(exc).__name__}: {_first_line(exc)})",
            field=CHECKPOINT_FIELD,
        ) from exc
    model_type = getattr(config, "model_type", None)
    if mspec.task == Task.CAUSAL_LM:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # batches need padding; eos is the convention
        cmodel = CausalLMModel(hf)
        return ModelBundle(
            model=cmodel,
            kind="causal-lm",
            tokenizer=tokenizer,
            image_size=None,
            image_mean=None,
            image_std=None,
            layout=hf_layout(cmodel, inner="model", head_module=hf.get_output_embeddings()),
            num_labels=None,
            architecture=model_type,
            head_spec=mspec.head,
        )
    assert num_labels is not None
    backbone = TextBackbone(hf)
    with zero3_init_like(hf):
        head = build_head(mspec.head, in_features=backbone.hidden_size, num_labels=num_labels)
    model = TransferModel(backbone, head, kind="text", num_labels=num_labels)
    return ModelBundle(
        model=model,
        kind="text",
        tokenizer=tokenizer,
        image_size=None,
        image_mean=None,
        image_std=None,
        layout=hf_layout(model, inner="backbone.model", head_module=model.head),
        num_labels=num_labels,
        architecture=model_type,
        head_spec=mspec.head,
    )


def is_zero3_partitioned(module: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned ``module``'s parameters (``zero.Init``)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def zero3_init_like(module: nn.Module) -> AbstractContextManager[Any]:
    """Where to build new layers that go beside ``module``: inside ``deepspeed.zero.Init`` with
    the same DeepSpeed config if ``module`` was built there, else nowhere special.

    With ZeRO-3 on (Accelerate's DeepSpeed plugin registers the config with transformers),
    ``from_pretrained`` builds the backbone inside ``zero.Init``: every parameter is
    partitioned across the ranks as it is made and stored in the config's precision (bf16 or
    fp16). A head made outside would stay whole and fp32, and DeepSpeed neither casts a model
    that is already partly partitioned nor mixes precisions in one ZeRO-3 flat buffer (it
    asserts in ``defragment``). Built in the same ``zero.Init`` the head is partitioned and
    cast like the backbone, and initialised identically on every rank (rank 0's values are
    broadcast) -- exactly how transformers builds the classifier of its own
    ``AutoModelForSequenceClassification`` under ZeRO-3.
    """
    if not is_zero3_partitioned(module):
        return nullcontext()
    import deepspeed
    from transformers.integrations.deepspeed import deepspeed_config

    config = deepspeed_config()  # type: ignore[no-untyped-call]
    if config is None:  # pragma: no cover - partitioned, so the config was registered
        raise RuntimeError("the backbone is ZeRO-3 partitioned but no DeepSpeed config is set")
    return deepspeed.zero.Init(config_dict_or_path=config)  # type: ignore[no-any-return]


@contextmanager
def without_zero3_init() -> Iterator[None]:
    """Build models whole, as without DeepSpeed, even while a ZeRO-3 config is registered.

    transformers' ``from_pretrained`` builds inside ``deepspeed.zero.Init`` whenever a ZeRO-3
    config is registered (``is_deepspeed_zero3_enabled``); ``zero.Init`` broadcasts every new
    parameter, a collective, so a model loaded on one rank only (the export copy) would wait
    for ranks that never join. (Accelerate's ``zero3_init_context_manager(enable=False)``
    re-registers the config, which still reads as ZeRO-3, so it cannot be used here.)
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)  # type: ignore[no-untyped-call]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _from_pretrained(auto: Any, path: Path, config: Any, *, extra: dict[str, Any]) -> Any:
    """``auto.from_pretrained`` in float32, turning load problems into ConfigError."""
    kwargs: dict[str, Any] = {"config": config, "dtype": torch.float32, "output_loading_info": True}
    try:
        try:
            model, info = auto.from_pretrained(path, **kwargs, **extra)
        except TypeError:
            if not extra:
                raise
            model, info = auto.from_pretrained(path, **kwargs)  # model without that option
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{path}: cannot load the weights ({type(exc).__name__}: {_first_line(exc)})",
            field=CHECKPOINT_FIELD,
        ) from exc
    missing = [k for k in info.get("missing_keys", []) if not _ignorable_missing(k)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        raise ConfigError(
            f"{path}: the weights do not match the config: "
            + _describe_mismatch(
                missing=missing, unexpected=[], shapes=[str(m) for m in mismatched]
            ),
            field=CHECKPOINT_FIELD,
        )
    model.eval()
    return model


def _ignorable_missing(key: str) -> bool:
    # Buffers and tied output embeddings that transformers rebuilds itself.
    return key.endswith("position_ids") or key.startswith("pooler.") or "lm_head" in key


def hf_layout(model: nn.Module, *, inner: str, head_module: nn.Module | None) -> BlockLayout:
    """The block layout of a Hugging Face model nested in ``model`` at ``inner``.

    The repeated blocks are the largest ``nn.ModuleList`` of same-typed modules (BERT's
    ``encoder.layer``, GPT-2's ``h``, Llama's ``layers``); embeddings are the ``embeddings``
    submodule if there is one, else the ``nn.Embedding`` modules; every other backbone
    parameter above the blocks is ``top``.
    """
    hf = model.get_submodule(inner)
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in hf.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(m) for m in module}
            size = sum(param_numel(p) for p in module.parameters())  # ZeRO-3: numel() is 0
            if len(kinds) == 1 and (best is None or size > best[0]):
                best = (size, name, module)
    blocks = [f"{inner}.{best[1]}.{i}" for i in range(len(best[2]))] if best else []
    head_names = []
    if head_module is not None:
        head_names = [f"{n}" for n, m in model.named_modules() if m is head_module and n]
    embeddings: list[str] = []
    if isinstance(getattr(hf, "embeddings", None), nn.Module):
        embeddings = [f"{inner}.embeddings"]
    else:
        for name, module in hf.named_modules():
            if isinstance(module, nn.Embedding) and f"{inner}.{name}" not in head_names:
                embeddings.append(f"{inner}.{name}")
    covered = blocks + embeddings + head_names
    top: list[str] = []
    for pname, _ in model.named_parameters():
        if any(pname == c or pname.startswith(c + ".") for c in covered + top):
            continue
        if pname.startswith(inner + "."):
            top.append(pname.rsplit(".", 1)[0])
    return BlockLayout(embeddings=embeddings, blocks=blocks, head=head_names, top=top)


# ---------------------------------------------------------------------------- state dicts


def read_state_dict(path: Path, *, field: str = CHECKPOINT_FIELD) -> StateDict:
    """Tensors of a ``.safetensors`` or (weights-only) torch file; ConfigError if unreadable."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile, KeyError, AttributeError, TypeError) as exc:  # fmt: skip
        raise ConfigError(
            f"{path} is corrupt or not a weights-only state dict "
            f"({type(exc).__name__}: {_first_line(exc)})",
            field=field,
        ) from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ConfigError(
            f"{path} is corrupt ({type(exc).__name__}: {_first_line(exc)})", field=field
        ) from exc
    if isinstance(raw, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            inner = raw.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
                raw = inner
                break
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise ConfigError(f"{path} does not hold a state dict of tensors", field=field)
    return dict(raw)


def _strip_prefixes(state: StateDict) -> StateDict:
    """Drop DDP's ``module.`` prefix and read our own exports (``backbone.``, new ``head.``)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")
        }
    return state


def _load_state_dict_model(
    path: Path, arch: CnnArchitecture, mspec: ModelSpec, num_labels: int
) -> ModelBundle:
    state = _strip_prefixes(read_state_dict(path))
    backbone = arch.build()
    state = arch.convert(state, backbone)
    load_backbone_state(backbone, state, source=f"{path} ({arch.name})")
    head = build_head(mspec.head, in_features=arch.feature_dim, num_labels=num_labels)
    model = TransferModel(backbone, head, kind="image", num_labels=num_labels)
    layout = arch.layout(backbone).prefixed("backbone")
    layout = BlockLayout(layout.embeddings, layout.blocks, ["head"], layout.top)
    return ModelBundle(
        model=model,
        kind="image",
        tokenizer=None,
        image_size=arch.image_size,
        image_mean=arch.image_mean,
        image_std=arch.image_std,
        layout=layout,
        num_labels=num_labels,
        architecture=arch.name,
        head_spec=mspec.head,
    )


def load_backbone_state(backbone: nn.Module, state: StateDict, *, source: str) -> None:
    """Load ``state`` into ``backbone`` after checking names and shapes match exactly.

    Missing BN ``num_batches_tracked`` counters are tolerated (some exporters drop them);
    anything else missing, unexpected or of another shape is a ConfigError listing a few.
    """
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ConfigError(
            f"{source}: the state dict does not match the architecture: "
            + _describe_mismatch(missing=missing, unexpected=unexpected, shapes=shapes),
            field=CHECKPOINT_FIELD,
        )
    backbone.load_state_dict(state, strict=False)


def _describe_mismatch(*, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", shapes),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts)


KIND_BY_TASK: dict[Task, ModelKind] = {
    Task.SEQUENCE_CLASSIFICATION: "text",
    Task.IMAGE_CLASSIFICATION: "image",
    Task.CAUSAL_LM: "causal-lm",
}
