"""The kopf settings the operator relies on, checked without a cluster."""

from __future__ import annotations

import kopf
import pytest

import kubegraft_operator.main  # noqa: F401  (registers the handlers)
from kubegraft_operator import settings

pytestmark = pytest.mark.unit


def test_no_change_handlers_so_no_diff_base_is_needed() -> None:
    # NoDiffBase gives kopf an empty essence: on.create/on.update/on.field handlers would
    # never see a change. Only daemons and on.event watches may be registered.
    registry = kopf.get_default_registry()
    assert list(registry._changing.get_all_handlers()) == []
    assert [h.id for h in registry._spawning.get_all_handlers()] == ["reconcile"]
    # jobs, nodes, Kueue's Workloads: no ConfigMap watch (progress comes to the progress
    # endpoint), and no pod watch: the operator watches its worker pods itself (pod_watch.py)
    watched = {h.selector.any_name for h in registry._watching.get_all_handlers()}
    assert watched == {"finetunejobs", "nodes", "workloads"}


def test_configure_uses_our_storages_and_a_distinct_peering_priority() -> None:
    ops = kopf.OperatorSettings()
    settings.configure(ops)
    assert isinstance(ops.persistence.diffbase_storage, settings.NoDiffBase)
    assert ops.persistence.finalizer == settings.FINALIZER
    assert ops.peering.priority != 0  # a tie would pause every replica
    body = kopf.Body({"metadata": {"name": "j", "annotations": {"a": "b"}}, "spec": {"x": 1}})
    assert ops.persistence.diffbase_storage.build(body=body) == {}
    assert ops.persistence.diffbase_storage.fetch(body=body) is None


def _core(plural: str, kind: str) -> kopf.Resource:
    return kopf.Resource("", "v1", plural, kind=kind, namespaced=True, verbs=["list", "watch"])


def test_pods_are_filtered_by_the_api_server() -> None:
    # Only our worker pods may reach the operator: with -A, a client-side filter alone would
    # decode and track every pod of the cluster. kopf watches no pods (pod_watch.py does, with
    # this selector); ConfigMaps are not watched at all.
    assert settings.WORKER_POD_SELECTOR == "kubegraft.io/job-name,kubegraft.io/component=worker"
    ops = kopf.OperatorSettings()
    settings.configure(ops)
    selectors = ops.watching.label_selectors
    assert selectors.collect(_core("nodes", "Node")) == []  # every node matters
    jobs = kopf.Resource("kubegraft.io", "v1alpha1", "finetunejobs", namespaced=True)
    assert selectors.collect(jobs) == []
