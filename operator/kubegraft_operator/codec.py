"""orjson where the operator decodes the most JSON: kopf's watch streams and our answers.

Decoding JSON was the largest single share of the operator's CPU at scale (bench/README.md:
15.8 % of the GIL-holding samples in kopf's watch streams, 4.8 % in the answers to our own
requests, py-spy at 300 jobs). orjson decodes the same documents into the same ``dict`` /
``list`` / ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` values several times faster.

kopf has no hook for its decoder: its watch stream calls ``json.loads`` of the module
``kopf._cogs.clients.api``, so :func:`use_for_kopf_watches` gives that module a ``json`` whose
``loads`` is orjson's (``dumps`` and everything else stay the standard library's).
``tests/unit/test_operator_codec.py`` fails if a kopf upgrade moves that call.
"""

from __future__ import annotations

import json
import types
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Decode one JSON document (bytes or str) with orjson."""
    return orjson.loads(data)


def copy(value: Any) -> Any:
    """A deep copy of a JSON value (what a watch event or an answer decoded to): encoded and
    decoded again by orjson, ~6x faster than ``copy.deepcopy`` for a job (``deepcopy`` of the
    job each pass snapshots was 2.7 % of the operator's GIL-holding samples at 1000 jobs)."""
    return orjson.loads(orjson.dumps(value))


class _Json(types.ModuleType):
    """The standard ``json`` module with orjson's ``loads``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)


ORJSON_JSON = _Json("json")
ORJSON_JSON.loads = loads  # type: ignore[attr-defined]


def use_for_kopf_watches() -> None:
    """Have kopf decode watch events with orjson (see the module docstring)."""
    from kopf._cogs.clients import api as kopf_api

    kopf_api.json = ORJSON_JSON  # type: ignore[attr-defined]
