"""The trainer's exit codes: the contract between the trainer and the operator.

The operator decides from a worker's exit code whether to restart the gang (retryable) or fail
the job at once (permanent). Codes follow sysexits.h where one fits.

| code | name            | meaning                                                    | operator |
|------|-----------------|------------------------------------------------------------|----------|
| 0    | SUCCESS         | training finished, model exported                          | Succeeded |
| 1    | FAILURE         | an unexpected error (a bug, a lost peer, an NCCL error)    | restart  |
| 75   | PREEMPTED       | SIGTERM received; a checkpoint was saved before exiting    | restart  |
| 78   | CONFIG_ERROR    | bad manifest, missing/corrupt checkpoint, unusable data    | Failed   |
| 137  | (SIGKILL)       | killed, usually out of memory (set by the kernel, not us)  | restart  |
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``python -m kubegraft_trainer`` (and of each torchrun worker)."""

    SUCCESS = 0
    FAILURE = 1
    PREEMPTED = 75
    CONFIG_ERROR = 78


def is_permanent(code: int) -> bool:
    """Whether a worker exit code means retrying cannot help (the job fails at once)."""
    return code == ExitCode.CONFIG_ERROR


def describe(code: int) -> str:
    """A CamelCase reason for a worker's exit code, for conditions and events."""
    if code == ExitCode.SUCCESS:
        return "Completed"
    if code == ExitCode.CONFIG_ERROR:
        return "ConfigurationError"
    if code == ExitCode.PREEMPTED:
        return "Preempted"
    if code == 137:
        return "OOMKilledOrKilled"
    if code == 143:
        return "Terminated"
    return "WorkerFailed"
