"""The integration tier: tests here run against the real local control plane.

Every test collected from this directory carries the ``integration`` marker, even if its module
forgot ``pytestmark``, so ``pytest -m unit`` never selects one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import OperatorProcess

HERE = Path(__file__).parent
TEST_NAMESPACES = "t-*"
"""The namespace fixture's names all start so (see tests/conftest.py)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)


# Each operator test module gets its own operator (op_kubeconfig and kube: tests/conftest.py).
@pytest.fixture(scope="module")
def operator(
    op_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the module, watching the test namespaces (``t-*``, a kopf glob). It
    outlives each test's namespace, so it also removes its finalizer when they are deleted."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(op_kubeconfig, log, namespace=TEST_NAMESPACES) as op:
        yield op
    print(op.logs()[-4000:])
