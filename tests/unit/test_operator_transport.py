"""The operator's requests (:mod:`kubegraft_operator.transport`, :class:`.apply.Api`) against
a real HTTP server: the client's credentials and headers go out, the body is the JSON given,
a rotated token is picked up on the 401 it causes, and errors keep the client's exceptions."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubegraft_operator.apply import MERGE_PATCH, Api

pytestmark = pytest.mark.unit


class _Server(ThreadingHTTPServer):
    valid_token = "Bearer t1"
    seen: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        token = self.headers.get("authorization")
        self.server.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "token": token,
                "type": self.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        if token != self.server.valid_token:
            code, answer = 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
        elif self.path.startswith("/missing"):
            code, answer = 404, {"kind": "Status", "code": 404, "message": "not found"}
        else:
            code, answer = 200, {"kind": "Thing", "echo": json.loads(body) if body else None}
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PATCH(self) -> None:
        self._answer()

    def log_message(self, *_: Any) -> None:
        """Quiet: http.server would print a line per request to stderr."""


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _api(server: _Server) -> tuple[Api, client.Configuration]:
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    cfg.api_key = {"authorization": "t1"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return Api(client.ApiClient(cfg)), cfg


def test_requests_carry_the_token_the_query_and_the_json_body(server: _Server) -> None:
    api, _ = _api(server)
    patch = {"status": {"state": "Running", "message": "é ✓", "n": 1.5, "none": None}}
    res = api.request(
        "patch_status",
        "PATCH",
        "/apis/x/v1/things/a/status",
        body=patch,
        query=[("fieldManager", "kubegraft")],
        content_type=MERGE_PATCH,
    )
    assert res == {"kind": "Thing", "echo": patch}
    (seen,) = server.seen
    assert seen["method"] == "PATCH"
    assert seen["path"] == "/apis/x/v1/things/a/status?fieldManager=kubegraft"
    assert (seen["token"], seen["type"], seen["body"]) == ("Bearer t1", MERGE_PATCH, patch)


def test_a_rotated_token_is_read_on_the_401_it_causes_and_the_request_sent_again(
    server: _Server,
) -> None:
    api, cfg = _api(server)
    api.request("get", "GET", "/things/a")
    # The token rotates (a new ServiceAccount token, an exec plugin's refresh) while the
    # transport still holds the old one: the API server answers 401, the transport re-reads
    # the configuration and succeeds with the new one, without a caller seeing the 401.
    cfg.api_key = {"authorization": "t2"}
    server.valid_token = "Bearer t2"
    assert api.request("get", "GET", "/things/b") == {"kind": "Thing", "echo": None}
    assert [s["token"] for s in server.seen] == ["Bearer t1", "Bearer t1", "Bearer t2"]


def test_errors_are_the_clients_exceptions_and_ok_statuses_return_none(server: _Server) -> None:
    api, _ = _api(server)
    assert api.request("get", "GET", "/missing/x", ok=(404,)) is None
    with pytest.raises(ApiException) as err:
        api.request("get", "GET", "/missing/y")
    assert err.value.status == 404
    assert "not found" in str(err.value.body)
