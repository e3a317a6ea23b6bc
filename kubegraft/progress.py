"""Training progress reports: how rank 0 tells the operator (and the local CLI) how far it got.

Rank 0 keeps one :class:`ProgressPublisher`: the loop hands it reports (phase changes, log
steps, checkpoints) and the current step, which costs a lock and never waits on the network;
a background thread sends the newest report, stamped with the time of sending, at most once
per ``min_gap`` seconds and at least once per ``interval`` seconds (the heartbeat,
``runPolicy.progressIntervalSeconds``), so a long feature cache, evaluation or slow step is
seen alive by the operator, whose stall rule watches the heartbeat and the step.

Where a report goes is a :class:`ProgressSink`, chosen by the environment the launcher set, so
the trainer does not know whether it runs under the operator or ``kubegraft run``:

- ``KUBEGRAFT_PROGRESS_FILE``: the report is written atomically to that file (JSON).
- ``KUBEGRAFT_PROGRESS_URL``: the report is POSTed to the operator's progress endpoint (the
  URL names the job), over one kept-alive HTTPS connection that trusts only the operator's CA
  (``KUBEGRAFT_PROGRESS_CA``, PEM), with a projected ServiceAccount token of the audience
  :data:`PROGRESS_AUDIENCE` (``KUBEGRAFT_PROGRESS_TOKEN_FILE``). The operator verifies the
  token with a TokenReview and accepts the report only from the job's own rank 0 pod (the
  token is bound to it). That token is no API credential (the API server refuses its
  audience), and the pod needs no RBAC object of its own (docs/operator.md, "Progress").

This module is in the light core: no torch, no kubernetes client (plain HTTPS, http.client).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

log = logging.getLogger(__name__)

ENV_PROGRESS_FILE = "KUBEGRAFT_PROGRESS_FILE"
ENV_PROGRESS_URL = "KUBEGRAFT_PROGRESS_URL"
ENV_PROGRESS_CA = "KUBEGRAFT_PROGRESS_CA"
ENV_PROGRESS_TOKEN_FILE = "KUBEGRAFT_PROGRESS_TOKEN_FILE"
PROGRESS_AUDIENCE = "progress.kubegraft.io"
"""The audience of rank 0's projected token: the operator's TokenReviews ask for it, and the
API server accepts no token of it (its own audience is the API server's)."""
PROGRESS_TOKEN_DIR = "/var/run/secrets/kubegraft/progress"
SEND_TIMEOUT_SECONDS = 10.0
"""One send waits at most this long for the operator (the thread, never the loop)."""
NOT_HERE_RETRIES = 3
"""A 503 comes from an operator replica that does not reconcile the job (a paused peer): a
fresh connection may reach the one that does (the Service balances connections)."""


class ProgressReport(BaseModel):
    """One progress report from rank 0 (all fields optional except step)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: str = "training"
    """loading, caching (frozen features), training, evaluating, saving or done."""
    step: int = Field(default=0, ge=0)
    total_steps: int | None = None
    epoch: float | None = None
    samples_per_second: float | None = None
    eta_seconds: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    eval_sets: dict[str, dict[str, float]] | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    latest_checkpoint: str | None = None
    latest_checkpoint_step: int | None = None
    best_checkpoint: str | None = None
    best_metric: float | None = None
    time: str | None = None
    """When the report was sent (RFC 3339, UTC): every heartbeat carries a new one."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressSink(Protocol):
    """Where reports go. ``send`` may block and raise; the publisher's thread absorbs both."""

    def send(self, body: str) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """The local sink (``kubegraft run``): the report, written atomically to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, body: str) -> None:
        write_atomically(self.path, body)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"file {self.path}"


class OperatorSink:
    """The cluster sink: a POST of the report to the operator's progress endpoint, over one
    kept-alive HTTPS connection (reopened after an error). The token file is read for every
    send: projected ServiceAccount tokens are rotated by the kubelet."""

    def __init__(
        self,
        url: str,
        *,
        token_file: str | None = None,
        ca: str | None = None,
        timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https":
            raise ValueError(f"{ENV_PROGRESS_URL}={url}: the progress endpoint must be https")
        self.host, self.port = parts.hostname or "", parts.port or 443
        self.path = parts.path or "/"
        self.token_file = Path(token_file or f"{PROGRESS_TOKEN_DIR}/token")
        self.ca = ca
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        self.connections = 0
        """Connections opened so far (one, while the operator keeps it alive)."""

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            ctx = ssl.create_default_context(cadata=self.ca) if self.ca else None
            self._conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ctx
            )
            self.connections += 1
        return self._conn

    def send(self, body: str) -> None:
        token = self.token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        for _ in range(1 + NOT_HERE_RETRIES):
            conn = self._connection()
            try:
                conn.request("POST", self.path, body=body.encode(), headers=headers)
                resp = conn.getresponse()
                text = resp.read()
            except (OSError, http.client.HTTPException):
                self.close()  # a fresh connection next time
                raise
            if resp.will_close or resp.status == 503:
                self.close()
            if resp.status != 503:
                break
        if not 200 <= resp.status < 300:
            hdrs = Message()
            for k, v in resp.getheaders():
                hdrs[k] = v
            raise urllib.error.HTTPError(
                self.url, resp.status, text[:200].decode(errors="replace"), hdrs, None
            )

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"operator {self.url}"


def sinks_from_env(environ: Mapping[str, str] | None = None) -> list[ProgressSink]:
    """The sinks the launcher's environment names (none: reports go nowhere)."""
    env = os.environ if environ is None else environ
    sinks: list[ProgressSink] = []
    if path := env.get(ENV_PROGRESS_FILE):
        sinks.append(FileSink(Path(path)))
    if url := env.get(ENV_PROGRESS_URL):
        sinks.append(
            OperatorSink(
                url, token_file=env.get(ENV_PROGRESS_TOKEN_FILE), ca=env.get(ENV_PROGRESS_CA)
            )
        )
    return sinks


def _send_all(sinks: Sequence[ProgressSink], body: str, failing: set[int]) -> None:
    """Send to every sink; a sink's first failure in a row is logged, the rest are not."""
    for i, sink in enumerate(sinks):
        try:
            sink.send(body)
        except Exception as exc:
            if i not in failing:
                failing.add(i)
                log.warning(
                    "progress report to %r failed (%s: %s); training goes on, further failures "
                    "are not logged until one succeeds",
                    sink,
                    type(exc).__name__,
                    str(exc)[:200],
                )
        else:
            if i in failing:
                failing.discard(i)
                log.info("progress reports to %r work again", sink)


def publish(report: ProgressReport) -> None:
    """Send one report to every sink the environment names, now; never raises (progress is
    advisory). The loop uses :class:`ProgressPublisher`; this is for one-off reports."""
    sinks = sinks_from_env()
    body = report.model_copy(update={"time": report.time or now_rfc3339()}).to_json()
    _send_all(sinks, body, set())
    for sink in sinks:
        sink.close()


class ProgressPublisher:
    """Rank 0's reporter: non-blocking updates, a background thread that sends them
    (rate-limited to one per ``min_gap`` seconds, newest wins) and repeats the newest at least
    every ``interval`` seconds as a heartbeat, each send stamped with its own time."""

    def __init__(
        self, sinks: Sequence[ProgressSink], *, interval: float, min_gap: float = 1.0
    ) -> None:
        self.sinks = list(sinks)
        self.interval = float(interval)
        self.min_gap = min(float(min_gap), self.interval)
        self._report = ProgressReport(phase="loading")
        self._dirty = False
        self._closing = False
        self._cond = threading.Condition()
        self._failing: set[int] = set()
        self._thread: threading.Thread | None = None
        self.sent = 0
        """Reports sent so far (heartbeats included)."""

    def start(self) -> ProgressPublisher:
        if self.sinks and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="kubegraft-progress", daemon=True
            )
            self._thread.start()
        return self

    def update(
        self, report: ProgressReport | None = None, *, urgent: bool = True, **fields: Any
    ) -> None:
        """Replace the report (``report``) and/or set some of its fields; never blocks on I/O.
        ``urgent`` sends it as soon as the rate limit allows, else with the next heartbeat."""
        with self._cond:
            if report is not None:
                self._report = report.model_copy()
            for k, v in fields.items():
                setattr(self._report, k, v)
            if urgent:
                self._dirty = True
                self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Send the newest report if it was not sent yet, then stop (waits at most
        ``timeout`` seconds: a dead API server must not hold the process)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                sink.close()

    def _run(self) -> None:
        last = time.monotonic() - self.min_gap  # the first update goes out at once
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._closing or (self._dirty and now >= last + self.min_gap):
                        break
                    due = last + (self.min_gap if self._dirty else self.interval)
                    if now >= due:
                        break
                    self._cond.wait(due - now)
                if self._closing and not self._dirty:
                    return
                closing = self._closing
                body = self._report.model_copy(update={"time": now_rfc3339()}).to_json()
                self._dirty = False
            last = time.monotonic()
            _send_all(self.sinks, body, self._failing)
            self.sent += 1
            if closing:
                return
