"""The installation's trainer image (the chart's ``trainer.image``, passed to the operator as
$KUBEGRAFT_TRAINER_IMAGE) is what jobs without ``spec.pod.image`` run; a job's own wins."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubegraft_operator import reconciler, settings

pytestmark = pytest.mark.unit

RAW = {
    "apiVersion": "kubegraft.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "j", "namespace": "ns"},
    "spec": {
        "model": {"checkpoint": "/models/base", "task": "sequence-classification"},
        "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
        "output": {"ephemeral": True},
    },
}


def test_job_without_image_gets_the_installation_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_TRAINER_IMAGE, "registry.local/kubegraft/trainer:cpu")
    assert reconciler._job_from(RAW).spec.pod.image == "registry.local/kubegraft/trainer:cpu"


def test_job_image_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_TRAINER_IMAGE, "registry.local/kubegraft/trainer:cpu")
    raw = {**RAW, "spec": {**RAW["spec"], "pod": {"image": "mine:1", "labels": {"a": "b"}}}}
    job = reconciler._job_from(raw)
    assert job.spec.pod.image == "mine:1"
    assert job.spec.pod.labels == {"a": "b"}


def test_without_the_setting_the_api_default_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_TRAINER_IMAGE, raising=False)
    assert reconciler._job_from(RAW).spec.pod.image == "ghcr.io/kubegraft/trainer:0.1.0"


def _versioned(generation: int, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {**RAW["metadata"], "uid": "u-1", "generation": generation}
    return {**RAW, "metadata": meta, "spec": spec}


def test_a_spec_is_validated_once_per_generation() -> None:
    specs = reconciler.ValidSpecs()
    first = specs.job(_versioned(1, RAW["spec"]))
    again = specs.job({**_versioned(1, RAW["spec"]), "status": {"state": "Pending"}})
    assert again.spec is first.spec  # the same model: not validated again
    assert again.status is not None
    assert again.status.state == "Pending"  # the status is validated on every pass
    moved = {**RAW["spec"], "pod": {"image": "mine:2"}}
    assert specs.job(_versioned(2, moved)).spec.pod.image == "mine:2"  # a new generation: validated
    specs.forget("u-1")
    assert specs.job(_versioned(2, moved)).spec is not first.spec


def test_an_invalid_spec_fails_on_every_pass_and_names_the_field() -> None:
    specs = reconciler.ValidSpecs()
    bad = _versioned(1, {**RAW["spec"], "distributed": {"nodes": 0}})
    for _ in range(2):  # never cached
        with pytest.raises(ValidationError, match=r"spec\.distributed\.nodes"):
            specs.job(bad)
