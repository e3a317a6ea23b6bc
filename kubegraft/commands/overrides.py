"""``--set KEY=VALUE``: one field of a manifest overridden, typed by the field's own schema.

A value on the command line is text; what it becomes is decided by the field it lands in,
read from the API model (:class:`kubegraft.api.v1alpha1.FineTuneJob`, the same model that
generates the CRD), never from a list kept here:

* a field that takes only strings (``str``, an enum, a string ``Literal``) gets the text as
  it is: ``model.revision=1.0`` stays ``"1.0"``, ``metadata.name=007`` stays ``"007"``;
* any other field (numbers, booleans, lists, objects) gets the text read as YAML, so
  ``training.epochs=2`` is 2, ``training.gradientCheckpointing=true`` is True,
  ``dataset.includeLabels=[a, b]`` a list; ``1e-4`` is the number (YAML 1.1 reads it as text);
* a path that names no field is an error naming the path and the fields there.

Whether the typed value is valid (a range, a pattern, a cross-field rule) is then the model's
validation of the whole manifest, which names the field as the API server would.
"""

from __future__ import annotations

import argparse
import enum
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel

from kubegraft.api.v1alpha1 import FineTuneJob


class OverrideError(ValueError):
    """A ``--set`` that cannot be applied; the message names the path."""


def _arms(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, with ``Annotated`` and ``None`` taken off."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _arms(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(annotation) for a in _arms(arg)]
    if annotation is type(None):
        return []
    return [annotation]


def _is_text(annotation: Any) -> bool:
    if annotation is str:
        return True
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return all(isinstance(m.value, str) for m in annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(v, str) for v in typing.get_args(annotation))
    return False


def takes_only_text(annotation: Any) -> bool:
    """Whether a field of this type accepts nothing but strings (so its value is never
    parsed)."""
    arms = _arms(annotation)
    return bool(arms) and all(_is_text(a) for a in arms)


def _child(annotation: Any, part: str, path: str) -> Any:
    """The annotation of ``part`` inside a value of type ``annotation``."""
    models, containers = [], []
    for arm in _arms(annotation):
        if arm is Any:
            return Any
        if isinstance(arm, type) and issubclass(arm, BaseModel):
            models.append(arm)
        elif typing.get_origin(arm) in (list, dict):
            containers.append(arm)
    for model in models:
        for name, info in model.model_fields.items():
            if part in (info.alias, name):
                return info.annotation
    for arm in containers:
        args = typing.get_args(arm)
        if typing.get_origin(arm) is list and part.isdigit():
            return args[0] if args else Any
        if typing.get_origin(arm) is dict:
            return args[1] if len(args) == 2 else Any
    for model in models:
        if model.model_config.get("extra") == "allow":
            return Any
    if models:
        fields = sorted(info.alias or name for m in models for name, info in m.model_fields.items())
        raise OverrideError(
            f"--set {path}: unknown field {part!r} (known here: {', '.join(fields)})"
        )
    raise OverrideError(f"--set {path}: {part!r} is not inside an object or a list")


def field_annotation(parts: list[str]) -> Any:
    """The type of the manifest field at ``parts`` (``["spec", "training", "epochs"]``)."""
    annotation: Any = FineTuneJob
    for i, part in enumerate(parts):
        annotation = _child(annotation, part, ".".join(parts[: i + 1]))
    return annotation


def parse_value(text: str, annotation: Any) -> Any:
    """The command-line text as the value a field of type ``annotation`` takes."""
    if takes_only_text(annotation):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string; a user means the number
            return float(value)
        except ValueError:
            return value
    return value


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Set ``a.b.c=value`` (camelCase keys as in the manifest; ``spec.`` may be omitted)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise OverrideError(f"--set {assignment!r}: expected KEY=VALUE")
    parts = key.strip().split(".")
    if parts[0] not in ("spec", "metadata"):
        parts = ["spec", *parts]
    value = parse_value(raw, field_annotation(parts))
    node: Any = doc
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit():
            if int(part) >= len(node):
                raise OverrideError(f"--set {key}: index {part} is past the list's end")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise OverrideError(f"--set {key}: {part!r} is not inside a mapping")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list) and last.isdigit():
        if int(last) >= len(node):
            raise OverrideError(f"--set {key}: index {last} is past the list's end")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise OverrideError(f"--set {key}: cannot set {last!r} here")


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` option (into ``args.overrides``) that every command
    taking a manifest offers, applied with :func:`apply_override`."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )
