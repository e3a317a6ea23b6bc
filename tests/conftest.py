"""Shared pytest configuration for every tier.

The control-plane fixtures (``cluster``, ``crd``, ``namespace``) live in
``kubegraft.devcluster.pytest_plugin`` so that tests/integration and tests/e2e share one
control plane per test run; they are only started when a selected test asks for them, so
``pytest -m unit`` starts nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from kubegraft.devcluster.cluster import Cluster
    from kubegraft_operator.testing import Kube

pytest_plugins = ["kubegraft.devcluster.pytest_plugin"]


# For the tiers that run the operator (integration, e2e). Imported lazily so that collecting
# the unit tier imports no Kubernetes client.
@pytest.fixture(scope="module")
def op_kubeconfig(
    cluster: Cluster, crd: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig with the operator's own ServiceAccount token (its RBAC is real)."""
    from kubegraft_operator.testing import operator_kubeconfig

    return operator_kubeconfig(
        cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op") / "kubeconfig"
    )


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Iterator[Kube]:
    """An admin API client for the test's own reads and writes."""
    from kubegraft_operator.testing import Kube

    api = cluster.api_client()
    yield Kube(api)
    api.close()
