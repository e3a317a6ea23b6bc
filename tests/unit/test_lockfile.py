"""uv.lock pins what pyproject.toml asks for: the two never disagree.

uv records, in the lock's entry for the project itself, the requirements it resolved from
(``requires-dist`` for the dependencies and extras, ``requires-dev`` for the dependency
groups, ``provides-extras``, and the lock's ``requires-python``); a lock is stale exactly when
these differ from pyproject.toml's (what ``uv lock --check`` reports). Comparing them here needs
no network, no uv binary and no package index, so it runs offline and in a second. After
editing the dependencies run ``uv lock`` and commit uv.lock with pyproject.toml; hack/venv.sh
installs from the lock and keys the venv on both files.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

Req = tuple[str, frozenset[str], str, str]
"""A requirement as (canonical name, extras, specifier, marker), comparable across files."""


def _from_pep508(text: str, extra: str | None = None) -> Req:
    req = Requirement(text)
    marker = str(req.marker) if req.marker else ""
    if extra is not None:
        marker = f"extra == '{extra}'" + (f" and ({marker})" if marker else "")
    spec = ",".join(sorted(str(s) for s in req.specifier))
    return canonicalize_name(req.name), frozenset(req.extras), spec, marker


def _from_lock(entry: dict[str, Any]) -> Req:
    spec = ",".join(sorted(s.strip() for s in entry.get("specifier", "").split(",") if s.strip()))
    return (
        canonicalize_name(entry["name"]),
        frozenset(entry.get("extras", ())),
        spec,
        entry.get("marker", ""),
    )


def pyproject_requirements(pyproject: dict[str, Any]) -> dict[str, set[Req]]:
    """What pyproject.toml asks for: "dist" (dependencies and extras) and each group."""
    project = pyproject["project"]
    dist = {_from_pep508(r) for r in project.get("dependencies", [])}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        dist |= {_from_pep508(r, extra) for r in reqs}
    found = {"dist": dist}
    for group, reqs in pyproject.get("dependency-groups", {}).items():
        found[f"group:{group}"] = {_from_pep508(r) for r in reqs}
    return found


def lock_requirements(lock: dict[str, Any], name: str) -> dict[str, set[Req]]:
    """What the lock was resolved for, from its entry for the project ``name``."""
    entry = next(
        p for p in lock["package"] if canonicalize_name(p["name"]) == canonicalize_name(name)
    )
    metadata = entry.get("metadata", {})
    found = {"dist": {_from_lock(r) for r in metadata.get("requires-dist", [])}}
    for group, reqs in metadata.get("requires-dev", {}).items():
        found[f"group:{group}"] = {_from_lock(r) for r in reqs}
    return found


def lock_disagreements(pyproject: dict[str, Any], lock: dict[str, Any]) -> list[str]:
    """Each way the lock and pyproject.toml differ (empty when the lock is current)."""
    project = pyproject["project"]
    problems = []
    if lock.get("requires-python") != project.get("requires-python"):
        problems.append(
            f"requires-python: lock {lock.get('requires-python')!r}, "
            f"pyproject {project.get('requires-python')!r}"
        )
    want, have = pyproject_requirements(pyproject), lock_requirements(lock, project["name"])
    for key in sorted(set(want) | set(have)):
        for req in sorted(want.get(key, set()) - have.get(key, set())):
            problems.append(f"{key}: {req} is in pyproject.toml, not in uv.lock")
        for req in sorted(have.get(key, set()) - want.get(key, set())):
            problems.append(f"{key}: {req} is in uv.lock, not in pyproject.toml")
    extras = set(project.get("optional-dependencies", {}))
    lock_entry = next(p for p in lock["package"] if p["name"] == project["name"])
    if set(lock_entry.get("metadata", {}).get("provides-extras", [])) != extras:
        problems.append("provides-extras: the lock's extras differ from pyproject.toml's")
    return problems


def _load() -> tuple[dict[str, Any], dict[str, Any]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    with (ROOT / "uv.lock").open("rb") as f:
        lock = tomllib.load(f)
    return pyproject, lock


def test_the_lock_matches_pyproject() -> None:
    pyproject, lock = _load()
    assert lock_disagreements(pyproject, lock) == [], "pyproject.toml changed: run `uv lock`"


def test_the_lock_pins_every_dependency_to_one_version_per_environment() -> None:
    """Every locked package has a version and a hashed artifact (nothing floats)."""
    _, lock = _load()
    for pkg in lock["package"]:
        if pkg["source"].get("editable") or pkg["source"].get("virtual"):
            continue
        assert pkg.get("version"), pkg["name"]
        artifacts = [pkg["sdist"]] if "sdist" in pkg else []
        artifacts += pkg.get("wheels", [])
        assert artifacts, f"{pkg['name']} has no artifact in the lock"
        assert all(a.get("hash", "").startswith("sha256:") for a in artifacts), pkg["name"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda p: p["project"]["dependencies"].append("rich>=13"), "rich"),
        (lambda p: p["project"]["optional-dependencies"]["trainer"].remove("torch>=2.3"), "torch"),
        (
            lambda p: p["project"]["optional-dependencies"].update(
                trainer=[
                    "torch>=2.4" if r == "torch>=2.3" else r
                    for r in p["project"]["optional-dependencies"]["trainer"]
                ]
            ),
            "torch",
        ),
        (lambda p: p["dependency-groups"]["dev"].append("hypothesis"), "group:dev"),
        (lambda p: p["project"].update({"requires-python": ">=3.12"}), "requires-python"),
        (lambda p: p["project"]["optional-dependencies"].update({"gpu": []}), "provides-extras"),
    ],
    ids=["new-dependency", "dropped-extra-item", "changed-bound", "dev-group", "python", "extra"],
)
def test_a_pyproject_edit_without_relocking_is_caught(edit: Any, expected: str) -> None:
    pyproject, lock = _load()
    edit(pyproject)
    problems = lock_disagreements(pyproject, lock)
    assert any(expected in p for p in problems), problems
