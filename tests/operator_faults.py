"""``python -m operator_faults N [kopf run options]``: the real operator, dying (exit 137, as if
SIGKILLed) right after its N-th successful create, i.e. half-way through a reconcile.

Test code: the idempotency test (tests/integration/test_operator_robustness.py) starts it
through :class:`operator_harness.OperatorProcess` (``exit_after_creates=N``). It patches the
operator from the outside, so the packages users run carry no fault-injection seam:

- :meth:`kubegraft_operator.apply.Api.create_if_absent` counts what it created (not what
  existed already) and ends the process at the N-th;
- the reconciler's create fan-out runs inline, one create after the other in wave order, so
  exactly N objects exist when it dies, and always the same N.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class InlineExecutor:
    """The part of an executor the reconciler's fan-out uses, running each call at once."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as e:
            future.set_exception(e)
        return future

    def shutdown(self, wait: bool = True, **_: Any) -> None:
        pass


def install(limit: int) -> None:
    """Patch the operator in this process to die after ``limit`` creates."""
    from kubegraft_operator import apply, reconciler

    lock = threading.Lock()
    created = 0
    create = apply.Api.create_if_absent

    def create_if_absent(self: apply.Api, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        nonlocal created
        with lock:
            answer = create(self, obj)
            if answer[1]:
                created += 1
                if created >= limit:
                    os._exit(137)
            return answer

    init = reconciler.Reconciler.__init__

    def reconciler_init(self: reconciler.Reconciler, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.fanout = InlineExecutor()  # type: ignore[assignment]

    apply.Api.create_if_absent = create_if_absent  # type: ignore[method-assign]
    reconciler.Reconciler.__init__ = reconciler_init  # type: ignore[method-assign]


def main() -> None:
    limit = int(sys.argv[1])
    install(limit)
    from kubegraft_operator.__main__ import main as run_operator

    run_operator(sys.argv[2:])


if __name__ == "__main__":
    main()
