"""Start and stop the control plane's processes by pid, and tell what went wrong.

A failed command raises :class:`CommandError`, whose text carries the command's stderr (a bare
``CalledProcessError`` prints only the exit status, which hid why a start-up failed);
:func:`is_transient` tells a hiccup of a busy API server worth retrying from a real error.

Each process runs in its own session (so Ctrl-C in the terminal that ran ``up`` does not kill
it, and it outlives the ``up`` command), logs to ``<state>/logs/<name>.log``, and is recorded as
pid + kernel start time: ``down`` only signals a pid whose start time still matches, so a
recycled pid is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TRANSIENT_ERRORS = (
    "the server could not find the requested resource",  # a new CRD not served yet
    "no matches for kind",  # discovery has not caught up with a new CRD
    "ensure crds are installed first",
    "(notfound)",  # an object just created, not yet in the cache that answers
    "not found",
    "timed out waiting for the condition",  # a short kubectl wait within a longer budget
    "too many requests",  # 429: API priority and fairness under load
    "(toomanyrequests)",
    "429",
    "the server is currently unable to handle the request",  # 503 while starting
    "(serviceunavailable)",
    "connection refused",
    "unable to connect to the server",
    "connection reset",
    "broken pipe",
    "unexpected eof",
    "tls handshake timeout",
    "i/o timeout",
    "context deadline exceeded",
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "the object has been modified",  # a conflict: re-applying resolves it
)
"""Lower-case fragments of errors that a retry can cure during start-up: an API server that is
up but busy, still starting, or whose discovery and caches lag a just-created object. Start-up
creates every object it waits on, so "not found" right after creating it is lag too."""


def is_transient(text: str) -> bool:
    """Whether an error text (a command's stderr, an exception's message) names a transient
    condition from :data:`TRANSIENT_ERRORS`."""
    lowered = text.lower()
    return any(fragment in lowered for fragment in TRANSIENT_ERRORS)


def error_is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry: a transient command failure, a command that timed out,
    or a dropped connection."""
    if isinstance(exc, subprocess.CalledProcessError):
        return is_transient(f"{exc.stderr or ''}\n{exc.output or ''}")
    if isinstance(exc, subprocess.TimeoutExpired | ConnectionError | TimeoutError):
        return True
    return is_transient(str(exc))


class CommandError(subprocess.CalledProcessError):
    """A command that exited non-zero; its text includes the command's stderr (or stdout)."""

    def __str__(self) -> str:
        argv = self.cmd if isinstance(self.cmd, str) else " ".join(str(a) for a in self.cmd)
        text = f"`{argv}` exited with {self.returncode}"
        detail = _text(self.stderr).strip() or _text(self.output).strip()
        if detail:
            lines = detail.splitlines()
            shown = "\n".join(lines[-30:])
            text += f":\n{shown}" if len(lines) > 1 else f": {shown}"
        return text


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ProcessRecord:
    """One started process, as written to ``<state>/processes.json``."""

    name: str
    pid: int
    start_ticks: int
    log: str
    argv: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(**data)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _reap(pid: int) -> None:
    # When the process is our child (pytest fixtures), collect it so it does not stay a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(record: ProcessRecord) -> bool:
    """True while the recorded process (same pid and start time) runs and is not a zombie."""
    _reap(record.pid)
    fields = _stat_fields(record.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == record.start_ticks


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG = 1: the kernel kills it when the parent process exits. SIGKILL, not
    # SIGTERM: a kube-apiserver whose etcd is gone hangs in its graceful shutdown.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def start(
    name: str,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    *,
    die_with_parent: bool = False,
) -> ProcessRecord:
    """Start ``argv`` detached, with stdout and stderr going to ``log``.

    ``die_with_parent`` (Linux) has the kernel SIGKILL it when this process exits.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=_die_with_parent if die_with_parent and sys.platform == "linux" else None,
        )
    ticks = start_ticks(proc.pid)
    # Popen keeps a handle; drop it so that its __del__ does not warn about a running child.
    proc.returncode = 0
    return ProcessRecord(name, proc.pid, ticks if ticks is not None else -1, str(log), argv)


def stop(record: ProcessRecord, timeout: float = 15.0) -> bool:
    """SIGTERM the process, SIGKILL it after ``timeout`` seconds; True once it is gone."""
    if not is_alive(record):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(record):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not is_alive(record):
            return True
        time.sleep(0.1)
    return False


def tail(path: Path | str, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file (empty if it does not exist)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
