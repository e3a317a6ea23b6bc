"""Admission against the real kube-apiserver: schema bounds, CEL rules, immutability.

Every manifest in ``tests/data/invalid`` is applied with ``kubectl apply --dry-run=server`` (the
full admission path: decoding with strict field validation, defaulting, the structural schema,
the CEL rules) and must be rejected with an error naming the field from its ``# expect:``
header. The same files go through the pydantic model in ``tests/unit/test_api_corpus.py``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
INVALID = sorted((DATA / "invalid").glob("*.yaml"))
VALID = sorted((DATA / "valid").glob("*.yaml"))


def expectation(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.removeprefix("# expect:").strip()
    raise AssertionError(f"{path.name} has no '# expect:' header")


@pytest.fixture(scope="module")
def dry_run_namespace(cluster: Cluster, crd: list[str]) -> Iterator[str]:
    """One namespace for all dry runs (nothing is stored, so the tests cannot interfere)."""
    name = f"t-admission-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(
    cluster: Cluster, dry_run_namespace: str, path: Path
) -> None:
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", dry_run_namespace, "-f", str(path), check=False
    )
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    expect = expectation(path)
    assert expect in result.stderr, f"{path.name}: {expect!r} not in:\n{result.stderr}"


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_manifest_is_accepted(cluster: Cluster, dry_run_namespace: str, path: Path) -> None:
    result = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        dry_run_namespace,
        "-f",
        str(path),
        "-o",
        "json",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stored = json.loads(result.stdout)
    # The server's defaults and the model's agree: the defaulted object parses to the same spec.
    local = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
    assert FineTuneJob.model_validate(stored).spec == local.spec


def merge_patch(
    cluster: Cluster, namespace: str, name: str, patch: dict[str, Any], *sub: str
) -> Any:
    return cluster.kubectl(
        "patch",
        "ftj",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
        *sub,
        check=False,
    )


IMMUTABLE_CHANGES = {
    "model": {"head": {"dropout": 0.3}},
    "dataset": {"maxLength": 64},
    "freeze": {"freezeBatchNormStats": False},
    "training": {"epochs": 2},
    "distributed": {"nodes": 2},
    "output": {"keepCheckpoints": 5},
}


def test_spec_is_immutable_except_run_policy_and_pod(
    cluster: Cluster, crd: list[str], namespace: str
) -> None:
    manifest = DATA / "valid" / "minimal.yaml"
    cluster.kubectl("create", "-n", namespace, "-f", str(manifest))
    for field, change in IMMUTABLE_CHANGES.items():
        result = merge_patch(cluster, namespace, "minimal", {"spec": {field: change}})
        assert result.returncode != 0, f"changing spec.{field} was accepted"
        assert f"spec.{field}" in result.stderr, result.stderr
        assert "immutable" in result.stderr, result.stderr

    # Adding an optional sub-object that was absent counts as a change too.
    result = merge_patch(cluster, namespace, "minimal", {"spec": {"dataset": {"maxSamples": 10}}})
    assert result.returncode != 0
    assert "spec.dataset" in result.stderr

    for patch in (
        {"spec": {"runPolicy": {"suspend": True}}},
        {"spec": {"runPolicy": {"activeDeadlineSeconds": 3600, "backoffLimit": 1}}},
        {"spec": {"pod": {"nodeSelector": {"kueue.x-k8s.io/flavor": "a100"}}}},
    ):
        result = merge_patch(cluster, namespace, "minimal", patch)
        assert result.returncode == 0, result.stderr

    status = {"status": {"state": "Suspended", "restarts": 0, "observedGeneration": 4}}
    result = merge_patch(cluster, namespace, "minimal", status, "--subresource=status")
    assert result.returncode == 0, result.stderr

    stored = cluster.kubectl_json("get", "ftj", "minimal", "-n", namespace)
    assert stored["spec"]["training"]["epochs"] == 1
    assert stored["spec"]["runPolicy"]["suspend"] is True
    assert stored["status"]["state"] == "Suspended"
    job = FineTuneJob.model_validate(stored)
    assert job.spec.run_policy.active_deadline_seconds == 3600


def test_immutability_still_allows_a_rule_breaking_fix_elsewhere(
    cluster: Cluster, crd: list[str], namespace: str
) -> None:
    """Cross-field rules apply to updates too: an update breaking one is rejected."""
    cluster.kubectl(
        "create", "-n", namespace, "-f", str(DATA / "valid" / "cpu-only-many-procs.yaml")
    )
    result = merge_patch(
        cluster, namespace, "cpu-only", {"spec": {"runPolicy": {"backoffLimit": -1}}}
    )
    assert result.returncode != 0
    assert "spec.runPolicy.backoffLimit" in result.stderr
