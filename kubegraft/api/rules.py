"""Cross-field rules of the API, written once for both enforcers.

A :class:`Rule` pairs a CEL expression (copied by :mod:`kubegraft.crd` into the CRD's
``x-kubernetes-validations``, so the kube-apiserver rejects a bad spec at ``kubectl apply``)
with its Python twin (run as a pydantic model validator, so ``kubegraft validate``,
``kubegraft run`` and the trainer reject the same manifests locally). Keeping the pair side by
side in one object is how the two rule sets stay in step; the invalid-manifest corpus in
``tests/data/invalid`` runs through both.

Transition rules (``self == oldSelf``) have no Python twin: only the API server sees the old
object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic_core import PydanticCustomError

RULE_ERROR_TYPE = "cross_field_rule"
"""The pydantic error type of a broken cross-field rule (its ctx carries ``violations``)."""


@dataclass(frozen=True)
class Rule:
    """One cross-field rule of an API object.

    ``field_path`` is relative to the object the rule sits on (``.topK``, ``.head.numLabels``)
    and is where the API server and ``kubegraft validate`` point the error; the message should
    name the field too, since some clients print only the message.
    """

    cel: str
    """The CEL expression; true means valid. ``self`` is the object (camelCase keys)."""
    message: str
    """What is wrong and how to fix it, naming the fields."""
    field_path: str | None = None
    """Where the error points, relative to the object, e.g. ``.topK``."""
    check: Callable[[Any], bool] | None = None
    """The Python twin on the pydantic object (snake_case attributes); true means valid. None
    only for transition rules, which need the old object."""

    def __post_init__(self) -> None:
        transition = "oldSelf" in self.cel
        if self.check is None and not transition:
            raise ValueError(
                f"rule {self.cel!r} needs a Python check (only transition rules may omit it)"
            )
        if self.field_path is not None and not self.field_path.startswith("."):
            raise ValueError(f"fieldPath {self.field_path!r} must start with '.'")

    @property
    def is_transition(self) -> bool:
        """Whether the rule compares with the old object (evaluated on updates only)."""
        return "oldSelf" in self.cel

    def to_validation(self) -> dict[str, str]:
        """The rule as an ``x-kubernetes-validations`` item."""
        item = {"rule": self.cel, "message": self.message}
        if self.field_path is not None:
            item["fieldPath"] = self.field_path
        return item


def cel_validations(rules: Iterable[Rule]) -> list[dict[str, str]]:
    """The ``x-kubernetes-validations`` list for a model's rules."""
    return [r.to_validation() for r in rules]


def enforce(obj: Any, rules: Iterable[Rule]) -> None:
    """Run the Python twins of ``rules`` on ``obj``; raise one pydantic error listing every
    broken rule (each with its field path), so that a user sees all problems at once."""
    violations = [
        {"fieldPath": r.field_path or "", "message": r.message}
        for r in rules
        if r.check is not None and not r.check(obj)
    ]
    if violations:
        text = "; ".join(
            f"{v['fieldPath'].lstrip('.')}: {v['message']}" if v["fieldPath"] else v["message"]
            for v in violations
        )
        raise PydanticCustomError(RULE_ERROR_TYPE, text, {"violations": violations})
