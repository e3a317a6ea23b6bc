"""Checkpoints: written atomically, found reliably, pruned to the last K plus the best.

Layout under ``<output.path>/checkpoints/``::

    step-00000120/          a complete checkpoint (Accelerate state + trainer_state.json + COMPLETE)
    .tmp-step-00000140/     one being written; never taken as the latest
    best.json               {"path": ..., "step": ..., "metric": ...}

Every process writes its part of the Accelerate state (model, optimizer, scheduler, RNG per
process; DeepSpeed writes its own shards) into the ``.tmp-`` directory; after a barrier rank 0
adds ``trainer_state.json`` (epoch, batches done, freeze stage, early-stopping state, label
names...) and the ``COMPLETE`` marker, fsyncs and renames the directory into place. A crash at
any moment leaves either the previous checkpoint or the new one, never half of one: a
directory without ``COMPLETE`` is ignored by :func:`latest_checkpoint`.

The pure parts (naming, listing, choosing what to prune) are separate from the save itself so
they can be tested without processes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
BEST_FILE = "best.json"
_NAME = re.compile(r"^step-(\d{8,})$")


def checkpoint_name(step: int) -> str:
    """Directory name of the checkpoint at optimizer step ``step``."""
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a fully written checkpoint."""
    return path.is_dir() and (path / COMPLETE_MARKER).is_file() and (path / TRAINER_STATE).is_file()


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
    ) -> Path:
        """Write the checkpoint of ``step`` atomically; returns its final path.

        Collective: every process must call it at the same step.
        """
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".tmp-{checkpoint_name(step)}"
        main = accelerator.is_main_process
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            state = dict(trainer_state, step=step, saved_at=time.time())
            _write_synced(tmp / TRAINER_STATE, json.dumps(state, indent=2, sort_keys=True))
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            _write_synced(tmp / COMPLETE_MARKER, f"{step}\n")
            _fsync_dir(tmp)
            if final.exists():
                # Re-saving a step (a resumed run that reaches it again): move the old one aside
                # first so the rename below is atomic, then drop it.
                trash = self.root / f".old-{final.name}-{os.getpid()}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            if is_best:
                record = {"path": str(final), "step": step, "metric": metric}
                tmp_best = self.root / f".{BEST_FILE}.tmp"
                _write_synced(tmp_best, json.dumps(record))
                os.replace(tmp_best, self.root / BEST_FILE)
            self.prune()
        accelerator.wait_for_everyone()
        return final

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
