"""The config ConfigMap's JSON-as-YAML (:mod:`kubegraft_operator.json_yaml`) reads back as the
same value with PyYAML (YAML 1.1, what the trainer reads it with) and with a JSON reader."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
import yaml

from kubegraft_operator import json_yaml

pytestmark = pytest.mark.unit

TRICKY_CHARS = (
    "\x00\x01\t\n\r\x1b\x1f\x7f\x80\x85\x9f\xa0\u2028\u2029\ufeff\ufffe\uffff\ue000"
    "é中🙂\U0010ffff\"\\/'`:#-?{}[],&*!|>%@~ "
)
YAML_11_LOOKALIKES = (
    "yes", "no", "on", "off", "y", "n", "true", "False", "null", "~", "", " ", "1e5", "1e-05",
    "0x1F", "0o17", "012", "1_000", "1:20", "190:20:30", ".inf", "-.inf", ".nan", "2001-12-14",
    "2001-12-14t21:59:43.10-05:00", "<<", "=", "- a", "a: b", "# c", "&anchor", "*alias",
    "!tag", "%YAML", "---", "...", "'q'", '"q"', "a\nb", "  lead", "trail  ", "x" * 3000,
)  # fmt: skip


def same(a: Any, b: Any) -> bool:
    """Equal, with the type kept (1 is not 1.0, True is not 1, a float is no string)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def random_string(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return rng.choice(YAML_11_LOOKALIKES)
    return "".join(rng.choice(TRICKY_CHARS) for _ in range(rng.randint(0, 12)))


def random_float(rng: random.Random) -> float:
    kind = rng.random()
    if kind < 0.05:
        return rng.choice([0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308])
    if kind < 0.5:  # learning rates, weight decays, dropout: small numbers written 1e-05
        return rng.choice([1, 2, 3, 5]) * 10.0 ** rng.randint(-12, -4)
    return rng.uniform(-1, 1) * 10.0 ** rng.randint(-320, 308)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 7)
    if kind == 0:
        return random_string(rng)
    if kind == 1:
        return rng.choice([0, -1, 7, 2**63 - 1, -(2**63), rng.randint(-(10**6), 10**6)])
    if kind in (2, 3):
        return random_float(rng)
    if kind == 4:
        return rng.choice([True, False])
    if kind == 5:
        return None
    if kind == 6:
        return random_string(rng)
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_random_documents_read_back_the_same_in_yaml_11() -> None:
    for seed in range(300):  # fixed seeds: a failure names the document it failed on
        rng = random.Random(seed)
        doc = {random_string(rng): random_value(rng) for _ in range(6)}
        text = json_yaml.dumps(doc)
        assert same(yaml.safe_load(text), doc), (seed, text)
        assert same(yaml.load(text, Loader=yaml.CSafeLoader), doc), (seed, text)


def test_it_is_json() -> None:
    doc = {"lr": 1e-05, "big": 1.5e300, "n": 3, "s": "\u2028\x85é", "l": [True, None, {}]}
    assert same(json.loads(json_yaml.dumps(doc)), doc)


def test_a_float_the_yaml_11_reader_would_take_for_a_string_gets_a_dot() -> None:
    assert yaml.safe_load("2e+20") == "2e+20"  # why
    assert json_yaml.dumps([5e-05, 2e20, -1e300, 0.1, -3.0]) == (
        "[\n  0.00005,\n  2.0e+20,\n  -1.0e+300,\n  0.1,\n  -3.0\n]\n"
    )
    # a string that looks like one is left alone, wherever it is
    assert json_yaml.dumps({"a": "x 2e+20", "2e+20": ["2e+20"]}) == (
        '{\n  "2e+20": [\n    "2e+20"\n  ],\n  "a": "x 2e+20"\n}\n'
    )


def test_keys_are_sorted_and_nesting_is_indented() -> None:
    assert json_yaml.dumps({"b": {"y": [], "x": {}}, "a": [1, "two"]}) == (
        '{\n  "a": [\n    1,\n    "two"\n  ],\n  "b": {\n    "x": {},\n    "y": []\n  }\n}\n'
    )


@pytest.mark.parametrize("value", [{1: "x"}, {"a": {1, 2}}, b"bytes", [2**64]])
def test_what_is_not_json_is_refused(value: Any) -> None:
    with pytest.raises(TypeError, match="not a JSON value"):
        json_yaml.dumps(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_what_json_cannot_hold_is_refused_not_written_as_null(value: float) -> None:
    with pytest.raises(ValueError, match="JSON cannot hold"):
        json_yaml.dumps({"a": [{"b": value}]})
