"""Preemption: turning SIGTERM into "checkpoint at the next step boundary, then exit 75".

Kubernetes sends SIGTERM before it kills a pod (node drain, spot reclaim, a gang restart);
torchrun forwards it to every trainer process. The handler only sets a flag: saving inside a
signal handler would race with the step in flight and with the other ranks. The loop polls
:meth:`PreemptionFlag.agreed` once per optimizer step, which all-reduces the flag, so every rank
stops at the same step (a rank that got the signal a moment later still joins the same
collective checkpoint) and exits with ``ExitCode.PREEMPTED``.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

from kubegraft_trainer.collectives import any_rank

log = logging.getLogger(__name__)


class PreemptionFlag:
    """Set by SIGTERM (or SIGINT); read collectively by the loop."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def install(
        self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Install the handler for ``signals`` (main thread only)."""
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s received: will checkpoint at the next step boundary and exit", self.signal_name
        )

    def agreed(self) -> bool:
        """Whether any process was asked to stop (collective when distributed)."""
        return any_rank(self.requested)
