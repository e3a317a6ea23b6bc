"""Preemption: turning SIGTERM into "save what is worth saving, then exit 75" in every phase.

Kubernetes sends SIGTERM before it kills a pod (node drain, spot reclaim, a gang restart);
torchrun forwards it to every trainer process and SIGKILLs them after its shutdown timeout
(the pod's grace period less a margin, :func:`kubegraft.launch.shutdown_timeout_seconds`).
What the handler does depends on the phase the process is in:

* **Interruptible phases** (:meth:`PreemptionFlag.interruptible`: loading the data and the
  model, building the wrapper, reading a checkpoint, exporting after the last checkpoint):
  nothing new would be lost, so the handler raises :class:`Preempted` at once, in the middle
  of a download or a ``from_pretrained``; no collective is involved, each rank leaves alone.
* **Everywhere else** (training steps, feature caching, evaluation, saving) the handler only
  sets a flag: saving inside a signal handler would race with the step in flight and with the
  other ranks. The loop polls :meth:`PreemptionFlag.agreed` once per optimizer step, once per
  feature-caching and evaluation batch (every rank runs the same number of batches, so the
  polls line up) and after a save; it all-reduces the flag, so every rank stops at the same
  point, and a rank that got the signal a moment later still joins the same collective save.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.collectives import any_rank

log = logging.getLogger(__name__)


class Preempted(BaseException):
    """SIGTERM was honoured: progress worth keeping was saved; the process should exit 75.

    A BaseException, like KeyboardInterrupt: raised from the handler in the middle of library
    code, it must not be caught by an ``except Exception`` that would turn it into another
    error (the model loader maps every load failure to a ConfigError, exit 78)."""

    exit_code = int(ExitCode.PREEMPTED)


class PreemptionFlag:
    """Set by SIGTERM (or SIGINT); read collectively by the loop, or raised at once inside
    :meth:`interruptible`."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._interrupt_phase: str | None = None

    def install(
        self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Install the handler for ``signals`` (main thread only)."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        phase, self._interrupt_phase = self._interrupt_phase, None
        if phase is not None:
            raise Preempted(f"{self.signal_name} while {phase}: nothing new to save, exiting")
        log.warning("%s received: will save what is new and exit", self.signal_name)

    @contextmanager
    def interruptible(self, phase: str) -> Iterator[None]:
        """Inside, a signal raises :class:`Preempted` at once (and on entry, when one came
        already). Only for phases with nothing to save and no collective that another rank
        needs this one to finish."""
        if self.requested:
            raise Preempted(f"{self.signal_name} before {phase}: nothing new to save, exiting")
        outer, self._interrupt_phase = self._interrupt_phase, phase
        try:
            yield
        finally:
            self._interrupt_phase = outer

    def agreed(self) -> bool:
        """Whether any process was asked to stop (collective when distributed)."""
        return any_rank(self.requested)
