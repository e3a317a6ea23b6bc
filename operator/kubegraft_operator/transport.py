"""Requests to the API server over the kubernetes client's connection pool and credentials,
without its per-request machinery.

The client's ``ApiClient`` brings what a request needs: the kubeconfig or in-cluster
credentials (client certificates live in the pool's TLS context, tokens in the
configuration), the CA, a proxy, the connection pool. Its request path adds, per request,
``param_serialize`` (a walk over the body to sanitise it, the auth settings with their
refresh hook, which for a kubeconfig re-sets seven configuration attributes) and
``json.dumps``, for bodies that are plain JSON already: going around it took the requests'
share of the operator's GIL-holding samples at 1000 jobs from 20 % to 16 % (py-spy,
bench/README.md). Here a request is one ``urllib3`` call with an orjson body; the
bearer token is read from the configuration at most every :data:`AUTH_SECONDS` (its refresh
hook runs then: a rotated ServiceAccount token file, an exec plugin's new token), and a 401
re-reads it at once and sends the request again.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

import urllib3
from kubernetes import client

JSON = "application/json"
AUTH_SECONDS = 10.0
"""How long the bearer token read from the configuration is reused."""


class Transport:
    """Sends requests with the ``ApiClient``'s pool and credentials; thread-safe."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self._config = api_client.configuration
        self._pool = api_client.rest_client.pool_manager
        self._host = str(self._config.host)
        self._auth: tuple[float, dict[str, str]] = (float("-inf"), {})

    def _auth_headers(self, *, fresh: bool = False) -> dict[str, str]:
        at, headers = self._auth
        now = time.monotonic()
        if fresh or now - at >= AUTH_SECONDS:
            headers = {
                auth["key"]: auth["value"]
                for auth in self._config.auth_settings().values()
                if auth["in"] == "header" and auth["value"]
            }
            self._auth = (now, headers)  # one tuple: a racing thread sees old or new, whole
        return headers

    def send(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = JSON,
        timeout: urllib3.Timeout,
        stream: bool = False,
    ) -> urllib3.BaseHTTPResponse:
        """One request. ``stream``: the body is left unread (a watch); else it is read into
        the response's ``data`` and the connection goes back to the pool."""
        url = f"{self._host}{path}?{urlencode(query)}" if query else f"{self._host}{path}"
        resp = self._send(method, url, body, content_type, timeout, stream, fresh=False)
        if resp.status == 401:  # the token rotated within AUTH_SECONDS: read it and retry once
            resp.drain_conn()
            resp.release_conn()
            resp = self._send(method, url, body, content_type, timeout, stream, fresh=True)
        return resp

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        content_type: str,
        timeout: urllib3.Timeout,
        stream: bool,
        *,
        fresh: bool,
    ) -> urllib3.BaseHTTPResponse:
        headers = {"Accept": JSON, **self.api_client.default_headers}
        headers.update(self._auth_headers(fresh=fresh))
        if body is not None:
            headers["Content-Type"] = content_type
        return self._pool.request(
            method, url, body=body, headers=headers, timeout=timeout, preload_content=not stream
        )
