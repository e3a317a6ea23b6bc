"""The images tier: the operator and trainer images that ``make images`` built with buildah,
run with podman. Not part of ``make test`` (building the trainer image takes long and needs
root, buildah and podman): ``make test-images`` builds, then runs ``pytest -m images``.

Every test collected here carries the ``images`` marker."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("images"):
            item.add_marker(pytest.mark.images)
