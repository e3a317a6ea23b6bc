"""Hub failures: retryable (exit 1, with the reason) versus the job's configuration (exit 78).

A local HTTP server on 127.0.0.1 answers like the Hugging Face Hub (its status codes and its
``X-Error-Code`` headers), and huggingface_hub's real client talks to it: in-process for each
class of failure (``huggingface_hub.constants.ENDPOINT`` is what ``HF_ENDPOINT`` sets at
import), and through the trainer's entrypoint in a fresh process with ``HF_ENDPOINT`` in its
environment, to check the exit codes and the recorded reason.

Permanent: 401, 403 (gated), 404 (no such repo) and a revision that does not exist.
Retryable: 500, 503, 429, a Hub that does not answer in time, a refused connection.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import KAOMOJI, log_text, run_single, write_job

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.errors import ConfigError, RetryableError
from kubegraft_trainer.pretrained import load_model

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(300)]

RELEASE = threading.Event()
"""Set at teardown: lets the 'slow' handler go."""

# repo name -> (status, X-Error-Code) answered to the repo-info call
ANSWERS: dict[str, tuple[int, str | None]] = {
    "error": (500, None),
    "down": (503, None),
    "busy": (429, None),
    "private": (401, "RepoNotFound"),
    "gated": (403, "GatedRepo"),
    "missing": (404, "RepoNotFound"),
}


class FakeHub(http.server.BaseHTTPRequestHandler):
    """``GET /api/models/<org>/<name>/revision/<rev>``, as the Hub's repo-info endpoint."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        name = parts[3] if len(parts) > 3 else ""
        revision = parts[5] if len(parts) > 5 else "main"
        if name == "slow":
            RELEASE.wait(60)  # never answers within the client's timeout
            return
        if revision == "no-such-revision":
            self._answer(404, "RevisionNotFound")
            return
        self._answer(*ANSWERS.get(name, (500, None)))

    def _answer(self, status: int, code: str | None) -> None:
        body = json.dumps({"error": f"fake hub says {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        RELEASE.set()
        server.shutdown()
        server.server_close()


def refused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


@pytest.fixture
def client_at(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DOWNLOAD_TIMEOUT", 2)

    def point(endpoint: str) -> None:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)

    return point


def spec(repo: str, revision: str | None = None) -> FineTuneJobSpec:
    model: dict[str, Any] = {"checkpoint": f"hf://org/{repo}", "task": "sequence-classification"}
    if revision:
        model["revision"] = revision
    return FineTuneJobSpec.model_validate(
        {
            "model": model,
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
        }
    )


@pytest.mark.parametrize(
    ("repo", "revision", "reason"),
    [
        ("private", None, r"access denied \(HTTP 401"),
        ("gated", None, r"access denied \(HTTP 403, GatedRepoError\)"),
        ("missing", None, r"not found on the Hub \(HTTP 404"),
        ("model", "no-such-revision", r"revision not found on the Hub \(RevisionNotFoundError\)"),
    ],
)
def test_permanent_hub_errors_are_config_errors(
    hub: str, client_at: Any, repo: str, revision: str | None, reason: str
) -> None:
    client_at(hub)
    where = f"hf://org/{repo}" + (f"@{revision}" if revision else "")
    with pytest.raises(
        ConfigError, match=rf"^spec\.model\.checkpoint: cannot fetch {where}: {reason}"
    ):
        load_model(spec(repo, revision), num_labels=2)


@pytest.mark.parametrize(
    ("repo", "reason"),
    [
        ("error", r"the Hub answered HTTP 500"),
        ("down", r"the Hub answered HTTP 503"),
        ("busy", r"rate-limited by the Hub \(HTTP 429"),
        ("slow", r"the Hub did not answer in time \(ReadTimeout\)"),
    ],
)
def test_transient_hub_errors_are_retryable(
    hub: str, client_at: Any, repo: str, reason: str
) -> None:
    client_at(hub)
    with pytest.raises(RetryableError, match=rf"cannot fetch hf://org/{repo}: {reason}") as err:
        load_model(spec(repo), num_labels=2)
    assert not isinstance(err.value, ConfigError)


def test_refused_connection_is_retryable(client_at: Any) -> None:
    client_at(refused_endpoint())
    with pytest.raises(RetryableError, match=r"the Hub is unreachable \(ConnectError"):
        load_model(spec("model"), num_labels=2)


def _entrypoint_job(tmp_path: Path, repo: str) -> Path:
    return write_job(
        tmp_path / f"{repo}.yaml",
        repo,
        {
            "model": {"checkpoint": f"hf://org/{repo}", "task": "sequence-classification"},
            "dataset": {
                "train": {"uri": KAOMOJI},
                "textField": "text",
                "labelField": "category",
                "includeLabels": ["happy", "sad"],
                "validationSplit": 0.2,
                "maxSamples": 64,
            },
            "training": {"maxSteps": 1},
            "distributed": {"procsPerNode": 1},
            "output": {"path": str(tmp_path / f"out-{repo}"), "ephemeral": True},
        },
    )


@pytest.mark.parametrize(
    ("repo", "code", "reason"),
    [
        ("down", ExitCode.FAILURE, "WorkerFailed"),
        ("missing", ExitCode.CONFIG_ERROR, "ConfigurationError"),
    ],
)
def test_entrypoint_exit_codes_with_hf_endpoint(
    hub: str, tmp_path: Path, repo: str, code: int, reason: str
) -> None:
    cfg = _entrypoint_job(tmp_path, repo)
    env = {
        "HF_ENDPOINT": hub,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
    assert run_single(cfg, env=env, timeout=240) == code, log_text(cfg)
    status = json.loads((tmp_path / f"out-{repo}" / "status" / "rank-0.json").read_text())
    assert status["exitCode"] == code
    assert status["reason"] == reason
    # the reason itself, not a traceback
    assert status["message"].startswith(f"spec.model.checkpoint: cannot fetch hf://org/{repo}: ")
    assert "Traceback" not in status["message"]
