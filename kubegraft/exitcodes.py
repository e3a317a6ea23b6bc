"""The trainer's exit codes: the contract between the trainer and the operator.

The operator decides from a worker's exit code whether to restart the gang (retryable) or fail
the job at once (permanent). Codes follow sysexits.h where one fits.

| code | name            | meaning                                                    | operator |
|------|-----------------|------------------------------------------------------------|----------|
| 0    | SUCCESS         | training finished, model exported                          | Succeeded |
| 1    | FAILURE         | an unexpected error (a bug, a lost peer, an NCCL error), or | restart  |
|      |                 | a Hub that is down, rate-limiting, slow or unreachable     |          |
| 75   | PREEMPTED       | SIGTERM received; a checkpoint was saved before exiting    | restart  |
| 78   | CONFIG_ERROR    | bad manifest, missing/corrupt checkpoint, unusable data,   | Failed   |
|      |                 | a Hub repo/revision that is missing or denied (401/403/404) |          |
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


def node_exit_code(launcher_code: int, worker_codes: list[int]) -> int:
    """The one exit code of a node, from torchrun's code and its workers' own codes.

    torchrun reports any failed worker as 1, which would hide a configuration error (permanent)
    or a preemption behind a generic failure; each worker records its own code, and the most
    telling one wins: configuration error, then preemption, then plain failure.
    """
    if launcher_code == 0:
        return int(ExitCode.SUCCESS)
    for code in (ExitCode.CONFIG_ERROR, ExitCode.PREEMPTED, ExitCode.FAILURE):
        if code in worker_codes:
            return int(code)
    return launcher_code if launcher_code > 0 else int(ExitCode.FAILURE)
