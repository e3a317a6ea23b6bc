"""The operator's output-claim check on the real control plane, with its real RBAC (the
ClusterRole in manifests/rbac/ grants get on persistentvolumeclaims, nothing more).

The CRD cannot see the PersistentVolumeClaim a job names, so the operator reads it before it
creates a gang: a missing claim, or one without ReadWriteMany for a multi-node job, fails the
job naming spec.output.persistentVolumeClaim and creates no pods; a claim still Pending (no
provisioner binds claims here) is no failure.
"""

from __future__ import annotations

import pytest
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    state_is,
    wait_for,
)

pytestmark = pytest.mark.integration
WAIT = 120


def claim(kube: Kube, namespace: str, name: str, modes: list[str]) -> None:
    kube.core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}},
        },
    )


def failed(kube: Kube, namespace: str, name: str) -> dict[str, object]:
    status: dict[str, object] = wait_for(
        lambda: state_is(kube, namespace, name, "Failed"), WAIT, message=f"{name} Failed"
    )
    return status


def test_missing_or_single_writer_claim_fails_the_job_without_pods(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(
        namespace,
        job_manifest("noclaim", nodes=1, output={"persistentVolumeClaim": "does-not-exist"}),
    )
    claim(kube, namespace, "rwo", ["ReadWriteOnce"])
    kube.create_job(
        namespace, job_manifest("rwo", nodes=2, output={"persistentVolumeClaim": "rwo"})
    )
    for name, reason in (
        ("noclaim", "OutputClaimNotFound"),
        ("rwo", "OutputClaimNotReadWriteMany"),
    ):
        status = failed(kube, namespace, name)
        assert status["reason"] == reason, status
        assert str(status["message"]).startswith("spec.output.persistentVolumeClaim: "), status
        conditions = {c["type"]: c for c in status["conditions"]}  # type: ignore[attr-defined]
        assert conditions["Failed"]["status"] == "True"
        assert conditions["Failed"]["reason"] == reason
        assert kube.pods(namespace, name) == []


def test_pending_read_write_many_claim_lets_the_gang_start(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    claim(kube, namespace, "shared", ["ReadWriteMany"])  # stays Pending: nothing binds it
    kube.create_job(
        namespace,
        job_manifest("shared", nodes=2, output={"persistentVolumeClaim": "shared"}),
    )
    pods = wait_for(
        lambda: (p := kube.pods(namespace, "shared")) and len(p) == 2 and p, WAIT, message="pods"
    )
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "shared"}
    # The scheduler holds pods whose claim is unbound, as on any cluster; the job waits.
    # (the pods are created before the status that says so is written: wait for it)
    status = wait_for(
        lambda: state_is(kube, namespace, "shared", "Pending", "Running", "Failed"),
        WAIT,
        message="a state",
    )
    assert status["state"] != "Failed", status
