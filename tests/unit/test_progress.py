"""Progress reports reach the file sink atomically and never break training on failure; the
publisher's thread sends heartbeats, never blocks the caller, is rate-limited, logs a failure
once and reuses one connection to the operator's progress endpoint."""

from __future__ import annotations

import http.server
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from operator_harness import progress_tls_dir

from kubegraft.progress import (
    ENV_PROGRESS_CA,
    ENV_PROGRESS_FILE,
    ENV_PROGRESS_TOKEN_FILE,
    ENV_PROGRESS_URL,
    OperatorSink,
    ProgressPublisher,
    ProgressReport,
    publish,
    sinks_from_env,
)

pytestmark = pytest.mark.unit


def test_report_written_to_file_as_camel_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "progress.json"
    monkeypatch.setenv(ENV_PROGRESS_FILE, str(target))
    publish(ProgressReport(step=7, total_steps=10, train_loss=0.5))
    data = json.loads(target.read_text())
    assert data["step"] == 7
    assert data["totalSteps"] == 10
    assert data["trainLoss"] == 0.5
    assert list(tmp_path.glob("sub/.progress.json.*")) == []  # no temp file left behind


def test_unreachable_operator_sink_does_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_PROGRESS_FILE, raising=False)
    (tmp_path / "token").write_text("t")
    monkeypatch.setenv(
        ENV_PROGRESS_URL, "https://127.0.0.1:1/v1/namespaces/ns/finetunejobs/j/progress"
    )
    monkeypatch.setenv(ENV_PROGRESS_TOKEN_FILE, str(tmp_path / "token"))
    publish(ProgressReport(step=1))  # must return quietly


def test_operator_sink_refuses_plain_http() -> None:
    with pytest.raises(ValueError, match="must be https"):
        OperatorSink("http://operator:8443/v1/namespaces/ns/finetunejobs/j/progress")


def test_round_trip_accepts_wire_names() -> None:
    r = ProgressReport.model_validate_json('{"step": 3, "samplesPerSecond": 12.5, "f1": 0.7}')
    assert r.samples_per_second == 12.5
    assert r.f1 == 0.7


# ------------------------------------------------------------------------ the publisher


class RecordingSink:
    """A sink that records what it is sent; ``gate`` (when set) holds every send until opened,
    as a hung API server would."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.bodies: list[dict[str, object]] = []
        self.gate = gate
        self.lock = threading.Lock()

    def send(self, body: str) -> None:
        if self.gate is not None:
            self.gate.wait()
        with self.lock:
            self.bodies.append(json.loads(body))

    def close(self) -> None:
        pass


class FailingSink:
    def __init__(self) -> None:
        self.calls = 0

    def send(self, body: str) -> None:
        self.calls += 1
        raise ConnectionRefusedError("no API server")

    def close(self) -> None:
        pass


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_heartbeats_repeat_the_newest_report_with_fresh_times() -> None:
    sink = RecordingSink()
    pub = ProgressPublisher([sink], interval=1.0, min_gap=0.1).start()
    try:
        pub.update(ProgressReport(phase="caching", step=0))
        pub.update(step=4, urgent=False)  # the step rides on the next heartbeat
        # nothing new is reported for 3+ intervals: the heartbeats still come
        assert wait_until(lambda: len({b["time"] for b in sink.bodies}) >= 3)
    finally:
        pub.close()
    assert sink.bodies[0]["phase"] == "caching"
    assert all(b["phase"] == "caching" for b in sink.bodies)
    assert sink.bodies[-1]["step"] == 4


def test_update_never_waits_for_a_hung_sink_and_the_newest_wins() -> None:
    gate = threading.Event()
    sink = RecordingSink(gate)
    pub = ProgressPublisher([sink], interval=60.0, min_gap=0.0).start()
    try:
        pub.update(ProgressReport(step=1))
        started = time.monotonic()
        for step in range(2, 2002):
            pub.update(ProgressReport(step=step))
        # 2,000 updates while the one send in flight hangs: they only took a lock each
        # (a generous bound: one blocked send would take forever)
        assert time.monotonic() - started < 10
        gate.set()
        assert wait_until(lambda: any(b["step"] == 2001 for b in sink.bodies))
    finally:
        gate.set()
        pub.close()
    # coalesced: the hung send, then the newest report, not 2,000 sends
    assert len(sink.bodies) <= 3
    assert sink.bodies[-1]["step"] == 2001


def test_sends_are_rate_limited() -> None:
    sink = RecordingSink()
    pub = ProgressPublisher([sink], interval=60.0, min_gap=0.5).start()
    try:
        burst_started = time.monotonic()
        for step in range(200):
            pub.update(ProgressReport(step=step))
            time.sleep(0.005)
        burst = time.monotonic() - burst_started
        assert wait_until(lambda: bool(sink.bodies) and sink.bodies[-1]["step"] == 199)
    finally:
        pub.close()
    # at most one send per 0.5 s over the burst, plus the first and the last
    assert len(sink.bodies) <= burst / 0.5 + 2
    assert len(sink.bodies) < 200


def test_close_flushes_the_last_report() -> None:
    sink = RecordingSink()
    pub = ProgressPublisher([sink], interval=60.0, min_gap=30.0).start()
    pub.update(ProgressReport(step=1))
    assert wait_until(lambda: len(sink.bodies) == 1)
    pub.update(ProgressReport(step=9, phase="done"))  # held back by the 30 s rate limit
    pub.close()
    assert sink.bodies[-1]["phase"] == "done"
    assert sink.bodies[-1]["step"] == 9


def test_only_the_first_failure_in_a_row_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    failing = FailingSink()
    pub = ProgressPublisher([failing], interval=0.05, min_gap=0.01).start()
    with caplog.at_level(logging.WARNING, logger="kubegraft.progress"):
        pub.update(ProgressReport(step=1))
        assert wait_until(lambda: failing.calls >= 5)
        pub.close()
    warnings = [r for r in caplog.records if "progress report to" in r.getMessage()]
    assert len(warnings) == 1
    assert "ConnectionRefusedError" in warnings[0].getMessage()


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """The operator's endpoint as rank 0 sees it: keep-alive HTTPS; the first request gets a
    503 (a replica that does not reconcile the job), which closes that connection."""

    protocol_version = "HTTP/1.1"
    peers: ClassVar[set[tuple[str, int]]] = set()
    bodies: ClassVar[list[dict[str, object]]] = []
    requests = 0

    def do_POST(self) -> None:
        cls = type(self)
        cls.requests += 1
        cls.peers.add(self.client_address)
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        assert self.headers["Authorization"] == "Bearer t0k"
        assert self.path == "/v1/namespaces/ns/finetunejobs/job/progress"
        if cls.requests == 1:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            return
        cls.bodies.append(body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_operator_sink_retries_a_503_elsewhere_then_reuses_one_connection(
    tmp_path: Path,
) -> None:
    tls = progress_tls_dir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls / "tls.crt", tls / "tls.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    (tmp_path / "token").write_text("t0k\n")
    try:
        env = {
            ENV_PROGRESS_URL: f"https://127.0.0.1:{server.server_address[1]}"
            "/v1/namespaces/ns/finetunejobs/job/progress",
            ENV_PROGRESS_TOKEN_FILE: str(tmp_path / "token"),
            ENV_PROGRESS_CA: (tls / "ca.crt").read_text(),
        }
        (sink,) = sinks_from_env(env)
        assert isinstance(sink, OperatorSink)
        for step in range(5):
            sink.send(ProgressReport(step=step).to_json())
        sink.close()
    finally:
        server.shutdown()
        server.server_close()
    # The 503 closed the first connection; the retry and all later reports share the second.
    assert sink.connections == 2
    assert len(_CountingHandler.peers) == 2
    assert [b["step"] for b in _CountingHandler.bodies] == [0, 1, 2, 3, 4]
