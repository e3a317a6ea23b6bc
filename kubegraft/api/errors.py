"""Turning pydantic validation errors into ``spec.freeze.topK: <problem>`` lines.

Users write camelCase manifests and read the API server's errors in dotted camelCase paths;
``kubegraft validate`` (and ``kubegraft run``) print local errors the same way, so that a
message means the same thing wherever it is seen. Broken cross-field rules
(:mod:`kubegraft.api.rules`) carry their own field paths and are expanded here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from kubegraft.api.rules import RULE_ERROR_TYPE


def field_path(loc: Sequence[int | str], suffix: str = "") -> str:
    """A pydantic error location as a dotted camelCase path: ``spec.dataset.evalSets[0].name``.

    ``suffix`` is a rule's fieldPath (``.topK``) appended to the object's path.
    """
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # loc parts are aliases when the input used them; snake_case input (from Python)
            # is shown on the wire's spelling too. Tagged-union and function-validator
            # markers (e.g. "function-after[...]") are not fields: skip them.
            if "[" in part:
                continue
            name = to_camel(part) if part.isidentifier() else part
            path += ("." if path else "") + name
    if suffix:
        path += suffix if path else suffix.lstrip(".")
    return path or "<root>"


def describe(exc: ValidationError) -> list[str]:
    """One ``path: problem`` line per error, broken cross-field rules expanded per field."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = err.get("loc", ())
        if err.get("type") == RULE_ERROR_TYPE:
            ctx: dict[str, Any] = err.get("ctx") or {}
            for v in ctx.get("violations", []):
                lines.append(f"{field_path(loc, v['fieldPath'])}: {v['message']}")
            continue
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing":
            msg = "required field is missing"
        lines.append(f"{field_path(loc)}: {msg}")
    return lines
