"""The FineTuneJob CustomResourceDefinition, generated from the typed API model.

:func:`generate_crd` is pure: it turns the pydantic JSON schema of
:mod:`kubegraft.api.v1alpha1` (draft 2020-12, with ``$ref``s, ``anyOf [X, null]`` and titles)
into the structural OpenAPI v3 schema that ``apiextensions.k8s.io/v1`` demands: every node
typed, ``$ref``s inlined, optionals plain (unset optionals are omitted, so no ``nullable``),
numeric bounds in the OpenAPI 3.0 spelling, the models' CEL rules as
``x-kubernetes-validations``, and field docstrings as descriptions (what ``kubectl explain``
prints). ``kubegraft crd`` writes it; ``manifests/crd/`` holds its output, and a unit test
fails when the two drift apart.

Defaults: scalar defaults go into the CRD, so the API server stores them and CEL rules can read
them; object fields whose default is their model's default get ``{}`` (or the fields their
factory sets) so nested defaults apply too. List defaults are left out (absent means empty),
status gets none (the operator writes it), and fields marked ``NO_SERVER_DEFAULT`` get none.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from kubegraft.api import v1alpha1 as api

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
CRD_FILE = f"manifests/crd/{api.GROUP}_{api.PLURAL}.yaml"
"""Path of the checked-in CRD, relative to the repository root."""
REGENERATE_COMMAND = f"kubegraft crd --out {CRD_FILE}"
"""The command that rewrites the checked-in CRD from the model."""

_NO_DEFAULT_KEY = next(iter(api.NO_SERVER_DEFAULT))
_DROPPED_KEYS = frozenset({"title", "$schema", "examples", "deprecated", "readOnly", "writeOnly"})


class _CrdJsonSchema(GenerateJsonSchema):
    """Pydantic's schema generator, also showing defaults made by a model factory.

    ``Field(default_factory=FreezeSpec)`` becomes ``default: {}`` and
    ``lambda: TrainingSpec(epochs=1)`` becomes ``default: {epochs: 1}`` (what the factory set
    explicitly; the nested defaults are filled in later, see ``_with_nested_defaults``). Other
    factories (lists, dicts) give no default.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                return value.model_dump(by_alias=True, exclude_unset=True, mode="json")
            return NoDefault
        return super().get_default_value(schema)


def _describe(text: str) -> str:
    """A docstring as one description: lines joined, paragraphs kept (kubectl wraps text)."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _structural(node: dict[str, Any], defs: dict[str, Any], *, defaults: bool) -> dict[str, Any]:
    """One JSON-schema node converted to a structural OpenAPI v3 node (recursively)."""
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        target = _structural(defs[name], defs, defaults=defaults)
        # The field's own keys (its description, its default) win over the model's.
        node = {**target, **{k: v for k, v in node.items() if v is not None}}
        if "description" not in node and "description" in target:
            node["description"] = target["description"]
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in the API model: {options}")
        inner = _structural(options[0], defs, defaults=defaults)
        node = {**inner, **node}
        # An optional field with a non-null default ("clip at 1.0 unless null") cannot keep
        # that meaning on the server, which prunes nulls and would then default the field:
        # leave such a default to the model.
        if node.get("default") is not None:
            node[_NO_DEFAULT_KEY] = True

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == _NO_DEFAULT_KEY:
            continue
        if key == "default":
            if (
                value is None
                or not defaults
                or node.get(_NO_DEFAULT_KEY)
                or isinstance(value, list)
            ):
                continue
            out["default"] = value
        elif key == "description":
            out["description"] = _describe(value)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020-12 says "exclusiveMinimum: 0"; OpenAPI 3.0 says
            # "minimum: 0, exclusiveMinimum: true".
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "properties":
            out["properties"] = {
                name: _structural(prop, defs, defaults=defaults) for name, prop in value.items()
            }
        elif key == "items":
            out["items"] = _structural(value, defs, defaults=defaults)
        elif key == "additionalProperties":
            # false: unknown fields are pruned by the server (and rejected by kubectl's strict
            # field validation); true: a free-form object, kept by preserve-unknown-fields.
            if isinstance(value, dict):
                out["additionalProperties"] = _structural(value, defs, defaults=defaults)
        else:
            out[key] = copy.deepcopy(value)
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise ValueError(f"schema node without a type: {node}")
    if isinstance(out.get("default"), dict) and "properties" in out:
        # The API server checks a default against the CEL rules as written, without applying
        # the nested defaults first: spell them out, as the server would store them.
        out["default"] = _with_nested_defaults(out["default"], out)
    return _ordered(out)


def _with_nested_defaults(value: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``value`` with the defaults of ``schema``'s properties filled in (as the server does)."""
    filled = copy.deepcopy(value)
    for name, prop in schema.get("properties", {}).items():
        if name not in filled and "default" in prop:
            filled[name] = copy.deepcopy(prop["default"])
        elif isinstance(filled.get(name), dict) and "properties" in prop:
            filled[name] = _with_nested_defaults(filled[name], prop)
    return filled


_KEY_ORDER = ("type", "description", "default", "enum", "format")
_KEY_LAST = ("properties", "additionalProperties", "items", "required", "x-kubernetes-validations")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in reading order: type and description first, bounds, then children and rules."""
    first = [k for k in _KEY_ORDER if k in node]
    last = [k for k in _KEY_LAST if k in node]
    middle = sorted(k for k in node if k not in first and k not in last)
    out = {k: node[k] for k in (*first, *middle, *last)}
    if "x-kubernetes-validations" in out:
        out["x-kubernetes-validations"] = [
            {k: v[k] for k in ("rule", "message", "fieldPath") if k in v}
            for v in out["x-kubernetes-validations"]
        ]
    return out


def model_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of an API model (its ``$defs`` inlined)."""
    schema = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_CrdJsonSchema
    )
    defs = schema.pop("$defs", {})
    return _structural(schema, defs, defaults=defaults)


def _metadata_schema() -> dict[str, Any]:
    # Only name/generateName may be constrained in a CRD's metadata schema.
    return {
        "type": "object",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": api.MAX_NAME_LENGTH,
                "pattern": api.NAME_PATTERN,
            }
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    def col(
        name: str, type_: str, path: str, description: str, priority: int = 0
    ) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name,
            "type": type_,
            "jsonPath": path,
            "description": description,
        }
        if priority:
            c["priority"] = priority
        return c

    return [
        col("State", "string", ".status.state", "One-word state of the job."),
        col("Nodes", "string", ".status.nodesReady", "Ready over desired nodes."),
        col("Progress", "string", ".status.progress.display", "Training progress."),
        col("Metric", "string", ".status.metrics.display", "Main validation metric."),
        col("Loss", "number", ".status.metrics.trainLoss", "Latest training loss."),
        col("Age", "date", ".metadata.creationTimestamp", "Time since creation."),
        col("Task", "string", ".spec.model.task", "The fine-tuning task.", 1),
        col("Freeze", "string", ".spec.freeze.preset", "The freezing preset.", 1),
        col("Strategy", "string", ".spec.distributed.strategy", "The parallel strategy.", 1),
        col("Restarts", "integer", ".status.restarts", "Gang restarts after failures.", 1),
        col(
            "Disruptions",
            "integer",
            ".status.disruptions",
            "Gang restarts after disruptions (preemption, eviction, node loss).",
            1,
        ),
        col(
            "Queue",
            "string",
            r".metadata.labels.kueue\.x-k8s\.io/queue-name",
            "The Kueue LocalQueue (docs/kueue.md).",
            1,
        ),
        col("Reason", "string", ".status.reason", "Why the job is in its state.", 1),
        col("ETA", "string", ".status.progress.eta", "Estimated time to completion.", 1),
        col("Model", "string", ".spec.model.checkpoint", "The pretrained checkpoint.", 1),
    ]


def generate_crd() -> dict[str, Any]:
    """The FineTuneJob CRD (apiextensions.k8s.io/v1) as a dict, generated from the API model."""
    spec = model_schema(api.FineTuneJobSpec, defaults=True)
    status = model_schema(api.FineTuneJobStatus, defaults=False)
    root_doc = _describe(api.FineTuneJob.__doc__ or "")
    schema = {
        "type": "object",
        "description": root_doc,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "The versioned schema of this representation of an object.",
            },
            "kind": {
                "type": "string",
                "description": "The REST resource this object represents.",
            },
            "metadata": _metadata_schema(),
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def render_yaml(crd: dict[str, Any]) -> str:
    """The CRD as YAML (key order kept, long lines unwrapped), as checked in."""
    header = f"# Generated from kubegraft/api/v1alpha1.py by `{REGENERATE_COMMAND}`; do not edit.\n"
    body = yaml.safe_dump(crd, sort_keys=False, width=100000, allow_unicode=True)
    return header + "---\n" + body
