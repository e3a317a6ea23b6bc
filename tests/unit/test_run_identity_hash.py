"""The run identity a checkpoint records (pure): who wrote it and what defines the run."""

from __future__ import annotations

from typing import Any

import pytest

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft_trainer.run_identity import (
    RUN_SECTIONS,
    identity_problem,
    job_uid,
    run_identity,
    section_hashes,
)

pytestmark = pytest.mark.unit


def spec(**extra: Any) -> FineTuneJobSpec:
    doc: dict[str, Any] = {
        "model": {"checkpoint": "/m", "task": "sequence-classification"},
        "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
        "training": {"maxSteps": 100},
        "output": {"ephemeral": True},
    }
    for key, value in extra.items():
        doc[key] = {**doc.get(key, {}), **value}
    return FineTuneJobSpec.model_validate(doc)


def test_same_spec_same_hash_and_defaults_spelt_out_change_nothing() -> None:
    a = section_hashes(spec())
    assert a == section_hashes(spec())
    assert set(a) == set(RUN_SECTIONS)
    # perDeviceBatchSize 16 and strategy ddp are the defaults: the same run
    explicit = spec(training={"perDeviceBatchSize": 16}, distributed={"strategy": "ddp"})
    assert section_hashes(explicit) == a


def test_what_does_not_define_the_run_is_left_out() -> None:
    base = run_identity(spec(), job_name="j", uid="u").spec_hash
    # kubegraft run picks a free rendezvous port per run; output, pod and runPolicy differ
    # between a laptop and a cluster or change while the job runs
    for other in (
        spec(distributed={"masterPort": 23456}),
        spec(output={"path": "/elsewhere", "keepCheckpoints": 5}),
        spec(pod={"image": "x"}, runPolicy={"backoffLimit": 7}),
    ):
        assert run_identity(other, job_name="j", uid="u").spec_hash == base


@pytest.mark.parametrize(
    ("section", "change"),
    [
        ("model", {"head": {"dropout": 0.3}}),
        ("dataset", {"maxSamples": 10}),
        ("freeze", {"preset": "bitfit"}),
        ("training", {"learningRate": 1e-3}),
        ("distributed", {"procsPerNode": 2}),
    ],
)
def test_each_run_defining_section_changes_the_hash(section: str, change: dict[str, Any]) -> None:
    before = run_identity(spec(), job_name="j", uid="u")
    after = run_identity(spec(**{section: change}), job_name="j", uid="u")
    assert after.spec_hash != before.spec_hash
    assert [s for s in RUN_SECTIONS if after.sections[s] != before.sections[s]] == [section]
    problem = identity_problem(before.to_dict(), after, checkpoint="/o/checkpoints/step-1")
    assert problem is not None
    assert f"spec {section} changed" in problem


def test_another_jobs_checkpoint_is_refused_naming_both() -> None:
    old = run_identity(spec(), job_name="sft", uid="uid-old")
    new = run_identity(spec(), job_name="sft", uid="uid-new")  # recreated under the same name
    problem = identity_problem(old.to_dict(), new, checkpoint="/o/checkpoints/step-00000040")
    assert problem is not None
    assert "uid-old" in problem
    assert "uid-new" in problem
    assert "/o/checkpoints/step-00000040" in problem
    assert "another job" in problem


def test_own_and_legacy_checkpoints_are_resumed() -> None:
    me = run_identity(spec(), job_name="j", uid="u")
    assert identity_problem(me.to_dict(), me, checkpoint="c") is None
    assert identity_problem(None, me, checkpoint="c") is None  # written before identities
    assert identity_problem("garbage", me, checkpoint="c") is not None


def test_local_identity_is_stable_and_a_uid_wins() -> None:
    assert job_uid(None, name="quickstart", namespace=None) == "local:default/quickstart"
    assert job_uid("", name="q", namespace="team") == "local:team/q"
    assert job_uid("1234-abcd", name="q", namespace="team") == "1234-abcd"
