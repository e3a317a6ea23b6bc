"""The progress endpoint: rank 0 POSTs its reports here, over HTTPS, with a token only it has.

This replaces a per-job ServiceAccount, Role, RoleBinding and progress ConfigMap (four writes
per job, and the operator's right to create RBAC objects) with the design Kubeflow Trainer
adopted for its progress status (KEP-2779):

- **Who may write a job's progress**: only a process in that job's rank 0 pod. Rank 0 gets a
  projected ServiceAccount token of the audience :data:`~kubegraft.progress.PROGRESS_AUDIENCE`
  (:mod:`.render`). The kubelet binds it to the pod (its claims name the pod and its UID) and
  rotates it. The operator asks the API server (a TokenReview for that audience, cached for a
  few minutes per token) who holds a token, then accepts the report only if the pod the token
  is bound to is, in its own cache, rank 0 of the job in the URL, owned (controller reference)
  by that job and not being deleted. Another pod's token (another job's, rank 1's, a pod in
  another namespace) is refused (403); a token of another audience, e.g. one for the API
  server, or a forged or expired one, is refused (401). The token is not an API credential:
  the API server refuses its audience, so a leaked one cannot be used against the cluster.
- **Transport**: TLS with the installation's certificate (``KUBEGRAFT_PROGRESS_TLS_DIR``:
  ``tls.crt`` and ``tls.key``; the Helm chart makes one for all replicas); rank 0 trusts
  only that certificate (:func:`endpoint_env` renders it into rank 0's environment).
- **Two replicas**: only the replica that reconciles the job (the kopf peering leader, whose
  daemon for the job runs) accepts its reports; a paused one answers 503 and the trainer's
  sink retries on a new connection, which the Service may send to the other replica.
- **The trainer never blocks on it**: reports go from rank 0's background thread
  (:class:`kubegraft.progress.ProgressPublisher`); the operator stores the newest report in
  memory and wakes the job's daemon, which folds it into one status write.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kubegraft.constants import LABEL_NODE_RANK
from kubegraft.progress import (
    ENV_PROGRESS_CA,
    ENV_PROGRESS_URL,
    PROGRESS_AUDIENCE,
    ProgressReport,
)
from kubegraft_operator import codec
from kubegraft_operator.apply import Api
from kubegraft_operator.observe import controller_uid
from kubegraft_operator.store import Store

log = logging.getLogger(__name__)
Obj = dict[str, Any]

ENV_TLS_DIR = "KUBEGRAFT_PROGRESS_TLS_DIR"
"""Directory with ``tls.crt`` and ``tls.key``: the endpoint's certificate (off without it)."""
ENV_PORT = "KUBEGRAFT_PROGRESS_PORT"
"""Port the endpoint listens on (default 8443)."""
ENV_URL = "KUBEGRAFT_OPERATOR_PROGRESS_URL"
"""The endpoint's base URL as pods reach it, e.g. ``https://kubegraft.kubegraft-system.svc:8443``
(the certificate must name its host)."""
MAX_BODY = 64 * 1024
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"
POD_UID_KEY = "authentication.kubernetes.io/pod-uid"
REVIEW_TTL_SECONDS = 300.0
"""How long a TokenReview's answer is reused for the same token (rank 0 reports at most once
a second: one review per job per five minutes)."""
REFUSED_TTL_SECONDS = 10.0
MAX_CACHED_TOKENS = 4096


@dataclass(frozen=True)
class Endpoint:
    """The installation's progress endpoint."""

    base_url: str
    ca_pem: str
    tls_dir: Path
    port: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Endpoint | None:
        env = os.environ if environ is None else environ
        tls, url = env.get(ENV_TLS_DIR), env.get(ENV_URL)
        if not tls or not url:
            return None
        tls_dir = Path(tls)
        ca = tls_dir / "ca.crt"
        pem = (ca if ca.exists() else tls_dir / "tls.crt").read_text()
        return cls(url.rstrip("/"), pem, tls_dir, int(env.get(ENV_PORT, "8443")))

    def job_url(self, namespace: str, name: str) -> str:
        return f"{self.base_url}{job_path(namespace, name)}"


def job_path(namespace: str, name: str) -> str:
    return f"/v1/namespaces/{namespace}/finetunejobs/{name}/progress"


def endpoint_env(pod: Obj, endpoint: Endpoint | None) -> Obj:
    """``pod`` with the endpoint's URL and CA in rank 0's environment (other ranks and an
    operator without an endpoint: unchanged). Pure; the reconciler applies it to the pods of a
    decision, since the endpoint is the installation's, not the job's."""
    meta = pod["metadata"]
    if endpoint is None or meta["labels"].get(LABEL_NODE_RANK) != "0":
        return pod
    job = next(r["name"] for r in meta["ownerReferences"] if r.get("controller"))
    container = pod["spec"]["containers"][0]
    container["env"] = [
        *container.get("env", []),
        {"name": ENV_PROGRESS_URL, "value": endpoint.job_url(meta["namespace"], job)},
        {"name": ENV_PROGRESS_CA, "value": endpoint.ca_pem},
    ]
    return pod


@dataclass(frozen=True)
class Identity:
    """Who holds a token, per the API server."""

    namespace: str
    pod_name: str
    pod_uid: str


def identity_of(review: Mapping[str, Any], audience: str) -> Identity | None:
    """A TokenReview's answer -> the pod the token is bound to; None unless authenticated for
    ``audience`` as a ServiceAccount with a pod binding."""
    status = review.get("status") or {}
    if not status.get("authenticated") or audience not in (status.get("audiences") or []):
        return None
    user = status.get("user") or {}
    parts = str(user.get("username", "")).split(":")
    extra = user.get("extra") or {}
    pod_name, pod_uid = extra.get(POD_NAME_KEY) or [], extra.get(POD_UID_KEY) or []
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not pod_name or not pod_uid:
        return None
    return Identity(parts[2], str(pod_name[0]), str(pod_uid[0]))


class TokenCache:
    """TokenReview answers by token hash, reused for a while (bounded; refusals briefly)."""

    def __init__(
        self, review: Callable[[str], Identity | None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.review = review
        self.clock = clock
        self.entries: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        self.reviews = 0

    def identity(self, token: str) -> Identity | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        hit = self.entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.reviews += 1
        who = self.review(token)
        self.entries[key] = (now + (REVIEW_TTL_SECONDS if who else REFUSED_TTL_SECONDS), who)
        self.entries.move_to_end(key)
        while len(self.entries) > MAX_CACHED_TOKENS:
            self.entries.popitem(last=False)
        return who


def authorize(store: Store, key: tuple[str, str], who: Identity) -> str | None:
    """The UID of the pod's controller if ``who`` is a live rank 0 pod filed under the job
    (the pod cache: the operator's own worker pods, by the job-name label), else None."""
    ns, _ = key
    if who.namespace != ns:
        return None
    pod = store.pods.get(key, {}).get(who.pod_name)
    if pod is None:
        return None
    meta = pod.get("metadata") or {}
    if meta.get("uid") != who.pod_uid or meta.get("deletionTimestamp"):
        return None
    if (meta.get("labels") or {}).get(LABEL_NODE_RANK) != "0":
        return None
    # The pod's controller UID goes with the report: the daemon takes it only if that is its
    # job's UID (:meth:`.store.Store.observation`), not an earlier job's of the same name.
    return controller_uid(meta)


class ProgressServer:
    """The aiohttp app on kopf's event loop; TokenReviews run in a worker thread."""

    def __init__(self, store: Store, api: Api, endpoint: Endpoint) -> None:
        self.store = store
        self.endpoint = endpoint
        self.tokens = TokenCache(
            lambda token: identity_of(api.review_token(token, PROGRESS_AUDIENCE), PROGRESS_AUDIENCE)
        )
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(job_path("{namespace}", "{name}"), self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.endpoint.tls_dir / "tls.crt", self.endpoint.tls_dir / "tls.key")
        site = web.TCPSite(self.runner, "0.0.0.0", self.endpoint.port, ssl_context=ctx)
        await site.start()
        log.info(f"progress endpoint on :{self.endpoint.port} ({self.endpoint.base_url})")

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        if key not in self.store.wakeups:  # not reconciled here: a paused peer, or no job
            return web.Response(status=503, text="this replica does not reconcile the job")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return web.Response(status=401, text="a bearer token is required")
        loop = asyncio.get_running_loop()
        who = await loop.run_in_executor(None, self.tokens.identity, auth[len("Bearer ") :])
        if who is None:
            return web.Response(status=401, text=f"not a pod-bound token for {PROGRESS_AUDIENCE}")
        owner = authorize(self.store, key, who)
        if owner is None:
            return web.Response(status=403, text=f"{who.pod_name} is not rank 0 of {key[1]}")
        body = await request.read()
        try:
            data = codec.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            ProgressReport.model_validate(data)
        except (ValueError, ValidationError) as e:
            return web.Response(status=400, text=f"not a progress report: {str(e)[:200]}")
        self.store.put_report(key, owner, body.decode())
        self.store.wake(key)
        return web.Response(status=204)
