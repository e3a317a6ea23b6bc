"""Checkpoints: complete only when every rank's part is written, found reliably, pruned to the
last K plus the best.

Layout under ``<output.path>/checkpoints/``::

    step-00000120/          a complete checkpoint: Accelerate state, trainer_state.json,
        parts/rank-00000    one marker per rank, written after that rank's part was fsynced
        parts/rank-00001
        COMPLETE            {"step": 120, "world": 2}; written last, then the directory renamed
    .tmp-step-00000140/     one being written; never taken as the latest
    best.json               {"path": ..., "step": ..., "metric": ...}

The save protocol (:meth:`CheckpointManager.save`, collective): rank 0 makes the ``.tmp-``
directory; every rank writes its part of the Accelerate state (model, optimizer, scheduler,
its own RNG file; under DeepSpeed its own ZeRO shards), fsyncs from its own node what it
wrote, and only then writes its ``parts/rank-N`` marker; all ranks agree on the outcome (a
sum over the process group: a rank whose write failed says so, and every rank raises); rank
0 checks that every rank's marker is there, adds ``trainer_state.json`` and ``COMPLETE``,
and renames the directory into place. A crash of any rank at any moment leaves the previous
checkpoint as the latest: a directory without ``COMPLETE``, or whose ``COMPLETE`` names more
ranks than it has markers, is ignored by :func:`latest_checkpoint`. On a multi-node job the
output must be one shared (ReadWriteMany) volume: rank 0 commits only when it sees the
other nodes' markers.

On resume, rank 0 chooses the checkpoint and every rank checks that it sees the same one
complete (:meth:`CheckpointManager.agreed_latest`), so no rank resumes another step than
its peers.

The pure parts (naming, listing, choosing what to prune) are separate from the save itself so
they can be tested without processes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
BEST_FILE = "best.json"
PARTS_DIR = "parts"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or agreed on by every rank (retryable: exit 1)."""


def part_marker(rank: int) -> str:
    """Name of rank ``rank``'s marker under ``parts/``: its part is written and synced."""
    return f"rank-{rank:05d}"


def missing_parts(path: Path, world: int) -> list[int]:
    """Ranks of ``range(world)`` whose part marker is not in checkpoint ``path``."""
    return [r for r in range(world) if not (path / PARTS_DIR / part_marker(r)).is_file()]


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint at optimizer step ``step``."""
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a fully written checkpoint: committed (``COMPLETE``, trainer state)
    with every rank's part marker that ``COMPLETE`` names. A ``COMPLETE`` holding only the step
    (checkpoints from before per-rank parts) counts on its own."""
    if not (
        path.is_dir() and (path / COMPLETE_MARKER).is_file() and (path / TRAINER_STATE).is_file()
    ):
        return False
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return False
    world = marker.get("world") if isinstance(marker, dict) else None
    if not isinstance(world, int):
        return isinstance(marker, int)  # "<step>\n": an older checkpoint, committed by rank 0
    return not missing_parts(path, world)


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_best(root: Path) -> dict[str, Any] | None:
    """The best-checkpoint record, if one was written and still exists."""
    try:
        best: dict[str, Any] = json.loads((root / BEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return best if is_complete(Path(best.get("path", ""))) else None


def to_prune(checkpoints: list[tuple[int, Path]], *, keep: int, best: Path | None) -> list[Path]:
    """Checkpoints beyond the newest ``keep``, except the best one."""
    old = checkpoints[:-keep] if keep > 0 else checkpoints
    return [p for _, p in old if best is None or p.resolve() != best.resolve()]


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The loop's own state saved in a checkpoint."""
    state: dict[str, Any] = json.loads((path / TRAINER_STATE).read_text())
    return state


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` from this node. Each rank calls it for
    the part it wrote: on a network file system (a ReadWriteMany claim) only the writer's
    fsync makes its data durable; syncing another node's (already closed) files is cheap.

    The other ranks write into the same directory meanwhile, and their writers (torch's,
    safetensors') go through temporary files that they rename: a file or directory that
    vanishes between the listing and the open is another rank's, which its own rank syncs
    under its final name, so it is skipped rather than failing this rank's part.
    """
    for top, dirs, files in os.walk(root):  # os.walk skips a directory that vanished
        for name in files:
            try:
                with open(os.path.join(top, name), "rb") as fh:
                    os.fsync(fh.fileno())
            except FileNotFoundError:
                continue
        for name in dirs:
            _fsync_dir(Path(top, name))
    _fsync_dir(root)


def ranks_agreeing(ok: bool) -> int:
    """Collective: how many ranks say ``ok`` (through :mod:`kubegraft_trainer.collectives`,
    so on the process group's device)."""
    import torch

    from kubegraft_trainer.collectives import gather_all

    return int(gather_all(torch.tensor([1 if ok else 0], dtype=torch.int64)).sum().item())


@dataclass
class CheckpointManager:
    """Saves and prunes the checkpoints of one run; every process calls :meth:`save`."""

    root: Path
    keep: int

    def save(
        self,
        accelerator: Any,
        *,
        step: int,
        trainer_state: dict[str, Any],
        metric: float | None = None,
        is_best: bool = False,
    ) -> Path | None:
        """Write the checkpoint of ``step``; returns its final path, or None when rank 0 did
        not see every rank's part (an output not shared by all nodes: nothing is committed).

        Collective: every process must call it at the same step. Raises
        :class:`CheckpointError` on every rank when any rank failed to write its part.
        """
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".tmp-{checkpoint_name(step)}"
        main = accelerator.is_main_process
        rank, world = accelerator.process_index, accelerator.num_processes
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        failure: BaseException | None = None
        try:
            accelerator.save_state(str(tmp))
            _fsync_tree(tmp)  # this rank's part is durable from its own node ...
            (tmp / PARTS_DIR).mkdir(exist_ok=True)
            record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid()}
            _write_synced(tmp / PARTS_DIR / part_marker(rank), json.dumps(record) + "\n")
            _fsync_dir(tmp / PARTS_DIR)  # ... and only then says so
        except Exception as exc:
            failure = exc
        written = ranks_agreeing(failure is None)
        if written < world:
            raise CheckpointError(
                f"checkpoint {final.name}: {world - written} of {world} ranks could not write "
                f"their part" + (f" (this rank: {failure})" if failure else "")
            ) from failure
        committed: Path | None = final
        if main:
            missing = missing_parts(tmp, world)
            if missing:
                log.error(
                    "checkpoint %s not committed: the parts of rank(s) %s are not in %s; the "
                    "output must be one volume shared by all nodes (a ReadWriteMany "
                    "persistentVolumeClaim)",
                    final.name,
                    missing,
                    self.root,
                )
                committed = None
            else:
                self._commit(tmp, final, step=step, world=world, trainer_state=trainer_state)
                if is_best:
                    record = {"path": str(final), "step": step, "metric": metric}
                    tmp_best = self.root / f".{BEST_FILE}.tmp"
                    _write_synced(tmp_best, json.dumps(record))
                    os.replace(tmp_best, self.root / BEST_FILE)
                self.prune()
        accelerator.wait_for_everyone()
        return committed

    def _commit(
        self, tmp: Path, final: Path, *, step: int, world: int, trainer_state: dict[str, Any]
    ) -> None:
        """Rank 0, once every rank's part is in ``tmp``: the trainer state, the COMPLETE
        marker, and the atomic rename into place."""
        state = dict(trainer_state, step=step, saved_at=time.time())
        _write_synced(tmp / TRAINER_STATE, json.dumps(state, indent=2, sort_keys=True))
        _write_synced(tmp / COMPLETE_MARKER, json.dumps({"step": step, "world": world}) + "\n")
        _fsync_dir(tmp)
        if final.exists():
            # Re-saving a step (a resumed run that reaches it again): move the old one aside
            # first so the rename below is atomic, then drop it.
            trash = self.root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.root)

    def agreed_latest(self, accelerator: Any) -> Path | None:
        """Collective: the checkpoint to resume from, rank 0's latest complete one, which every
        rank must see complete too (all ranks resume the same step, or none starts).

        Raises :class:`CheckpointError` when some rank does not see it (an output not shared
        by all nodes, or a file system that has not caught up yet: retryable)."""
        mine = self.latest()
        choice: list[str | None] = [mine.name if mine is not None else None]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(choice, from_process=0)
        path = self.root / choice[0] if choice[0] else None
        sees = path is None or is_complete(path)
        agreeing = ranks_agreeing(sees)
        if agreeing < accelerator.num_processes:
            raise CheckpointError(
                f"rank 0 resumes from {path}, which {accelerator.num_processes - agreeing} "
                "rank(s) do not see complete; the output must be one volume shared by all "
                "nodes (a ReadWriteMany persistentVolumeClaim)"
            )
        return path

    def prune(self) -> list[Path]:
        """Delete complete checkpoints beyond the last K (keeping the best) and stale temp dirs."""
        best = read_best(self.root)
        removed = to_prune(
            list_checkpoints(self.root), keep=self.keep, best=Path(best["path"]) if best else None
        )
        # Called right after a rename, when no save is in progress: any temp dir left is debris
        # of a crashed save.
        removed += [
            p for p in self.root.iterdir() if p.is_dir() and p.name.startswith((".tmp-", ".old-"))
        ]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
        return removed

    def latest(self) -> Path | None:
        """The latest complete checkpoint."""
        return latest_checkpoint(self.root)
