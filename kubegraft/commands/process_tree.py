"""The processes of a local run, found and stopped as one: what Ctrl-C on ``kubegraft run``
acts on.

``kubegraft run`` starts the node supervisor in a session of its own (a Ctrl-C in the
terminal reaches ``kubegraft run`` only, which then decides what to send). The supervisor
starts torchrun in that session, but torchrun starts every trainer process in a *new* session
(torch.distributed.elastic's subprocess handler), so a signal to the supervisor's process
group never reaches the trainers, and killing torchrun leaves them running as orphans. A
stop therefore acts on the whole tree of descendants, remembered while their parents were
alive (an orphan's parent is no longer its launcher). Each process is remembered with its
start time, so a PID the kernel has since reused is never signalled.

Descendants are read from ``/proc`` (Linux); elsewhere the tree is the supervisor's process
group alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    rest = text[text.rindex(")") + 2 :].split()
    if rest[0] == "Z":  # a zombie has exited; its parent only has to reap it
        return None
    return int(rest[1]), int(rest[19])


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                found.setdefault(st[0], []).append(int(entry.name))
    return found


@dataclass
class ProcessTree:
    """A root process and every descendant seen so far (PID -> start time)."""

    root: int
    seen: dict[int, int] = field(default_factory=dict)

    def refresh(self) -> None:
        """Remember the descendants alive now (the ones seen before stay remembered)."""
        children = _children()
        todo = [self.root]
        while todo:
            pid = todo.pop()
            st = _stat(pid)
            if st is not None:
                self.seen.setdefault(pid, st[1])
            todo.extend(children.get(pid, []))

    def alive(self) -> list[int]:
        """The remembered processes still running (and still the same processes)."""
        out = []
        for pid, started in self.seen.items():
            st = _stat(pid)
            if st is not None and st[1] == started:
                out.append(pid)
        return out

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the root's process group and to every remembered descendant."""
        self.refresh()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.root, sig)
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
