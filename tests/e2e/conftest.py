"""The e2e tier: the operator and the trainer together on the real local control plane, and
the benchmarks' smoke runs.

Every test collected from this directory carries the ``e2e`` marker, even if its module forgot
``pytestmark``, so ``pytest -m unit`` or ``-m integration`` never selects one. The control
plane fixtures (``cluster``, ``crd``, ``namespace``) come from
``tests/conftest.py``; ``operator`` (the real operator, watching the test's namespace) is here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import OperatorProcess

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def operator(op_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(op_kubeconfig, tmp_path / "operator.log", namespace=namespace) as op:
        yield op
    print(op.logs()[-4000:])
