"""The invalid- and valid-manifest corpora through the pydantic model (the local enforcer).

``tests/data/invalid/*.yaml`` each carry ``# expect: <field path>``: the same files are applied
to the real kube-apiserver in ``tests/integration/test_admission.py``, so a manifest the API
server rejects is rejected locally too (``kubegraft validate``, ``kubegraft run``, the trainer),
with the same field named. A rule added on one side only shows up here as a corpus file
that one enforcer lets through.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubegraft.api import v1alpha1
from kubegraft.api.errors import describe
from kubegraft.api.rules import Rule
from kubegraft.api.v1alpha1 import FineTuneJob

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def expectation(path: Path) -> str:
    """The ``# expect:`` header: a substring the error must contain, naming the field."""
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.removeprefix("# expect:").strip()
    raise AssertionError(f"{path.name} has no '# expect:' header")


def local_errors(path: Path) -> list[str]:
    try:
        FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        return describe(exc)
    return []


def all_rules() -> list[tuple[str, Rule]]:
    """Every cross-field rule of the API, with its model's name."""
    found = []
    for name, cls in inspect.getmembers(v1alpha1, inspect.isclass):
        if issubclass(cls, v1alpha1.ApiModel):
            found.extend((name, r) for r in cls.__dict__.get("cel_rules", ()))
    return found


def test_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 35
    assert len(VALID) >= 3


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_locally_naming_the_field(path: Path) -> None:
    expect = expectation(path)
    errors = local_errors(path)
    assert errors, f"{path.name}: the pydantic model accepted it"
    # The field path starts the line, as in `spec.freeze.topK: <problem>`.
    assert any(line.startswith(expect) for line in errors), (path.name, expect, errors)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_is_accepted_locally(path: Path) -> None:
    assert local_errors(path) == []


def test_every_local_rule_is_exercised_by_the_corpus() -> None:
    """Each cross-field rule fails for at least one corpus file, so both enforcers see it."""
    messages = {line for path in INVALID for line in local_errors(path)}
    unexercised = [
        f"{model}: {rule.message}"
        for model, rule in all_rules()
        if not rule.is_transition and not any(line.endswith(rule.message) for line in messages)
    ]
    assert unexercised == []


def test_transition_rules_cover_the_immutable_fields_only() -> None:
    spec_rules = v1alpha1.FineTuneJobSpec.cel_rules
    immutable = {r.field_path for r in spec_rules if r.is_transition}
    assert immutable == {f".{f}" for f in v1alpha1.IMMUTABLE_SPEC_FIELDS}
    assert ".runPolicy" not in immutable
    assert ".pod" not in immutable


def test_every_rule_message_and_path_name_the_field() -> None:
    for model, rule in all_rules():
        assert rule.field_path, f"{model}: rule {rule.cel!r} has no fieldPath"
        leaf = rule.field_path.rsplit(".", 1)[-1]
        assert leaf in rule.message, f"{model}: message {rule.message!r} does not name {leaf}"


def test_all_problems_of_one_object_are_reported_together() -> None:
    doc = yaml.safe_load((DATA / "valid" / "minimal.yaml").read_text())
    doc["spec"]["training"] = {"epochs": 1, "maxSteps": 10, "warmupSteps": 10, "warmupRatio": 0.1}
    with pytest.raises(ValidationError) as info:
        FineTuneJob.model_validate(doc)
    lines = describe(info.value)
    assert {line.split(":")[0] for line in lines} == {
        "spec.training.epochs",
        "spec.training.warmupRatio",
        "spec.training.warmupSteps",
    }
