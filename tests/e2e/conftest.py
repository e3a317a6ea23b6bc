"""The e2e tier: the operator and the trainer together on the real local control plane, and
the benchmarks' smoke runs.

Every test collected from this directory carries the ``e2e`` marker, even if its module forgot
``pytestmark``, so ``pytest -m unit`` or ``-m integration`` never selects one. The control
plane fixtures (``cluster``, ``crd``, ``namespace``) come from
``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
