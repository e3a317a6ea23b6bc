"""Test-only: SIGKILL one rank in the middle of a checkpoint save (loaded through PYTHONPATH by
tests/trainer/test_multinode_checkpoint.py; nothing in the packages users run knows of it).

With ``KUBEGRAFT_TEST_KILL_RANK=R`` and ``KUBEGRAFT_TEST_KILL_STEP=S``, the worker whose RANK is
R wraps ``accelerate.Accelerator.save_state``: when it saves the checkpoint of step S, the
rank's part is written (the original save_state returned) and the process kills itself before
it can mark its part written or agree with its peers -- the moment a commit by rank 0 alone
would have been premature.
"""

from __future__ import annotations

import os
import signal

_RANK = os.environ.get("KUBEGRAFT_TEST_KILL_RANK")
_STEP = os.environ.get("KUBEGRAFT_TEST_KILL_STEP")

if _RANK is not None and _STEP is not None and os.environ.get("RANK") == _RANK:
    import accelerate

    _original = accelerate.Accelerator.save_state
    _target = f"step-{int(_STEP):08d}"

    def _save_state_then_die(self, output_dir=None, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = _original(self, output_dir, *args, **kwargs)
        if output_dir is not None and str(output_dir).endswith(_target):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    accelerate.Accelerator.save_state = _save_state_then_die  # type: ignore[method-assign]
