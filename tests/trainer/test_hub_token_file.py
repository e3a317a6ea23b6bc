"""The Hub token reaches the Hub from the file HF_TOKEN_PATH names (issue 9, item 11).

In a pod the token Secret is a mounted file, never an environment variable (see
tests/unit/test_render_security.py); this proves the trainer sends that file's token. A local
HTTP server stands in for the Hub and records the Authorization header of what it is asked;
it answers 401, so the download fails (how that failure is classified is tested elsewhere).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubegraft.api.v1alpha1 import FineTuneJobSpec
from kubegraft_trainer.pretrained import load_model

pytestmark = pytest.mark.trainer
TOKEN = "hf_from_the_mounted_secret_file"


@pytest.fixture
def hub() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            body = b'{"error": "Invalid credentials"}'
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer  # noqa: N815

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_token_comes_from_the_file_hf_token_path_names(
    hub: tuple[str, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    endpoint, seen = hub
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN + "\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # huggingface_hub reads HF_TOKEN_PATH and the endpoint once, at import: set them there.
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {
                "checkpoint": "hf://org/private-model",
                "task": "sequence-classification",
                "tokenSecretRef": {"name": "hf-token", "key": "token"},
            },
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "output": {"ephemeral": True},
        }
    )
    with pytest.raises(Exception):  # noqa: B017, PT011 - the 401's classification is not the point
        load_model(spec, num_labels=2)
    assert seen, "the trainer never asked the Hub"
    assert f"Bearer {TOKEN}" in seen
    assert set(seen) <= {f"Bearer {TOKEN}", ""}  # no other token, from anywhere
