"""Errors the trainer turns into exit codes.

A :class:`ConfigError` is a permanent problem with the job itself (a bad manifest, a missing,
corrupt or mismatched checkpoint, unusable data): retrying cannot help, so the entrypoint
exits with ``kubegraft.exitcodes.ExitCode.CONFIG_ERROR`` (78) and the operator fails the job at
once instead of restarting the gang. Messages start with the manifest field they concern,
e.g. ``spec.model.checkpoint: ...``, so the user knows what to fix.

A :class:`RetryableError` is the opposite: a problem outside the job that may go away (the
Hugging Face Hub down, rate-limiting or unreachable). The entrypoint exits with ``FAILURE``
(1, retryable) and records the short reason rather than a traceback.
"""

from __future__ import annotations

from kubegraft.exitcodes import ExitCode


class ConfigError(Exception):
    """Bad manifest, missing/corrupt/mismatched checkpoint, unusable data -> exit code 78.

    The message names the field, e.g. ``spec.model.checkpoint: no such file /x.pth``.
    """

    exit_code: int = int(ExitCode.CONFIG_ERROR)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class RetryableError(Exception):
    """A failure outside the job that may go away by itself -> exit code 1 (the operator
    restarts the gang after its back-off). The message says what failed and why."""

    exit_code: int = int(ExitCode.FAILURE)

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)
