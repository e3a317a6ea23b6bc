"""The only module that writes to the API server: executes a :class:`.decide.Decision`.

Every operation is idempotent, so a reconcile that is repeated, or that runs again after the
operator died half-way, converges without duplicates:

- create-if-absent: names are deterministic, a 409 AlreadyExists means "done before";
- delete: a 404 means "already gone";
- the status is written as ONE JSON merge patch on the ``/status`` subresource, and only
  when it differs from what is stored.

Runs in worker threads (the kubernetes client's transport is synchronous); the async daemon in
:mod:`.reconciler` hands it snapshots and posts Events after the status write succeeded.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubegraft.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubegraft.constants import LABEL_COMPONENT, LABEL_JOB_NAME
from kubegraft_operator import metrics, names
from kubegraft_operator.render import COMPONENT_CONFIG, COMPONENT_WORKER

Obj = dict[str, Any]

ENV_FAULT_EXIT_AFTER_CREATES = "KUBEGRAFT_FAULT_EXIT_AFTER_CREATES"
"""Fault injection for the idempotency test: the process dies (exit 137, like SIGKILL) right
after this many successful creates, i.e. half-way through a reconcile. Unset in production.
While it is set, creates run one at a time (pods are otherwise created in parallel), so that
exactly that many objects exist when the process dies."""
_creates = 0
_fault_lock = threading.Lock()


def _maybe_die_after_create() -> None:
    global _creates
    limit = os.environ.get(ENV_FAULT_EXIT_AFTER_CREATES)
    if not limit:
        return
    _creates += 1
    if _creates >= int(limit):
        os._exit(137)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (lists are replaced whole,
    keys missing from ``new`` become null)."""
    patch: Obj = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


_PATHS: dict[str, str] = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "FineTuneJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}
"""Collection path of each kind the operator writes (or reads: the output claim)."""
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0


def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = _PATHS[kind].format(ns=quote(namespace, safe=""))
    if name is not None:
        path += "/" + quote(name, safe="")
    if sub is not None:
        path += "/" + sub
    return path


class Api:
    """The requests the operator makes, as plain JSON over the kubernetes client's transport.

    The client's ``ApiClient`` brings the kubeconfig / in-cluster auth, TLS and connection
    pool; the generated ``CoreV1Api`` & co. are deliberately not used. Importing
    ``core_v1_api`` alone costs ~80 MB of resident memory (a 4.5 MB module), half of the
    operator's start-up footprint, and every typed call deserialises the answer into models
    that we would only turn back into dicts (bench/operator_scale.py measured both).
    """

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    def request(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = JSON,
        ok: tuple[int, ...] = (),
    ) -> Obj | None:
        """One request; the JSON answer as a dict. Statuses in ``ok`` return None; other
        errors are counted in the metrics and raised as the client's ``ApiException``."""
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            serialized = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                query_params=query or None,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            resp = self.api_client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
            data: bytes = resp.read()  # type: ignore[no-untyped-call]
        except Exception:
            metrics.API_ERRORS.labels(operation=operation, code="0").inc()
            raise
        if not 200 <= resp.status <= 299:
            if resp.status in ok:
                return None
            metrics.API_ERRORS.labels(operation=operation, code=str(resp.status)).inc()
            text = data.decode("utf-8", "replace") if data else None
            raise ApiException.from_response(http_resp=resp, body=text, data=None)
        return cast(Obj, json.loads(data)) if data else {}

    # ------------------------------------------------------------------ reads
    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        selector = f"{LABEL_JOB_NAME}={job},{LABEL_COMPONENT}={COMPONENT_WORKER}"
        res = self.request(
            "list_pods", "GET", _path("Pod", namespace), query=[("labelSelector", selector)]
        )
        return list((res or {}).get("items") or [])

    def get_progress(self, namespace: str, job: str) -> Obj | None:
        path = _path("ConfigMap", namespace, names.progress_config_map(job))
        return self.request("get_configmap", "GET", path, ok=(404,))

    def get_claim(self, namespace: str, name: str) -> Obj | None:
        """The job's output PersistentVolumeClaim; None when it does not exist."""
        path = _path("PersistentVolumeClaim", namespace, name)
        return self.request("get_pvc", "GET", path, ok=(404,))

    # ----------------------------------------------------------------- writes
    def create_if_absent(self, obj: Obj) -> Obj | None:
        """Create ``obj``; returns the created object, or None when it existed already.
        Thread-safe: the reconciler creates a job's objects from several threads."""
        if os.environ.get(ENV_FAULT_EXIT_AFTER_CREATES):
            with _fault_lock:
                return self._create_if_absent(obj)
        return self._create_if_absent(obj)

    def _create_if_absent(self, obj: Obj) -> Obj | None:
        kind = obj["kind"]
        meta = obj["metadata"]
        ns = meta["namespace"]
        res = self.request(f"create_{kind.lower()}", "POST", _path(kind, ns), body=obj, ok=(409,))
        if res is not None:
            _maybe_die_after_create()
        elif kind == "ConfigMap" and meta["labels"].get(LABEL_COMPONENT) == COMPONENT_CONFIG:
            # The rendered config follows the spec (e.g. after a resume with changed
            # runPolicy); patching it is cheap and happens only when a gang is created.
            self.request(
                "patch_configmap",
                "PATCH",
                _path(kind, ns, meta["name"]),
                body={"data": obj["data"]},
                content_type=MERGE_PATCH,
            )
        return res

    def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> Obj | None:
        """Delete a pod (404: already gone); ``force``: grace period 0 (its node is lost).
        Returns the pod as the API answered, if any."""
        options: Obj = {"propagationPolicy": "Background"}
        if force:
            options["gracePeriodSeconds"] = 0
        res = self.request(
            "delete_pod", "DELETE", _path("Pod", namespace, name), body=options, ok=(404,)
        )
        return res if res is not None and res.get("kind") == "Pod" else None

    def patch_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        """ONE merge patch of the job's status subresource; returns the updated job."""
        res = self.request(
            "patch_status",
            "PATCH",
            _path("FineTuneJob", namespace, name, "status"),
            body={"status": patch},
            content_type=MERGE_PATCH,
        )
        assert res is not None
        return res

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the FineTuneJob (ttlSecondsAfterFinished); children go with it (GC)."""
        self.request(
            "delete_job",
            "DELETE",
            _path("FineTuneJob", namespace, name),
            body={"propagationPolicy": "Background"},
            ok=(404,),
        )
