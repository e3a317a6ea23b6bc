"""The integration tier: tests here run against the real local control plane.

Every test collected from this directory carries the ``integration`` marker, even if its module
forgot ``pytestmark``, so ``pytest -m unit`` never selects one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
