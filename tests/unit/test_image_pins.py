"""The images install exactly the versions the tests ran with: the ones in uv.lock.

images/*/requirements*.txt pin what the Dockerfiles install (the operator's with hashes, for
``pip --require-hashes``). They are written from the lock (``uv export --frozen``, see
the Dockerfiles' comments); this test fails when a pin there and the lock
disagree, so an upgrade of the lock cannot leave the images on older versions unnoticed.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 name normalisation (``Foo_bar`` and ``foo-bar`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            found[canonical(m.group(1))] = m.group(2)
    return found


def locked() -> dict[str, set[str]]:
    """``name -> versions`` in uv.lock (a universal lock may hold two versions of a package,
    one per Python-version or platform fork)."""
    with open(ROOT / "uv.lock", "rb") as f:
        lock = tomllib.load(f)
    found: dict[str, set[str]] = {}
    for p in lock["package"]:
        if "version" in p:
            found.setdefault(canonical(p["name"]), set()).add(p["version"])
    return found


REQUIREMENTS = sorted(ROOT.glob("images/*/requirements*.txt"))


def test_there_are_image_requirements() -> None:
    assert len(REQUIREMENTS) >= 2, REQUIREMENTS


@pytest.mark.parametrize("path", REQUIREMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_pins_are_the_locked_versions(path: Path) -> None:
    lock = locked()
    file_pins = pins(path)
    assert file_pins, f"{path} pins nothing"
    wrong = {
        name: (version, sorted(lock.get(name, {"not in uv.lock"})))
        for name, version in file_pins.items()
        if not {version, version.split("+")[0]} & lock.get(name, set())
    }
    assert not wrong, f"{path}: pinned vs locked: {wrong}"


def test_a_changed_pin_is_caught(tmp_path: Path) -> None:
    lock = locked()
    req = tmp_path / "requirements.txt"
    req.write_text("torch==0.0.1\n")
    assert pins(req)["torch"] not in lock["torch"]
