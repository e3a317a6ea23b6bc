"""JSON that YAML 1.1 readers read back as the same value: the config ConfigMap's ``job.yaml``.

The trainer reads its job config with PyYAML's ``safe_load`` (``kubegraft_trainer.entrypoint``,
also in trainer images older than the operator), and PyYAML's emitter was 5.8 % of the
operator's GIL-holding samples in a burst of 1000 jobs even with libyaml's C emitter (its
representer is Python: ~1 ms per job config; bench/README.md, issue 12). JSON is YAML, and
orjson writes it in microseconds, but JSON is YAML 1.2 and PyYAML reads YAML 1.1, which
differs where orjson writes:

- a float in exponent form needs a dot (YAML 1.1 reads ``2e+20`` as a string): written
  ``2.0e+20``, as PyYAML writes it (orjson writes 5e-05 as 0.00005, but 1e-6 as ``1e-6``);
- characters JSON leaves raw in a string that YAML 1.1 takes for line breaks (U+0085, U+2028,
  U+2029, folded into spaces) or refuses as not printable (DEL and the C1 controls, U+FEFF,
  U+FFFE, U+FFFF): written as ``\\uXXXX`` escapes, which YAML's double-quoted strings share
  with JSON;
- a key longer than YAML's 1024 characters for an implicit key: written after the explicit
  key indicator ``? `` (which a JSON reader does not know).

Integers, ``true``/``false``/``null``, JSON's double-quoted strings and its other escapes, and
flow mappings and sequences spread over indented lines read the same in both. Infinities and
NaN, which JSON cannot write (orjson would write ``null``), are refused; an API object cannot
hold them. Keys are sorted, as the ConfigMap was written before (``yaml.dump(sort_keys=True)``),
so the same job renders the same text. Pure. ``tests/unit/test_json_yaml.py`` reads random
documents back.

The fixes work on orjson's indented text, where every token but a string is plain ASCII and
a raw line break never occurs inside a string: a number ends its line (or precedes the comma
that does), a key starts one.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

_NOT_YAML_11 = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")
"""Characters orjson leaves raw in a string that YAML 1.1 breaks or refuses."""
_EXPONENT_WITHOUT_DOT = re.compile(r"(?m)(?:^|(?<= ))(-?\d+)(e[-+]?\d+)(?=,?$)")
"""A number token whose mantissa has no dot: only a whole line or the value after ``": "``
(a string cannot end a line: its closing quote comes first)."""
IMPLICIT_KEY_LIMIT = 1000
"""YAML reads a key without the explicit ``? `` indicator only within 1024 characters of
the ``:``."""
_LONG_KEY = re.compile(rf'(?m)^( *)("(?:[^"\\\n]|\\.){{{IMPLICIT_KEY_LIMIT},}}": )')
_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


class _Scan:
    """What one walk over the value found that orjson's text needs fixed for YAML 1.1 (most
    job configs need nothing: the walk costs less than searching the text for it)."""

    def __init__(self, value: Any) -> None:
        self.exponent = False
        """A float orjson writes in exponent form without a dot (1e+16, 1e-6)."""
        self.long_key = False
        self._walk(value)

    def _walk(self, value: Any) -> None:
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"JSON cannot hold {value!r}")
            if not self.exponent:
                text = orjson.dumps(value)
                self.exponent = b"e" in text and b"." not in text
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and len(k) >= IMPLICIT_KEY_LIMIT // 6:
                    self.long_key = True  # (an escaped character takes up to 6)
                self._walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                self._walk(v)


def dumps(value: Any) -> str:
    """``value`` (dicts with string keys, lists, strings, finite numbers, booleans, None) as
    indented JSON that PyYAML's ``safe_load`` decodes to ``value``, and so does any JSON
    reader where no key is 1000 characters long."""
    scan = _Scan(value)
    try:
        text = orjson.dumps(value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError as e:
        raise TypeError(f"not a JSON value: {e}") from e
    if scan.exponent:
        text = _EXPONENT_WITHOUT_DOT.sub(r"\1.0\2", text)
    if _NOT_YAML_11.search(text):
        text = _NOT_YAML_11.sub(_escape, text)
    if scan.long_key:
        text = _LONG_KEY.sub(r"\1? \2", text)
    return text + "\n"
