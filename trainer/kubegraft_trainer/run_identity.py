"""Which run a checkpoint belongs to: the job's uid and a hash of what defines the run.

Every checkpoint records a :class:`RunIdentity` in its ``trainer_state.json``; before resuming,
the trainer compares it with its own (:func:`identity_problem`) and refuses, as a
configuration error (exit 78), a checkpoint of another run: resuming it would silently carry
another job's optimizer state, schedule position and data order into this one.

* The **job uid** is the FineTuneJob's ``metadata.uid``, which the operator renders into the
  job config (``job.yaml``). A job deleted and recreated under the same name gets a new uid,
  so it does not resume its predecessor's checkpoints from a shared claim: the user deletes
  them or points the new job elsewhere. Without a uid (``kubegraft run``, a manifest file on a
  laptop) the identity is ``local:<namespace>/<name>``, stable across runs of the same
  manifest, so a local run resumes its own checkpoints.
* The **run hash** covers the sections that shape the run: model, dataset, freeze, training and
  distributed (not output, pod or runPolicy, which may differ between a cluster and a laptop or
  change while a job runs; not distributed.masterPort, which ``kubegraft run`` picks afresh).
  Each section is hashed over the fields set to something other than their default, so a
  manifest that spells out a default and one that leaves it out are the same run, and a newer
  kubegraft that adds a defaulted field does not orphan the checkpoints of a running job.
  On a cluster the spec is immutable, so a hash mismatch under the same uid means the
  trainer's version changed what a field means; locally it means the manifest was edited.

Pure functions only (no torch), unit-tested in ``tests/unit/test_run_identity.py``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from kubegraft.api.v1alpha1 import FineTuneJobSpec

RUN_SECTIONS = ("model", "dataset", "freeze", "training", "distributed")
"""Spec sections (wire names) that define a run."""
IGNORED_FIELDS: dict[str, frozenset[str]] = {"distributed": frozenset({"masterPort"})}
"""Fields of those sections that do not change the run (a rendezvous port)."""
LOCAL_UID_PREFIX = "local:"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def section_hashes(spec: FineTuneJobSpec) -> dict[str, str]:
    """A short hash per run-defining section, over its non-default fields (wire names)."""
    out = {}
    for section in RUN_SECTIONS:
        model = getattr(spec, section)
        wire = model.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        for key in IGNORED_FIELDS.get(section, frozenset()):
            wire.pop(key, None)
        out[section] = _digest(wire)
    return out


def job_uid(uid: str | None, *, name: str, namespace: str | None) -> str:
    """The job's identity: its uid on a cluster, ``local:<namespace>/<name>`` without one."""
    return uid if uid else f"{LOCAL_UID_PREFIX}{namespace or 'default'}/{name}"


@dataclass(frozen=True)
class RunIdentity:
    """Who wrote a checkpoint: the job (uid and name) and the run's definition (hashes)."""

    job_uid: str
    job_name: str
    spec_hash: str
    sections: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"job {self.job_name} (uid {self.job_uid}, run {self.spec_hash})"


def run_identity(spec: FineTuneJobSpec, *, job_name: str, uid: str) -> RunIdentity:
    """This run's identity."""
    sections = section_hashes(spec)
    return RunIdentity(
        job_uid=uid, job_name=job_name, spec_hash=_digest(sections), sections=sections
    )


def identity_problem(saved: Any, current: RunIdentity, *, checkpoint: str) -> str | None:
    """Why the checkpoint whose recorded identity is ``saved`` may not be resumed by
    ``current``; None when it may. A checkpoint written before identities were recorded
    (``saved`` is None) is accepted: it can only come from this path's own earlier runs."""
    if saved is None:
        return None
    if not isinstance(saved, dict):
        return f"the checkpoint {checkpoint} has an unreadable run identity: {saved!r}"
    theirs = (
        f"job {saved.get('job_name')} (uid {saved.get('job_uid')}, run {saved.get('spec_hash')})"
    )
    fix = (
        "; point spec.output at another claim or path, or delete the checkpoints to start "
        "this job afresh"
    )
    if saved.get("job_uid") != current.job_uid:
        return (
            f"the checkpoint {checkpoint} belongs to another job: {theirs}; this is "
            f"{current.describe()}. A job recreated under the same name is a new job (a new "
            "uid) and does not resume its predecessor's checkpoints" + fix
        )
    if saved.get("spec_hash") != current.spec_hash:
        recorded = saved.get("sections")
        before: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        changed = [s for s in RUN_SECTIONS if before.get(s) != current.sections.get(s)]
        return (
            f"the checkpoint {checkpoint} was written by {theirs} with a different "
            f"definition of the run than {current.describe()}: spec "
            f"{', '.join(changed) or 'sections'} changed. Resuming would continue another "
            "run's optimizer and schedule" + fix
        )
    return None
