"""Shared pytest configuration for every tier: fixtures over the real local control plane.

Here (not in the kubegraft package users install) so that tests/integration and tests/e2e
share one control plane per test run; it is only started when a selected test asks for it,
so ``pytest -m unit`` starts nothing:

- ``cluster`` (session): starts etcd, kube-apiserver, controller-manager, scheduler and kwok
  once per test run in a temporary state dir and stops them at the end; returns a
  :class:`~kubegraft.devcluster.cluster.Cluster` (``kubeconfig``, ``bin_dir``, ``server``,
  ``kubectl(*args, check=True, input=None)``, ``api_client()``). With
  ``KUBEGRAFT_TEST_CLUSTER=<state dir>`` it reuses a cluster started by
  ``kubegraft dev cluster up --state-dir <state dir>`` and leaves it running.
- ``crd`` (session): applies every YAML file in ``manifests/crd/`` and waits until each CRD is
  Established; returns the CRD names.
- ``namespace`` (function): a fresh namespace whose ``default`` ServiceAccount exists (pods can
  be created at once); deleted after the test.
- ``op_kubeconfig``, ``kube`` (module): the operator's own credentials, an admin client.
- ``kueue`` (session): Kueue's manager on ``cluster`` (its CRDs, webhooks registered by URL,
  FineTuneJob as an external framework; :mod:`kubegraft.devcluster.kueue`), started once for
  the tests that ask for it and stopped with the cluster. A reused cluster
  (``KUBEGRAFT_TEST_CLUSTER``) started with ``--kueue`` is used as it is.

Tests marked ``unit`` may not use ``cluster``: the unit tier starts nothing. The operator
harness (a real operator subprocess, ``wait_for``, test manifests) is ``operator_harness``
in this directory, which pytest puts on ``sys.path``.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from kubegraft.devcluster.binaries import repo_root
from kubegraft.devcluster.cluster import Cluster, ClusterError, down, load, up

if TYPE_CHECKING:
    from operator_harness import Kube

ENV_REUSE = "KUBEGRAFT_TEST_CLUSTER"
CRD_DIR = Path("manifests") / "crd"


def _log(message: str) -> None:
    print(f"[cluster fixture] {message}", file=sys.stderr, flush=True)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Keep the unit tier pure: a unit test asking for the control plane is an error."""
    fixtures = getattr(item, "fixturenames", ())
    if item.get_closest_marker("unit") and {"cluster", "crd", "namespace"} & set(fixtures):
        pytest.fail("tests marked `unit` must not use the cluster fixtures; mark it integration")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The real local control plane, started once per test session."""
    reuse = os.environ.get(ENV_REUSE)
    if reuse:
        existing = load(Path(reuse).resolve())
        if existing is None or not all(existing.alive().values()):
            raise ClusterError(f"{ENV_REUSE}={reuse}: no running cluster recorded there")
        yield existing
        return
    state_dir = tmp_path_factory.mktemp("cluster")
    started = time.monotonic()
    handle = up(state_dir, name="kubegraft-test", log=_log, tie_to_caller=True)
    _log(f"up in {time.monotonic() - started:.1f}s")
    try:
        yield handle
    finally:
        handle.save()  # a test may have restarted a component: record its current pid
        down(state_dir, log=_log)


@pytest.fixture(scope="session")
def kueue(cluster: Cluster, crd: list[str]) -> Cluster:
    """Kueue running on the session's control plane (started on first use)."""
    from kubegraft.devcluster import kueue as kueue_manager
    from kubegraft.devcluster.pki import ensure_pki

    if not cluster.alive().get("kueue"):
        started = time.monotonic()
        kueue_manager.start(cluster, ensure_pki(cluster.state_dir / "pki"), log=_log)
        _log(f"kueue up in {time.monotonic() - started:.1f}s")
    return cluster


def _crd_names(directory: Path) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in directory.glob("*.y*ml") if p.is_file())
    names = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    return files, names


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> list[str]:
    """Apply ``manifests/crd/*.yaml`` and wait until each CRD is Established; its names."""
    files, names = _crd_names(repo_root() / CRD_DIR)
    for path in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for name in names:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    return names


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{stem}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace, ready for pods (its ``default`` ServiceAccount exists)."""
    name = _namespace_name(request.node.name)
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 60
    delay = 0.05
    while cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ServiceAccount {name}/default did not appear within 60s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    yield name
    # Namespace deletion finishes in the background (the namespace controller empties it).
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


# For the tiers that run the operator (integration, e2e). Imported lazily so that collecting
# the unit tier imports no Kubernetes client.
@pytest.fixture(scope="module")
def op_kubeconfig(
    cluster: Cluster, crd: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig with the operator's own ServiceAccount token (its RBAC is real)."""
    from operator_harness import operator_kubeconfig

    return operator_kubeconfig(
        cluster.kubectl, cluster.kubeconfig, tmp_path_factory.mktemp("op") / "kubeconfig"
    )


@pytest.fixture(scope="module")
def kube(cluster: Cluster) -> Iterator[Kube]:
    """An admin API client for the test's own reads and writes."""
    from operator_harness import Kube

    api = cluster.api_client()
    yield Kube(api)
    api.close()
