"""A checkpoint is complete only with every rank's part (pure: files on disk, no processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubegraft_trainer.checkpointing import (
    COMPLETE_MARKER,
    PARTS_DIR,
    TRAINER_STATE,
    checkpoint_name,
    is_complete,
    latest_checkpoint,
    missing_parts,
    part_marker,
)

pytestmark = pytest.mark.unit


def checkpoint(root: Path, step: int, *, world: int, parts: list[int]) -> Path:
    p = root / checkpoint_name(step)
    (p / PARTS_DIR).mkdir(parents=True)
    (p / TRAINER_STATE).write_text(json.dumps({"step": step}))
    for r in parts:
        (p / PARTS_DIR / part_marker(r)).write_text("{}\n")
    (p / COMPLETE_MARKER).write_text(json.dumps({"step": step, "world": world}) + "\n")
    return p


def test_a_checkpoint_missing_a_ranks_part_is_never_the_latest(tmp_path: Path) -> None:
    good = checkpoint(tmp_path, 10, world=2, parts=[0, 1])
    partial = checkpoint(tmp_path, 20, world=2, parts=[0])  # node 1's part never arrived
    assert is_complete(good)
    assert not is_complete(partial)
    assert missing_parts(partial, 2) == [1]
    assert latest_checkpoint(tmp_path) == good


def test_an_older_single_committer_checkpoint_still_counts(tmp_path: Path) -> None:
    p = tmp_path / checkpoint_name(5)
    p.mkdir()
    (p / TRAINER_STATE).write_text("{}")
    (p / COMPLETE_MARKER).write_text("5\n")
    assert is_complete(p)
    (p / COMPLETE_MARKER).write_text("not json")
    assert not is_complete(p)


def test_syncing_a_part_skips_a_file_another_rank_renamed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI failure of 2026-12-01: rank 1 listed rank 0's temporary file (torch writes
    through one and renames it) and opened it after the rename; the rank's part failed and
    with it the checkpoint. The rename is replayed here between the listing and the open."""
    from kubegraft_trainer import checkpointing

    part = tmp_path / ".tmp-step-00000012"
    (part / "sub").mkdir(parents=True)
    (part / "model.safetensors").write_bytes(b"weights")
    (part / "sub" / "optimizer.bin").write_bytes(b"state")
    writing = part / ".tmpesHu6A"  # another rank's file, still under its temporary name
    writing.write_bytes(b"half")
    real_open = open
    opened: list[str] = []

    def open_after_the_rename(path: object, *args: object, **kwargs: object) -> object:
        if Path(str(path)) == writing and writing.exists():
            writing.rename(part / "random_states_0.pkl")  # the other rank finishes its write
        opened.append(Path(str(path)).name)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(checkpointing, "open", open_after_the_rename, raising=False)
    checkpointing._fsync_tree(part)
    assert {"model.safetensors", "optimizer.bin"} <= set(opened)
