"""The operator's output-claim check (pure): the CRD cannot see the PersistentVolumeClaim, so
the operator reads it before it creates a gang and fails the job, creating no pods, when the
claim is missing or, for a multi-node job, not ReadWriteMany."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FineTuneJob, JobState
from kubegraft_operator.decide import claim_problem, claim_to_check, decide
from kubegraft_operator.observe import Observation, PodObservation, PodPhase, observe_claim

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def job(nodes: int, **status: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": "j", "namespace": "ns", "uid": "uid-1", "generation": 1},
            "spec": {
                "model": {"checkpoint": "/ckpt", "task": "sequence-classification"},
                "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
                "distributed": {"nodes": nodes, "procsPerNode": 1},
                "output": {"persistentVolumeClaim": "out"},
            },
            **({"status": status} if status else {}),
        }
    )


def pvc(modes: list[str], phase: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "out"}, "spec": {"accessModes": modes}}
    if phase is not None:
        obj["status"] = (
            {"phase": phase, "accessModes": modes} if phase == "Bound" else {"phase": phase}
        )
    return obj


def created_pods(j: FineTuneJob, obs: Observation) -> list[str]:
    return [o["metadata"]["name"] for o in decide(j, obs, T0).create if o["kind"] == "Pod"]


def test_a_missing_claim_fails_the_job_naming_the_field_and_creates_no_pods() -> None:
    j = job(nodes=1)
    d = decide(j, Observation(output_claim=observe_claim("out", None)), T0)
    assert d.status.state == JobState.FAILED
    assert d.status.reason == "OutputClaimNotFound"
    assert (d.status.message or "").startswith("spec.output.persistentVolumeClaim: ")
    assert "ns/out" in (d.status.message or "")
    assert not d.create
    failed = [c for c in d.status.conditions if c.type == "Failed"]
    assert [(c.status, c.reason) for c in failed] == [("True", "OutputClaimNotFound")]


def test_a_multi_node_job_needs_read_write_many() -> None:
    d = decide(
        job(nodes=2), Observation(output_claim=observe_claim("out", pvc(["ReadWriteOnce"]))), T0
    )
    assert d.status.state == JobState.FAILED
    assert d.status.reason == "OutputClaimNotReadWriteMany"
    assert "ReadWriteOnce" in (d.status.message or "")
    assert "spec.output.persistentVolumeClaim" in (d.status.message or "")
    assert not d.create


@pytest.mark.parametrize(
    ("nodes", "claim"),
    [
        (2, pvc(["ReadWriteMany"], phase="Pending")),  # still being provisioned: no failure
        (2, pvc(["ReadWriteMany"], phase="Bound")),
        (1, pvc(["ReadWriteOnce"], phase="Bound")),  # one node: one writer is enough
    ],
)
def test_a_usable_claim_lets_the_gang_be_created(nodes: int, claim: dict[str, Any]) -> None:
    j = job(nodes=nodes)
    obs = Observation(output_claim=observe_claim("out", claim))
    assert claim_problem(j, obs.output_claim) is None
    assert len(created_pods(j, obs)) == nodes


def test_the_bound_volumes_modes_win_over_the_requested_ones() -> None:
    claim = pvc(["ReadWriteMany"])
    claim["status"] = {"phase": "Bound", "accessModes": ["ReadWriteOnce"]}
    assert observe_claim("out", claim).access_modes == ("ReadWriteOnce",)
    assert claim_problem(job(nodes=2), observe_claim("out", claim)) is not None


def test_the_claim_is_read_only_when_a_gang_may_be_created() -> None:
    assert claim_to_check(job(nodes=2), Observation()) == "out"  # a new job
    running = job(nodes=2, state="Running", attempt=0)
    gang = tuple(
        PodObservation(name=f"j-worker-{r}-a0", rank=r, attempt=0, phase=PodPhase.RUNNING)
        for r in range(2)
    )
    assert claim_to_check(running, Observation(pods=gang)) is None  # nothing to create
    assert claim_to_check(running, Observation(pods=gang[:1])) == "out"  # a rank is missing
    done = job(nodes=2, state="Succeeded", attempt=0)
    assert claim_to_check(done, Observation()) is None
    ephemeral = job(nodes=1)
    ephemeral.spec.output.persistent_volume_claim = None
    ephemeral.spec.output.ephemeral = True
    assert claim_to_check(ephemeral, Observation()) is None
