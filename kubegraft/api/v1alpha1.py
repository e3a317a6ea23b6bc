"""The FineTuneJob API, version v1alpha1: the one source of truth.

Every field's docstring becomes its OpenAPI description in the generated CRD (and so the text
of ``kubectl explain``); bounds and enums here become schema bounds; cross-field rules are
:class:`~kubegraft.api.rules.Rule` objects in each model's ``cel_rules``: their CEL side goes
into the CRD (enforced by the kube-apiserver at admission), their Python side runs as a model
validator (enforced by ``kubegraft validate``, ``kubegraft run`` and the trainer), so both
reject the same manifests. The operator and the trainer read the same typed objects, so a field
means one thing everywhere.

Field names are snake_case in Python and camelCase on the wire (``alias_generator``). Unknown
fields are rejected (``extra="forbid"``) so that a typo is an error, not a silent default.

Immutability: the CRD cannot see ``status`` from a spec rule, so "immutable while running" is
enforced as "immutable after creation" for everything that shapes the run (model, dataset,
freeze, training, distributed, output), with transition rules on the spec. ``runPolicy`` (suspend,
deadlines, timeouts) and ``pod`` (scheduling settings a queueing system such as Kueue injects
when it admits a suspended job) stay mutable; pod changes apply to the next gang.
"""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubegraft.api.rules import Rule, cel_validations, enforce

GROUP = "kubegraft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ("ftj",)
CATEGORIES = ("all", "kubegraft")

MAX_NAME_LENGTH = 48
"""Longest FineTuneJob name: the operator derives pod, Service and ConfigMap names (DNS-1035
labels, at most 63 characters) from it, with room for suffixes such as ``-worker-511``."""
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A FineTuneJob name is a DNS-1035 label, since the headless Service is named after it."""

DATE_TIME: dict[str, Any] = {"format": "date-time"}
"""Field marker: an RFC 3339 timestamp (the API server checks the format)."""

NO_SERVER_DEFAULT: dict[str, Any] = {"x-kubegraft-no-server-default": True}
"""Field marker: keep the Python default out of the CRD, so the API server does not store it
and the operator can tell "unset" (use the operator's own default) from an explicit value."""


def cel(*rules: Rule) -> dict[str, Any]:
    """The ``x-kubernetes-validations`` schema extra for ``rules`` (for hand-built schemas;
    models list their rules in ``cel_rules`` and get this automatically)."""
    return {"x-kubernetes-validations": cel_validations(rules)}


def _schema_extra(schema: dict[str, Any], cls: type[Any]) -> None:
    """Copy a model's own ``cel_rules`` into its JSON schema for the CRD generator."""
    rules: tuple[Rule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = cel_validations(rules)


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, docstrings as descriptions, no extras, and
    the cross-field rules of ``cel_rules`` enforced locally and at admission."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
        json_schema_extra=_schema_extra,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()
    """Cross-field rules of this object (CEL for the API server, a Python twin for us)."""

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        enforce(self, type(self).cel_rules)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# A free-form Kubernetes object (affinity, a toleration, a volume): validated by the API server
# against the core types when the operator creates the pod, kept opaque here.
KubeObject = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]

# A core/v1 Volume, free-form but for hostPath, which is declared so that a CEL rule can see it
# (the API server's CEL cannot read fields that are only preserved as unknown).
Volume = Annotated[
    dict[str, Any],
    Field(
        json_schema_extra={
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "hostPath": {
                    "type": "object",
                    "description": "Not allowed: reach node storage through a PersistentVolume.",
                    "x-kubernetes-preserve-unknown-fields": True,
                }
            },
        }
    ),
]

# Bounded strings for list items and names: the API server's CEL cost estimator needs a bound
# on every string and list a rule may touch, and unbounded input has no business here anyway.
ShortStr = Annotated[str, Field(min_length=1, max_length=253)]
LabelStr = Annotated[str, Field(min_length=1, max_length=1024)]
PatternStr = Annotated[str, Field(min_length=1, max_length=512)]


# --------------------------------------------------------------------------------------- model

LOCAL_URI_PREFIXES = ("/", "file:///", "file://localhost/", "pkg://")
"""How a data set (and a local checkpoint) may be named: an absolute path, a local file:// URI
or a package resource. Pods have no meaningful working directory, so relative paths are refused
at admission; ``kubegraft run`` makes a manifest's relative paths absolute before it validates."""


def _cel_starts_with_any(expr: str, prefixes: tuple[str, ...]) -> str:
    return " || ".join(f"{expr}.startsWith('{p}')" for p in prefixes)


class Task(StrEnum):
    """What the fine-tuned model predicts."""

    SEQUENCE_CLASSIFICATION = "sequence-classification"
    IMAGE_CLASSIFICATION = "image-classification"
    CAUSAL_LM = "causal-lm"


class CheckpointFormat(StrEnum):
    """How the pretrained checkpoint is stored."""

    AUTO = "auto"
    HUGGINGFACE = "huggingface"
    STATE_DICT = "state-dict"


class SecretKeyRef(ApiModel):
    """A key in a Secret in the job's namespace; only the reference is stored, never the value."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret."""
    key: str = Field(default="token", min_length=1, max_length=253)
    """Key inside the Secret whose value is used."""


class Head(ApiModel):
    """The new task head put on top of the pretrained backbone (randomly initialised)."""

    num_labels: int | None = Field(default=None, ge=1, le=100000)
    """Number of output classes for classification tasks; derived from the data set's labels
    when omitted. Not allowed with causal-lm."""
    hidden_layers: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=list, max_length=8
    )
    """Sizes of extra fully connected layers inserted between the backbone's features and the
    output layer, e.g. [512, 256]. Empty means a single linear layer. Not allowed with
    causal-lm."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout probability applied before each layer of the new head."""
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    """Activation between the extra hidden layers of the head."""


class ModelSpec(ApiModel):
    """The pretrained checkpoint to start from and the task to fine-tune it for. Immutable after
    creation."""

    cel_rules = (
        Rule(
            "!has(self.format) || self.format != 'state-dict' || has(self.architecture)",
            "architecture is required when format is state-dict (a bare state dict does not "
            "say which network it belongs to)",
            ".architecture",
            lambda m: m.format != CheckpointFormat.STATE_DICT or m.architecture is not None,
        ),
        Rule(
            "self.task != 'causal-lm' || !has(self.head) || !has(self.head.numLabels)",
            "head.numLabels is not allowed with task causal-lm (the LM head predicts tokens)",
            ".head.numLabels",
            lambda m: m.task != Task.CAUSAL_LM or m.head.num_labels is None,
        ),
        Rule(
            "self.task != 'causal-lm' || !has(self.head) || !has(self.head.hiddenLayers) "
            "|| size(self.head.hiddenLayers) == 0",
            "head.hiddenLayers is not allowed with task causal-lm (the pretrained LM head is kept)",
            ".head.hiddenLayers",
            lambda m: m.task != Task.CAUSAL_LM or not m.head.hidden_layers,
        ),
        Rule(
            "!has(self.revision) || self.checkpoint.startsWith('hf://')",
            "revision is only allowed with an hf:// checkpoint",
            ".revision",
            lambda m: m.revision is None or m.checkpoint.startswith("hf://"),
        ),
        Rule(
            "!has(self.tokenSecretRef) || self.checkpoint.startsWith('hf://')",
            "tokenSecretRef is only allowed with an hf:// checkpoint (it holds a Hub token)",
            ".tokenSecretRef",
            lambda m: m.token_secret_ref is None or m.checkpoint.startswith("hf://"),
        ),
        Rule(
            _cel_starts_with_any("self.checkpoint", (*LOCAL_URI_PREFIXES, "hf://")),
            "checkpoint must be an absolute path, file:///<path>, pkg://<python_package>/<path> "
            "or hf://<org>/<name> (pods have no working directory; `kubegraft run` resolves "
            "relative paths against the manifest)",
            ".checkpoint",
            lambda m: m.checkpoint.startswith((*LOCAL_URI_PREFIXES, "hf://")),
        ),
        Rule(
            "!has(self.format) || self.format != 'state-dict' "
            "|| self.task == 'image-classification'",
            "format state-dict is only for task image-classification (a CNN state dict); text "
            "tasks need a Hugging Face checkpoint (format huggingface or auto)",
            ".format",
            lambda m: (
                m.format != CheckpointFormat.STATE_DICT or m.task == Task.IMAGE_CLASSIFICATION
            ),
        ),
        Rule(
            "self.task != 'image-classification' || !has(self.format) "
            "|| self.format != 'huggingface'",
            "format huggingface is not supported with task image-classification: it needs a CNN "
            "state-dict checkpoint (format state-dict or auto, with an architecture)",
            ".format",
            lambda m: (
                m.task != Task.IMAGE_CLASSIFICATION or m.format != CheckpointFormat.HUGGINGFACE
            ),
        ),
        Rule(
            "self.task != 'image-classification' || !self.checkpoint.startsWith('hf://')",
            "an hf:// checkpoint is a Hugging Face repository, and task image-classification "
            "needs a CNN state-dict checkpoint (a path or pkg://)",
            ".checkpoint",
            lambda m: m.task != Task.IMAGE_CLASSIFICATION or not m.checkpoint.startswith("hf://"),
        ),
    )

    checkpoint: str = Field(min_length=1, max_length=2048)
    """Where the pretrained weights are: an absolute path on a mounted volume (a Hugging Face
    directory or a .pth/.safetensors state dict), `hf://<org>/<name>` for the Hugging Face Hub,
    or `pkg://<python_package>/<path>` for weights shipped inside an installed Python package
    (how offline images carry their checkpoints)."""
    task: Task
    """The task: sequence-classification, image-classification or causal-lm."""
    format: CheckpointFormat = CheckpointFormat.AUTO
    """How the checkpoint is stored: huggingface (config + weights + tokenizer), state-dict (a
    torch state dict for a known architecture), or auto to detect it."""
    architecture: str | None = Field(default=None, min_length=1, max_length=128)
    """The network definition for a state-dict checkpoint, when the checkpoint does not say it,
    e.g. efficientnet_lite0, resnet50, vgg16 (timm/torchvision names)."""
    revision: str | None = Field(default=None, min_length=1, max_length=255)
    """Hub revision (branch, tag or commit) for hf:// checkpoints."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret holding a Hugging Face Hub token, for gated or private checkpoints. Mounted into
    the pods as a read-only file (HF_TOKEN_PATH names it), never as an environment variable;
    the operator never reads it."""
    head: Head = Field(default_factory=Head)
    """The new head added on top of the backbone."""


# ------------------------------------------------------------------------------------- dataset


class DataFormat(StrEnum):
    """The on-disk format of a data set."""

    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"
    IMAGE_FOLDER = "image-folder"


class DataSource(ApiModel):
    """One data set location and its format."""

    cel_rules = (
        Rule(
            _cel_starts_with_any("self.uri", LOCAL_URI_PREFIXES),
            "uri must be an absolute path, file:///<path> or pkg://<python_package>/<path> "
            "(pods have no working directory; `kubegraft run` resolves relative paths against "
            "the manifest)",
            ".uri",
            lambda d: d.uri.startswith(LOCAL_URI_PREFIXES),
        ),
    )

    uri: str = Field(min_length=1, max_length=2048)
    """Path (on a mounted volume) or `pkg://<python_package>/<path>` of the data. jsonl and csv
    may be gzip-compressed (.gz). For image-folder, a directory with one sub-folder per class."""
    format: DataFormat | None = None
    """Format of the data; inferred from the file extension when omitted."""


class EvalSet(DataSource):
    """A named evaluation set, reported separately (e.g. in-domain and a shifted domain)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")
    """Name used in metric labels and in status, e.g. in-domain or shifted."""


class DatasetSpec(ApiModel):
    """The labelled data to fine-tune on. Immutable after creation."""

    cel_rules = (
        Rule(
            "!(has(self.includeLabels) && has(self.excludeLabels))",
            "set at most one of includeLabels and excludeLabels",
            ".excludeLabels",
            lambda d: d.include_labels is None or d.exclude_labels is None,
        ),
        Rule(
            "!(has(self.validation) && has(self.validationSplit))",
            "set at most one of validation and validationSplit (a split is carved out of train "
            "only when there is no validation set)",
            ".validationSplit",
            lambda d: d.validation is None or d.validation_split is None,
        ),
        Rule(
            "has(self.validation) || has(self.validationSplit) "
            "|| (has(self.evalSets) && size(self.evalSets) > 0)",
            "validation data is required: give validation, validationSplit or at least one "
            "evalSets entry",
            ".validation",
            lambda d: (
                d.validation is not None or d.validation_split is not None or bool(d.eval_sets)
            ),
        ),
        Rule(
            "!has(self.evalSets) "
            "|| self.evalSets.all(a, self.evalSets.exists_one(b, b.name == a.name))",
            "evalSets names must be unique",
            ".evalSets",
            lambda d: d.eval_sets is None or len({e.name for e in d.eval_sets}) == len(d.eval_sets),
        ),
    )

    train: DataSource
    """The training data."""
    validation: DataSource | None = None
    """A separate validation set. Without it, validationSplit carves one out of train (set one
    of the two, or evalSets)."""
    validation_split: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of train held out (stratified, seeded) for validation when no validation set is
    given."""
    eval_sets: list[EvalSet] | None = Field(default=None, max_length=16)
    """Extra named evaluation sets, each reported separately (distribution shift shows here)."""
    text_field: str = Field(default="text", min_length=1, max_length=256)
    """Field holding the input text (dotted path for nested fields, e.g. names.en)."""
    label_field: str = Field(default="label", min_length=1, max_length=256)
    """Field holding the class label (a name or an integer)."""
    image_field: str = Field(default="image", min_length=1, max_length=256)
    """Field holding an image path, for tabular image data sets."""
    include_labels: list[LabelStr] | None = Field(default=None, max_length=10000)
    """Keep only examples with these labels (e.g. digits 0-4 for pretraining). Not together
    with excludeLabels."""
    exclude_labels: list[LabelStr] | None = Field(default=None, max_length=10000)
    """Drop examples with these labels (e.g. catch-all classes)."""
    max_samples: int | None = Field(default=None, ge=1)
    """Use at most this many training examples (a seeded, stratified subset), for quick runs."""
    max_eval_samples: int | None = Field(default=None, ge=1)
    """Use at most this many examples of each evaluation set."""
    max_length: int = Field(default=128, ge=8, le=131072)
    """Token limit per text example (longer ones are truncated)."""
    image_size: int | None = Field(default=None, ge=8, le=4096)
    """Side of the square input images; defaults to the backbone's pretraining size."""


# -------------------------------------------------------------------------------------- freeze


class FreezePreset(StrEnum):
    """The starting point of a freezing policy."""

    FULL = "full"
    FEATURE_EXTRACTION = "feature-extraction"
    TOP_K = "top-k"
    BITFIT = "bitfit"
    LORA = "lora"
    IA3 = "ia3"


class ScheduleUnit(StrEnum):
    """What a gradual-unfreezing stage boundary counts."""

    EPOCH = "epoch"
    STEP = "step"


class UnfreezeStage(ApiModel):
    """From `at` on, the top `topK` blocks (plus the head) train."""

    at: int = Field(ge=0)
    """The epoch or optimizer step (see unit) at which this stage starts."""
    top_k: int | None = Field(default=None, ge=0, le=10000)
    """Number of top blocks trainable in this stage; omit for all blocks."""


def _strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in pairwise(values))


class GradualUnfreezing(ApiModel):
    """Unfreeze blocks from the top down as training goes (ULMFiT-style)."""

    cel_rules = (
        Rule(
            "self.stages.map(s, s.at).isSorted() "
            "&& self.stages.all(s, self.stages.exists_one(t, t.at == s.at))",
            "stages must be in strictly increasing order of at",
            ".stages",
            lambda g: _strictly_increasing([s.at for s in g.stages]),
        ),
    )

    unit: ScheduleUnit = ScheduleUnit.EPOCH
    """Whether stage boundaries count epochs or optimizer steps."""
    stages: list[UnfreezeStage] = Field(min_length=1, max_length=64)
    """Stages in strictly increasing order of `at`; the first usually starts at 0."""


class LoraSpec(ApiModel):
    """Low-rank adapters (PEFT LoRA) on the chosen modules; the base weights stay frozen."""

    r: int = Field(default=8, ge=1, le=1024)
    """Rank of the adapters."""
    alpha: int = Field(default=16, ge=1, le=4096)
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the adapters' input."""
    target_modules: list[ShortStr] | None = Field(default=None, max_length=64)
    """Module names (suffixes) that get adapters, e.g. [query, value]; defaults per architecture."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases train alongside the adapters."""
    use_dora: bool = False
    """DoRA (weight-decomposed LoRA, PEFT's use_dora): a trainable magnitude per output channel
    next to the low-rank direction update. Often closer to full fine-tuning at small ranks;
    each step costs more than plain LoRA. Works on linear and Conv2d targets."""


class Ia3Spec(ApiModel):
    """(IA)^3 (PEFT IA3): learned per-channel scaling vectors on the chosen modules; the base
    weights stay frozen. Far fewer trainable parameters than LoRA."""

    target_modules: list[ShortStr] | None = Field(default=None, max_length=64)
    """Module names (suffixes) whose activations get a learned scale, e.g. [key, value,
    output.dense]; defaults per architecture."""
    feedforward_modules: list[ShortStr] | None = Field(default=None, max_length=64)
    """The targets whose *input* is scaled (feed-forward down-projections) rather than their
    output; a subset of targetModules. Defaults per architecture (with targetModules omitted)
    or none."""


class DiscriminativeLr(ApiModel):
    """Discriminative learning rates per block group (fastai's `slice(low, high)`): the
    blocks are split into `groups` contiguous groups, bottom to top, whose learning rates are
    spread geometrically from learningRate * lowestFactor (the bottom group, with the
    embeddings/stem) up to learningRate (the head)."""

    groups: int = Field(default=3, ge=1, le=1024)
    """Number of block groups (fastai's body groups; the head is one more, at learningRate).
    With more groups than blocks some groups are empty."""
    lowest_factor: float = Field(gt=0.0, lt=1.0)
    """The bottom group's learning rate as a fraction of learningRate (fastai's low / high),
    e.g. 0.01 for slice(1e-5, 1e-3)."""


class FreezeSpec(ApiModel):
    """Which parameters train. One line for the common case (a preset); patterns, a schedule and
    layer-wise learning-rate decay for the rare one. Immutable after creation."""

    cel_rules = (
        Rule(
            "self.preset == 'top-k' ? has(self.topK) : !has(self.topK)",
            "topK is required with preset top-k and only allowed with it",
            ".topK",
            lambda f: (f.preset == FreezePreset.TOP_K) == (f.top_k is not None),
        ),
        Rule(
            "!has(self.lora) || self.preset == 'lora'",
            "lora options are only allowed with preset lora",
            ".lora",
            lambda f: f.lora is None or f.preset == FreezePreset.LORA,
        ),
        Rule(
            "!has(self.ia3) || self.preset == 'ia3'",
            "ia3 options are only allowed with preset ia3",
            ".ia3",
            lambda f: f.ia3 is None or f.preset == FreezePreset.IA3,
        ),
        Rule(
            "!has(self.layerwiseLrDecay) || !has(self.discriminativeLr)",
            "set at most one of layerwiseLrDecay and discriminativeLr (both set per-block "
            "learning rates)",
            ".discriminativeLr",
            lambda f: f.layerwise_lr_decay is None or f.discriminative_lr is None,
        ),
        Rule(
            "!has(self.gradualUnfreezing) || self.preset in ['feature-extraction', 'top-k']",
            "gradualUnfreezing starts from a frozen backbone: use it with preset "
            "feature-extraction or top-k",
            ".gradualUnfreezing",
            lambda f: (
                f.gradual_unfreezing is None
                or f.preset in (FreezePreset.FEATURE_EXTRACTION, FreezePreset.TOP_K)
            ),
        ),
        Rule(
            "!has(self.layerwiseLrDecay) || self.preset != 'feature-extraction' "
            "|| has(self.gradualUnfreezing)",
            "layerwiseLrDecay has no effect with preset feature-extraction (only the head "
            "trains) unless gradualUnfreezing unfreezes blocks",
            ".layerwiseLrDecay",
            lambda f: (
                f.layerwise_lr_decay is None
                or f.preset != FreezePreset.FEATURE_EXTRACTION
                or f.gradual_unfreezing is not None
            ),
        ),
    )

    preset: FreezePreset = FreezePreset.FULL
    """full: everything trains. feature-extraction: only the new head trains. top-k: the top
    topK blocks and the head train. bitfit: only biases (and the head) train. lora: low-rank
    adapters (and the head) train, the base weights stay frozen. ia3: learned per-channel
    scaling vectors (and the head) train, the base weights stay frozen."""
    top_k: int | None = Field(default=None, ge=1, le=10000)
    """Number of top blocks that train, with preset top-k."""
    freeze_patterns: list[PatternStr] = Field(default_factory=list, max_length=256)
    """Extra module-name patterns (fnmatch globs on dotted parameter names, e.g.
    `*.attention.*`) to freeze after the preset is applied."""
    train_patterns: list[PatternStr] = Field(default_factory=list, max_length=256)
    """Module-name patterns that train whatever the preset says (applied last, so they win)."""
    freeze_embeddings: bool | None = None
    """Freeze the token/position embeddings (or a CNN's stem). Omit to follow the preset."""
    freeze_batch_norm_stats: bool = True
    """Keep batch-norm running statistics fixed in frozen blocks (their layers stay in eval
    mode), so a frozen backbone is really unchanged."""
    gradual_unfreezing: GradualUnfreezing | None = None
    """A schedule that unfreezes more blocks as training goes. Stage state is checkpointed."""
    layerwise_lr_decay: float | None = Field(default=None, gt=0.0, le=1.0)
    """Layer-wise learning-rate decay: block i from the top gets lr * decay^i (the head gets
    lr). 1.0 or omitted means one learning rate."""
    discriminative_lr: DiscriminativeLr | None = None
    """Discriminative learning rates per block group (fastai's slice), instead of
    layerwiseLrDecay: one rate per group of blocks rather than per block."""
    lora: LoraSpec | None = None
    """LoRA options, with preset lora."""
    ia3: Ia3Spec | None = None
    """(IA)^3 options, with preset ia3."""


# ------------------------------------------------------------------------------------ training


class Precision(StrEnum):
    """Numeric precision of training."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class SchedulerKind(StrEnum):
    """Learning-rate schedule after warmup."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class EarlyStopping(ApiModel):
    """Stop when the watched evaluation metric stops improving."""

    metric: str = Field(default="f1", pattern=r"^(loss|accuracy|precision|recall|f1)$")
    """Metric on the validation set: loss, accuracy, precision, recall or f1 (macro)."""
    patience: int = Field(default=3, ge=1, le=1000)
    """Number of evaluations without improvement before stopping."""
    min_delta: float = Field(default=0.0, ge=0.0)
    """Smallest change that counts as an improvement."""


class TrainingSpec(ApiModel):
    """Optimisation settings. Immutable after creation."""

    cel_rules = (
        Rule(
            "has(self.epochs) != has(self.maxSteps)",
            "set exactly one of epochs and maxSteps",
            ".epochs",
            lambda t: (t.epochs is None) != (t.max_steps is None),
        ),
        Rule(
            "!(has(self.warmupSteps) && has(self.warmupRatio))",
            "set at most one of warmupSteps and warmupRatio",
            ".warmupRatio",
            lambda t: t.warmup_steps is None or t.warmup_ratio is None,
        ),
        Rule(
            "!has(self.warmupSteps) || !has(self.maxSteps) || self.warmupSteps < self.maxSteps",
            "warmupSteps must be less than maxSteps",
            ".warmupSteps",
            lambda t: t.warmup_steps is None or t.max_steps is None or t.warmup_steps < t.max_steps,
        ),
    )

    epochs: int | None = Field(default=None, ge=1, le=10000)
    """Number of passes over the training data (or set maxSteps)."""
    max_steps: int | None = Field(default=None, ge=1, le=100_000_000)
    """Number of optimizer steps (or set epochs)."""
    per_device_batch_size: int = Field(default=16, ge=1, le=65536)
    """Examples per process per micro-batch."""
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096)
    """Micro-batches accumulated per optimizer step: the optimizer and the learning-rate
    schedule step once per this many micro-batches (DDP and DeepSpeed alike), so a step trains
    on perDeviceBatchSize x this x processes examples. An epoch shorter than this many
    micro-batches per process is one smaller step (DDP only)."""
    learning_rate: float = Field(default=5e-5, gt=0.0, le=10.0)
    """Peak learning rate (of the head, with layerwiseLrDecay or discriminativeLr)."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """AdamW weight decay (not applied to biases and norms)."""
    scheduler: SchedulerKind = SchedulerKind.LINEAR
    """Learning-rate schedule after warmup."""
    warmup_steps: int | None = Field(default=None, ge=0)
    """Linear warmup length in optimizer steps."""
    warmup_ratio: float | None = Field(default=None, ge=0.0, lt=1.0)
    """Linear warmup length as a fraction of all steps."""
    precision: Precision = Precision.FP32
    """fp32, bf16 or fp16 (mixed precision; fp16 uses loss scaling)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    max_grad_norm: float | None = Field(default=1.0, gt=0.0)
    """Clip gradients to this global norm; 1.0 when omitted."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Seed for data order, head initialisation and dropout."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Evaluate every N optimizer steps; omitted means at the end of each epoch."""
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    """Checkpoint every N optimizer steps; omitted means at the end of each epoch."""
    early_stopping: EarlyStopping | None = None
    """Stop early when the validation metric stops improving."""
    metric_for_best: str = Field(default="f1", pattern=r"^(loss|accuracy|precision|recall|f1)$")
    """Validation metric that picks the best checkpoint (loss is minimised, the others
    maximised)."""
    cache_frozen_features: bool = True
    """Compute the frozen part of the model once and reuse it across epochs: the backbone's
    features when only the head trains, the hidden states below the lowest trainable block
    when only the top blocks train (top-k, early gradual-unfreezing stages; the frozen blocks
    then run without dropout). Same results, far faster; the log says when it cannot apply."""
    cache_memory_limit_mib: int = Field(default=2048, ge=0, le=1048576)
    """Largest frozen cache kept in memory per process (MiB); a larger one is memory-mapped
    from files under output.path/cache when the disk has room, else it is not used."""
    num_workers: int = Field(default=0, ge=0, le=64)
    """Data-loader worker processes per training process."""
    log_every_steps: int = Field(default=10, ge=1)
    """Log (and report progress) every N optimizer steps."""


# --------------------------------------------------------------------------------- distributed


class Strategy(StrEnum):
    """How the model is spread over processes. (FSDP is not offered: Accelerate applies its FSDP
    plugin on GPUs only and falls back to DDP on CPU, so it cannot be tested here yet.)"""

    DDP = "ddp"
    DEEPSPEED = "deepspeed"


class DeepSpeedSpec(ApiModel):
    """DeepSpeed ZeRO options."""

    cel_rules = (
        Rule(
            "!self.offloadParams || self.zeroStage == 3",
            "offloadParams needs zeroStage 3 (only stage 3 partitions the parameters)",
            ".offloadParams",
            lambda d: not d.offload_params or d.zero_stage == 3,
        ),
        Rule(
            "!self.offloadOptimizer || self.zeroStage >= 1",
            "offloadOptimizer needs zeroStage 1, 2 or 3 (stage 0 keeps no partitioned "
            "optimizer state)",
            ".offloadOptimizer",
            lambda d: not d.offload_optimizer or d.zero_stage >= 1,
        ),
    )

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """Keep optimizer state in CPU memory."""
    offload_params: bool = False
    """Keep parameters in CPU memory (stage 3 only)."""


class DistributedSpec(ApiModel):
    """The size and shape of the run: nodes x processes (GPUs) per node. Immutable after
    creation."""

    cel_rules = (
        Rule(
            "!has(self.deepspeed) || self.strategy == 'deepspeed'",
            "deepspeed options are only allowed with strategy deepspeed",
            ".deepspeed",
            lambda d: d.deepspeed is None or d.strategy == Strategy.DEEPSPEED,
        ),
        Rule(
            "!has(self.gpusPerNode) || self.gpusPerNode == 0 "
            "|| self.gpusPerNode >= self.procsPerNode",
            "gpusPerNode must be 0 (a CPU run) or at least procsPerNode (one GPU per process)",
            ".gpusPerNode",
            lambda d: (
                d.gpus_per_node is None
                or d.gpus_per_node == 0
                or d.gpus_per_node >= d.procs_per_node
            ),
        ),
        Rule(
            "self.backend != 'nccl' || !has(self.gpusPerNode) || self.gpusPerNode > 0",
            "backend nccl needs GPUs: use gloo or auto when gpusPerNode is 0",
            ".backend",
            lambda d: d.backend != "nccl" or d.gpus_per_node is None or d.gpus_per_node > 0,
        ),
    )

    nodes: int = Field(default=1, ge=1, le=512)
    """Number of nodes (one pod each)."""
    procs_per_node: int = Field(default=1, ge=1, le=64)
    """Training processes per node; on GPU nodes, the GPUs per pod."""
    gpus_per_node: int | None = Field(default=None, ge=0, le=64)
    """nvidia.com/gpu requested per pod; defaults to procsPerNode (0 for a CPU-only run)."""
    strategy: Strategy = Strategy.DDP
    """ddp (every process holds the whole model) or deepspeed (ZeRO shards optimizer state,
    gradients and, at stage 3, parameters)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto picks nccl on GPUs and gloo on CPUs."""
    deepspeed: DeepSpeedSpec | None = None
    """DeepSpeed options, with strategy deepspeed."""
    master_port: int = Field(default=29500, ge=1024, le=65535)
    """Rendezvous port on the rank-0 pod."""
    threads_per_process: int | None = Field(default=None, ge=1, le=256)
    """Intra-op CPU threads of each training process (OMP_NUM_THREADS, torch's
    set_num_threads). Omitted: each process's share of the CPUs it has, floor(CPUs /
    procsPerNode), where CPUs is the pod's CPU limit (resources.limits.cpu) if set, else the
    container's cgroup CPU quota, else the cores the process may run on."""


# ------------------------------------------------------------------------------------------ pod


class PodSpecOverrides(ApiModel):
    """Settings passed to every worker pod."""

    cel_rules = (
        Rule(
            "!has(self.volumes) || self.volumes.all(v, !has(v.hostPath))",
            "volumes must not be hostPath volumes: a FineTuneJob is no way around the cluster's "
            "pod-creation rules; reach node storage through a PersistentVolume and "
            "output.persistentVolumeClaim or a volume of type persistentVolumeClaim",
            ".volumes",
            lambda p: all("hostPath" not in v for v in p.volumes),
        ),
    )

    image: str = Field(
        default="ghcr.io/kubegraft/trainer:0.1.0",
        min_length=1,
        max_length=1024,
        json_schema_extra=NO_SERVER_DEFAULT,
    )
    """Container image with the kubegraft trainer; omitted means the operator's default."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Image pull policy."""
    image_pull_secrets: list[ShortStr] = Field(default_factory=list, max_length=16)
    """Names of Secrets for pulling the image."""
    resources: KubeObject | None = None
    """Container resources (requests/limits) besides nvidia.com/gpu, which the operator sets
    from distributed.gpusPerNode."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: list[KubeObject] = Field(default_factory=list, max_length=64)
    """Tolerations (core/v1 Toleration objects)."""
    affinity: KubeObject | None = None
    """Affinity (core/v1 Affinity)."""
    priority_class_name: str | None = Field(default=None, max_length=253)
    """PriorityClass of the pods."""
    scheduler_name: str | None = Field(default=None, max_length=253)
    """Scheduler for the pods (e.g. volcano, or a gang scheduler)."""
    service_account_name: str | None = Field(default=None, max_length=253)
    """ServiceAccount the pods run as."""
    volumes: list[Volume] = Field(default_factory=list, max_length=64)
    """Extra volumes (core/v1 Volume); hostPath volumes are refused (use a PersistentVolume)."""
    volume_mounts: list[KubeObject] = Field(default_factory=list, max_length=64)
    """Extra volume mounts in the trainer container (core/v1 VolumeMount)."""
    env: list[KubeObject] = Field(default_factory=list, max_length=256)
    """Extra environment variables (core/v1 EnvVar); secrets only by valueFrom reference."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels added to the pods (e.g. kueue.x-k8s.io/queue-name)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations added to the pods."""
    shm_size: str = Field(default="2Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)?$")
    """Size of the memory-backed /dev/shm (data loaders and NCCL need more than the default)."""


# --------------------------------------------------------------------------------------- output


class OutputSpec(ApiModel):
    """Where checkpoints, the final model and metrics go. On a cluster, a PersistentVolumeClaim
    (persistentVolumeClaim) unless the job says it may lose them (ephemeral)."""

    cel_rules = (
        Rule(
            "!has(self.persistentVolumeClaim) || !has(self.ephemeral) || !self.ephemeral",
            "set at most one of persistentVolumeClaim and ephemeral: true (ephemeral means an "
            "emptyDir instead of a claim)",
            ".ephemeral",
            lambda o: o.persistent_volume_claim is None or not o.ephemeral,
        ),
    )

    path: str = Field(default="/output", min_length=1, max_length=4096, pattern=r"^/.*")
    """Directory, shared by all nodes, for checkpoints/, model/ and metrics.json. Locally, a
    path relative to the manifest is allowed with `kubegraft run`."""
    persistent_volume_claim: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
    )
    """PersistentVolumeClaim (in the job's namespace) mounted at path in every pod, where
    checkpoints, the final model and metrics.json survive the pods. Required when the job may
    be retried (runPolicy.backoffLimit > 0, the default), spans several nodes or checkpoints
    at an interval (training.checkpointEverySteps), unless ephemeral is true: a gang restart
    gets new pods with empty volumes and would start again from step 0. With nodes > 1 the
    claim must be ReadWriteMany (every node writes its part of each checkpoint); the operator
    checks that, and that the claim exists, before it creates pods. `kubegraft run` does not
    mount it: it writes to a local directory, which is durable."""
    ephemeral: bool = False
    """Accept an emptyDir for the output: checkpoints, the model and metrics.json die with the
    pods, and a gang restart starts again from step 0. For tests and throwaway runs only.
    `kubegraft run` writes to its local directory either way."""
    keep_checkpoints: int = Field(default=2, ge=1, le=1000)
    """How many recent checkpoints to keep (the best one is kept in addition)."""
    save_final_model: bool = True
    """Export the final model (Hugging Face format, or a state dict for CNNs)."""


# ----------------------------------------------------------------------------------- runPolicy


class RunPolicy(ApiModel):
    """Lifecycle settings; these may change while the job runs."""

    suspend: bool = False
    """Suspend the job: its pods are deleted, status and checkpoints are kept; resuming
    restarts from the latest checkpoint. Kueue admits jobs by flipping this."""
    backoff_limit: int = Field(default=3, ge=0, le=1000)
    """Number of whole-gang restarts after retryable failures (a worker's error, an OOM kill,
    a stall) before the job fails. Disruptions do not count here: see maxDisruptions."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job when it has been active longer than this: seconds since the first gang
    started running, not counting time suspended. A resume continues the clock where the
    suspension stopped it (the time accumulates, it does not start again), so a job that a
    queue suspends and resumes never fails on resume for time it spent waiting, and gets no
    more than this in all (status.suspendedSeconds is the time left out)."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job this long after it succeeded or failed."""
    startup_timeout_seconds: int = Field(default=600, ge=1)
    """Fail the job when its pods cannot all start (unschedulable, image pull errors) within
    this."""
    stall_timeout_seconds: int = Field(default=1800, ge=10)
    """Restart the gang as stalled when rank 0's heartbeats stop, or when it is training and the
    step does not advance. Heartbeats come every progressIntervalSeconds in every phase, so a
    long model download, feature cache, evaluation or save is not a stall; the gang is stalled
    when no heartbeat came for max(stallTimeoutSeconds, 3 x progressIntervalSeconds), or when
    the phase is training and the step has not moved for max(stallTimeoutSeconds, 2 x
    progressIntervalSeconds) (the step is reported with each heartbeat). Both clocks start no
    earlier than the gang's Running time."""
    restart_backoff_seconds: int = Field(default=10, ge=0, le=3600)
    """Base delay before a gang restart; doubles with each restart."""
    max_disruptions: int = Field(default=10, ge=0, le=10000)
    """Gang restarts after disruptions (preemption with exit 75, eviction, a lost node, a pod
    deleted from under the job) before the job fails. Disruptions do not count against
    backoffLimit, as a Kubernetes Job's pod failure policy ignores them."""
    termination_grace_period_seconds: int = Field(default=120, ge=10, le=86400)
    """Grace period of the worker pods: on SIGTERM (preemption, drain, a gang restart) the
    trainer saves a checkpoint within it; torchrun's shutdown timeout leaves the trainer all
    of it but a safety margin."""
    progress_interval_seconds: int = Field(default=30, ge=1, le=3600)
    """Rank 0 reports a heartbeat (phase, step, time) at least this often, in every phase
    (loading, feature caching, evaluating, saving), from a background thread; reports are
    sent at most once a second. The operator declares a stall when the heartbeats stop (see
    stallTimeoutSeconds)."""


# ------------------------------------------------------------------------------------------ spec


IMMUTABLE_SPEC_FIELDS = ("model", "dataset", "freeze", "training", "distributed", "output")
"""Spec fields (wire names) that may not change after creation; runPolicy and pod may."""


def _immutable(field: str) -> Rule:
    """A transition rule keeping ``spec.<field>`` as created (present or absent, and equal)."""
    return Rule(
        f"has(self.{field}) == has(oldSelf.{field}) "
        f"&& (!has(self.{field}) || self.{field} == oldSelf.{field})",
        f"{field} is immutable after creation (only runPolicy and pod may change; delete and "
        "recreate the job to change it)",
        f".{field}",
    )


def _text_task_data_ok(spec: FineTuneJobSpec) -> bool:
    if spec.model.task == Task.IMAGE_CLASSIFICATION:
        return True
    return spec.dataset.train.format != DataFormat.IMAGE_FOLDER


def _unfreezing_strategy_ok(spec: FineTuneJobSpec) -> bool:
    return spec.freeze.gradual_unfreezing is None or spec.distributed.strategy != Strategy.DEEPSPEED


def _fp16_devices_ok(spec: FineTuneJobSpec) -> bool:
    d = spec.distributed
    if spec.training.precision != Precision.FP16:
        return True
    return d.gpus_per_node != 0 and d.backend != "gloo"


def _text_task_validation_ok(spec: FineTuneJobSpec) -> bool:
    if spec.model.task == Task.IMAGE_CLASSIFICATION or spec.dataset.validation is None:
        return True
    return spec.dataset.validation.format != DataFormat.IMAGE_FOLDER


def needs_durable_output(spec: FineTuneJobSpec) -> bool:
    """Whether the job relies on its output surviving its pods: it may be retried
    (backoffLimit > 0), spans several nodes (a lost node restarts the gang) or checkpoints at
    an interval (checkpoints are only worth something if a restart can find them)."""
    return (
        spec.run_policy.backoff_limit > 0
        or spec.distributed.nodes > 1
        or spec.training.checkpoint_every_steps is not None
    )


def _output_durable_ok(spec: FineTuneJobSpec) -> bool:
    out = spec.output
    durable_or_waived = out.persistent_volume_claim is not None or out.ephemeral
    return durable_or_waived or not needs_durable_output(spec)


OUTPUT_DURABILITY_MESSAGE = (
    "output.persistentVolumeClaim is required when the job may restart "
    "(runPolicy.backoffLimit > 0, the default is 3), spans several nodes "
    "(distributed.nodes > 1, then ReadWriteMany) or checkpoints at an interval "
    "(training.checkpointEverySteps): without a claim the output is an emptyDir, so a gang "
    "restart gets new pods with empty volumes and starts again from step 0, and the final "
    "model and metrics.json die with the pods. Give a PersistentVolumeClaim, or set "
    "output.ephemeral: true to accept losing them"
)


class FineTuneJobSpec(ApiModel):
    """Desired state: take this pretrained checkpoint, freeze these layers, fine-tune on this
    data, on N nodes x G processes. model, dataset, freeze, training, distributed and output
    are immutable after creation; runPolicy and pod may change."""

    cel_rules = (
        Rule(
            "self.model.task == 'image-classification' || !has(self.dataset.train.format) "
            "|| self.dataset.train.format != 'image-folder'",
            "dataset.train.format image-folder is only allowed with task image-classification",
            ".dataset.train.format",
            _text_task_data_ok,
        ),
        Rule(
            "self.model.task == 'image-classification' || !has(self.dataset.validation) "
            "|| !has(self.dataset.validation.format) "
            "|| self.dataset.validation.format != 'image-folder'",
            "dataset.validation.format image-folder is only allowed with task image-classification",
            ".dataset.validation.format",
            _text_task_validation_ok,
        ),
        Rule(
            "(has(self.output) && (has(self.output.persistentVolumeClaim) "
            "|| (has(self.output.ephemeral) && self.output.ephemeral))) "
            "|| ((has(self.runPolicy) && has(self.runPolicy.backoffLimit) "
            "&& self.runPolicy.backoffLimit == 0) "
            "&& (!has(self.distributed) || !has(self.distributed.nodes) "
            "|| self.distributed.nodes == 1) "
            "&& (!has(self.training) || !has(self.training.checkpointEverySteps)))",
            OUTPUT_DURABILITY_MESSAGE,
            ".output.persistentVolumeClaim",
            _output_durable_ok,
        ),
        Rule(
            "!has(self.freeze) || !has(self.freeze.gradualUnfreezing) || !has(self.distributed) "
            "|| !has(self.distributed.strategy) || self.distributed.strategy != 'deepspeed'",
            "freeze.gradualUnfreezing is not supported with distributed.strategy deepspeed (ZeRO "
            "partitions the trainable parameters once, at start); use strategy ddp",
            ".freeze.gradualUnfreezing",
            _unfreezing_strategy_ok,
        ),
        Rule(
            "!has(self.training) || !has(self.training.precision) "
            "|| self.training.precision != 'fp16' || !has(self.distributed) "
            "|| ((!has(self.distributed.gpusPerNode) || self.distributed.gpusPerNode > 0) "
            "&& (!has(self.distributed.backend) || self.distributed.backend != 'gloo'))",
            "training.precision fp16 needs GPUs (loss-scaled mixed precision runs on CUDA only), "
            "so not with distributed.gpusPerNode 0 or backend gloo; use bf16 or fp32 on CPU",
            ".training.precision",
            _fp16_devices_ok,
        ),
        *(_immutable(f) for f in IMMUTABLE_SPEC_FIELDS),
    )

    model: ModelSpec
    """The pretrained checkpoint, the task and the new head. Immutable after creation."""
    dataset: DatasetSpec
    """The labelled data. Immutable after creation."""
    freeze: FreezeSpec = Field(default_factory=FreezeSpec)
    """Which parameters train (the layer-freezing policy). Immutable after creation."""
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec(epochs=1))
    """Optimisation settings (one epoch when omitted). Immutable after creation."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """Nodes, processes per node and the parallel strategy. Immutable after creation."""
    pod: PodSpecOverrides = Field(default_factory=PodSpecOverrides)
    """Settings passed to every worker pod. Mutable (e.g. by a queueing system that injects
    node selectors when it admits a suspended job); changes apply to the next gang."""
    output: OutputSpec = Field(default_factory=OutputSpec)
    """Where checkpoints, the final model and metrics go. Immutable after creation."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Suspend, restarts, deadlines and timeouts. Mutable while the job runs."""


# ---------------------------------------------------------------------------------------- status


class JobState(StrEnum):
    """The one-word state shown by `kubectl get ftj`."""

    PENDING = "Pending"
    QUEUED = "Queued"
    """Waiting in a Kueue queue (the job's metadata label kueue.x-k8s.io/queue-name): no pods
    until Kueue admits its Workload, and again after Kueue evicted or preempted it."""
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(ApiModel):
    """A condition per the Kubernetes API conventions."""

    type: str = Field(max_length=316)
    """Type of condition in CamelCase: Created, Admitted (by Kueue), Running, Suspended,
    Restarting, Succeeded, Failed."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""
    reason: str = Field(max_length=1024)
    """CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """Human-readable details."""
    last_transition_time: str = Field(json_schema_extra=DATE_TIME)
    """When the status last changed (RFC 3339)."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The spec generation this condition was set for."""


class Progress(ApiModel):
    """How far training has got (reported by rank 0)."""

    step: int = Field(default=0, ge=0)
    """Optimizer steps done."""
    total_steps: int | None = Field(default=None, ge=0)
    """Optimizer steps in the whole run."""
    percent: int | None = Field(default=None, ge=0, le=100)
    """step / totalSteps, in percent."""
    epoch: float | None = None
    """Fractional epoch."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds to completion at the current throughput."""
    eta: str | None = None
    """The ETA in words, e.g. 12m30s."""
    samples_per_second: float | None = None
    """Training throughput over all processes."""
    display: str | None = None
    """The progress for printer columns, e.g. 45%."""
    updated_at: str | None = None
    """When the operator saw the step change (RFC 3339, the operator's clock); the stall rule
    for the training phase counts from here."""
    phase: str | None = None
    """rank 0's phase: loading, caching, training, evaluating, saving or done."""
    reported_at: str | None = None
    """The time stamp of rank 0's latest report (RFC 3339, rank 0's clock)."""
    heartbeat_at: str | None = None
    """When the operator last saw a new report from rank 0 (RFC 3339, the operator's clock, so
    clock skew between nodes cannot fake or hide a stall); the heartbeat stall rule counts
    from here."""


class Metrics(ApiModel):
    """Latest training and validation metrics."""

    train_loss: float | None = None
    """Training loss (mean over the last logging window)."""
    eval_loss: float | None = None
    """Validation loss."""
    accuracy: float | None = None
    """Validation accuracy."""
    precision: float | None = None
    """Validation precision (macro)."""
    recall: float | None = None
    """Validation recall (macro)."""
    f1: float | None = None
    """Validation F1 (macro)."""
    eval_sets: dict[str, dict[str, float]] | None = None
    """Metrics per named evaluation set."""
    display: str | None = None
    """The main metric for printer columns, e.g. f1=0.812."""


class Parameters(ApiModel):
    """Trainable versus total parameters under the freezing policy."""

    trainable: int = Field(ge=0)
    """Parameters that receive gradients now."""
    total: int = Field(ge=0)
    """All parameters of the model."""
    trainable_percent: float | None = None
    """trainable / total, in percent."""


class CheckpointStatus(ApiModel):
    """The checkpoints a restart resumes from."""

    latest: str | None = None
    """Path of the latest complete checkpoint."""
    latest_step: int | None = None
    """Step of the latest checkpoint."""
    best: str | None = None
    """Path of the best checkpoint by training.metricForBest."""
    best_metric: float | None = None
    """Value of metricForBest at the best checkpoint."""


class FineTuneJobStatus(ApiModel):
    """Observed state, written by the operator. Infrastructure (pods, restarts) and training
    (progress, metrics) are kept apart."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    observed_generation: int | None = None
    """The spec generation the operator last acted on."""
    state: JobState | None = None
    """One-word state: Pending, Queued, Running, Restarting, Suspended, Succeeded or Failed."""
    reason: str | None = None
    """CamelCase reason for the state."""
    message: str | None = None
    """Details of the state."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions keyed by type (at most one per type)."""
    start_time: str | None = Field(default=None, json_schema_extra=DATE_TIME)
    """When the first gang started running (RFC 3339)."""
    completion_time: str | None = Field(default=None, json_schema_extra=DATE_TIME)
    """When the job succeeded or failed (RFC 3339)."""
    restarts: int = 0
    """Whole-gang restarts after failures so far (counted against runPolicy.backoffLimit)."""
    disruptions: int = 0
    """Whole-gang restarts after disruptions so far: preemption (exit 75), eviction, a lost
    node, a pod deleted from under the job (counted against runPolicy.maxDisruptions)."""
    suspended_seconds: int = 0
    """Seconds the job spent suspended, or queued by Kueue, after it first started;
    activeDeadlineSeconds does not count them."""
    attempt: int = 0
    """Current gang attempt (pods carry it as a label)."""
    nodes: int | None = None
    """Nodes in the gang."""
    ready_nodes: int | None = None
    """Pods running and ready."""
    nodes_ready: str | None = None
    """Ready over desired nodes for printer columns, e.g. 2/2."""
    active: int | None = None
    """Worker pods not yet finished (pending, running or being deleted), of any attempt. A
    finished job with none left needs no operator attention (unless its TTL is still to come):
    the operator then stops watching over it and drops its finalizer."""
    progress: Progress | None = None
    """Training progress."""
    metrics: Metrics | None = None
    """Latest metrics."""
    parameters: Parameters | None = None
    """Trainable and total parameters."""
    checkpoints: CheckpointStatus | None = None
    """Latest and best checkpoints."""
    last_restart_reason: str | None = None
    """Reason of the latest gang restart."""


class ObjectMeta(BaseModel):
    """The parts of metadata the trainer and the CLI use; the rest passes through."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="job", min_length=1, max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN)
    """The job's name: a DNS-1035 label of at most 48 characters (see MAX_NAME_LENGTH)."""
    namespace: str | None = None
    """The job's namespace."""


class FineTuneJob(BaseModel):
    """A FineTuneJob: fine-tune a pretrained checkpoint on labelled data, on N nodes x G
    processes."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kubegraft.io/v1alpha1"] = Field(
        default="kubegraft.io/v1alpha1", alias="apiVersion"
    )
    """Always kubegraft.io/v1alpha1 (API_VERSION)."""
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    """Always FineTuneJob (KIND)."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
