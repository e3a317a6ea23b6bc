"""The only module that writes to the API server: executes a :class:`.decide.Decision`.

Every operation is idempotent, so a reconcile that is repeated, or that runs again after the
operator died half-way, converges without duplicates:

- create-if-absent: names are deterministic, a 409 AlreadyExists means "done before" when
  the object that exists is ours (its controller reference has our job's UID). One left by
  an earlier job of the same name (deleted, its dependents not yet collected) is never
  adopted: a Service or ConfigMap is deleted (with its UID as
  a precondition) and created anew; a pod is left alone (it is terminating, with a grace
  period) and returned, so the cache knows it and the job waits for it to go;
- delete: a 404 means "already gone";
- the status is written as ONE JSON merge patch on the ``/status`` subresource, and only
  when it differs from what is stored.

Runs in worker threads (the kubernetes client's transport is synchronous); the async daemon in
:mod:`.reconciler` hands it snapshots and posts Events after the status write succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import orjson
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from kubegraft.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubegraft.constants import LABEL_COMPONENT, LABEL_JOB_NAME
from kubegraft_operator import codec, kueue, metrics
from kubegraft_operator.observe import controller_uid
from kubegraft_operator.render import COMPONENT_CONFIG, COMPONENT_WORKER
from kubegraft_operator.slim import decode_pod
from kubegraft_operator.transport import JSON, Transport

Obj = dict[str, Any]


class ForeignObjectError(RuntimeError):
    """An object with a name the job needs exists and belongs to someone else."""


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
    "Event": "/api/v1/namespaces/{ns}/events",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "FineTuneJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
    "Workload": f"/apis/{kueue.API_VERSION}/namespaces/{{ns}}/workloads",
    "LocalQueue": f"/apis/{kueue.API_VERSION}/namespaces/{{ns}}/localqueues",
}
"""Collection path of each kind the operator writes (or reads: the output claim)."""
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = urllib3.Timeout(total=30.0)


def _is_config(obj: Obj) -> bool:
    return bool(
        obj["kind"] == "ConfigMap"
        and obj["metadata"]["labels"].get(LABEL_COMPONENT) == COMPONENT_CONFIG
    )


def _left_by_predecessor(existing: Obj, wanted: Obj) -> bool:
    """Whether ``existing`` was made for an earlier FineTuneJob of the same name as the one
    ``wanted`` is for: its controller is a FineTuneJob of that name, with another UID."""
    mine = next(r for r in wanted["metadata"]["ownerReferences"] if r.get("controller"))
    for ref in (existing.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return bool(
                ref.get("kind") == mine["kind"]
                and ref.get("apiVersion", "").split("/")[0] == mine["apiVersion"].split("/")[0]
                and ref.get("name") == mine["name"]
                and ref.get("uid") != mine["uid"]
            )
    return False


def _path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    path = _PATHS[kind].format(ns=quote(namespace, safe=""))
    if name is not None:
        path += "/" + quote(name, safe="")
    if sub is not None:
        path += "/" + sub
    return path


class Api:
    """The requests the operator makes, as plain JSON over :class:`.transport.Transport`
    (the kubernetes client's connection pool and credentials, not its request path).

    The generated ``CoreV1Api`` & co. are deliberately not used. Importing ``core_v1_api``
    alone costs ~80 MB of resident memory (a 4.5 MB module), half of the operator's start-up
    footprint, and every typed call deserialises the answer into models that we would only
    turn back into dicts (bench/operator_scale.py measured both).
    """

    def __init__(self, api_client: client.ApiClient) -> None:
        self.transport = Transport(api_client)

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
        decode: Callable[[bytes], Obj] = codec.loads,
    ) -> Obj | None:
        """One request; the JSON answer as a dict (``decode``: as a slim pod, for one).
        Statuses in ``ok`` return None; other errors are counted in the metrics and raised as
        the client's ``ApiException``."""
        payload = None if body is None else orjson.dumps(body)
        try:
            resp = self.transport.send(
                method, path, query=query, body=payload, content_type=content_type, timeout=TIMEOUT
            )
            data: bytes = resp.data
        except Exception:
            metrics.API_ERRORS.labels(operation=operation, code="0").inc()
            raise
        if not 200 <= resp.status <= 299:
            if resp.status in ok:
                return None
            metrics.API_ERRORS.labels(operation=operation, code=str(resp.status)).inc()
            text = data.decode("utf-8", "replace") if data else None
            raise ApiException.from_response(http_resp=RESTResponse(resp), body=text, data=None)
        return decode(data) if data else {}

    # ------------------------------------------------------------------ reads
    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        selector = f"{LABEL_JOB_NAME}={job},{LABEL_COMPONENT}={COMPONENT_WORKER}"
        res = self.request(
            "list_pods", "GET", _path("Pod", namespace), query=[("labelSelector", selector)]
        )
        return list((res or {}).get("items") or [])

    def review_token(self, token: str, audience: str) -> Obj:
        """A TokenReview of ``token`` for ``audience``: its ``status`` says who holds it."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        return self.request("create_tokenreview", "POST", path, body=body) or {}

    def get_claim(self, namespace: str, name: str) -> Obj | None:
        """The job's output PersistentVolumeClaim; None when it does not exist."""
        path = _path("PersistentVolumeClaim", namespace, name)
        return self.request("get_pvc", "GET", path, ok=(404,))

    # ----------------------------------------------------------------- writes
    def create_if_absent(self, obj: Obj) -> tuple[Obj, bool]:
        """Create ``obj`` unless it exists; returns the object as the API server has it and
        whether this call created it. Thread-safe: the reconciler creates a job's objects from
        several threads."""
        kind = obj["kind"]
        meta = obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        # A pod's answer goes to the watch cache only: decoded straight into its slim shape.
        decode = decode_pod if kind == "Pod" else codec.loads
        create = f"create_{kind.lower()}"
        res = self.request(create, "POST", _path(kind, ns), body=obj, ok=(409,), decode=decode)
        if res is not None:
            return res, True
        existing = self.request(
            f"get_{kind.lower()}", "GET", _path(kind, ns, name), ok=(404,), decode=decode
        )
        if existing is None:  # gone between the POST and the GET: try once more
            res = self.request(create, "POST", _path(kind, ns), body=obj, ok=(409,), decode=decode)
            if res is not None:
                return res, True
            raise ForeignObjectError(f"{kind} {ns}/{name} keeps reappearing")
        ours = controller_uid(meta)
        theirs = controller_uid(existing.get("metadata") or {})
        if theirs == ours or kind == "Pod":
            # A pod of an earlier job is returned as it is: the decision waits for it.
            if theirs == ours and _is_config(obj):
                # The rendered config follows the spec (e.g. after a resume with changed
                # runPolicy); patching it is cheap and happens only when a gang is created.
                self.request(
                    "patch_configmap",
                    "PATCH",
                    _path(kind, ns, name),
                    body={"data": obj["data"]},
                    content_type=MERGE_PATCH,
                )
            return existing, False
        if not _left_by_predecessor(existing, obj):
            raise ForeignObjectError(
                f"{kind} {ns}/{name} exists and is not this job's (controller uid {theirs})"
            )
        # An earlier FineTuneJob of this name owned it: that job is gone (there is only one
        # object per name), so the garbage collector is about to delete it anyway.
        uid = (existing.get("metadata") or {}).get("uid")
        self.request(
            f"delete_{kind.lower()}",
            "DELETE",
            _path(kind, ns, name),
            body={"preconditions": {"uid": uid}, "propagationPolicy": "Background"},
            ok=(404, 409),
        )
        res = self.request(f"create_{kind.lower()}", "POST", _path(kind, ns), body=obj, ok=(409,))
        if res is None:  # still there (a finalizer): the next pass tries again
            raise ForeignObjectError(
                f"{kind} {ns}/{name} of an earlier job named {meta['labels'][LABEL_JOB_NAME]} "
                "is still being deleted"
            )
        return res, True

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

    def create_event(self, event: Obj) -> None:
        """Post a core/v1 Event (:func:`.events.event_body`)."""
        self.request(
            "create_event", "POST", _path("Event", event["metadata"]["namespace"]), body=event
        )

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

    # ------------------------------------------------------------------ Kueue
    def get_local_queue(self, namespace: str, name: str) -> Obj | None:
        """A Kueue LocalQueue; None when it does not exist."""
        return self.request(
            "get_localqueue", "GET", _path("LocalQueue", namespace, name), ok=(404,)
        )

    def get_workload(self, namespace: str, name: str) -> Obj | None:
        """A Kueue Workload; None when it does not exist (or Kueue is not installed)."""
        return self.request("get_workload", "GET", _path("Workload", namespace, name), ok=(404,))

    def get_cluster_object(self, path: str) -> Obj | None:
        """A cluster-scoped object Kueue's contract reads (a ResourceFlavor, a
        PriorityClass) by its API path; None when it does not exist."""
        return self.request("get_" + path.rsplit("/", 2)[-2], "GET", path, ok=(404,))

    def patch_workload_status(self, namespace: str, name: str, patch: Obj) -> Obj | None:
        """ONE merge patch of a Workload's status; ``patch`` carries the resourceVersion it
        was computed from, so a Workload that Kueue changed meanwhile answers 409 (None here:
        the next pass, with the newer Workload, decides again), as does one deleted (404)."""
        return self.request(
            "patch_workload_status",
            "PATCH",
            _path("Workload", namespace, name, "status"),
            body=patch,
            content_type=MERGE_PATCH,
            ok=(404, 409),
        )

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the FineTuneJob (ttlSecondsAfterFinished); children go with it (GC)."""
        self.request(
            "delete_job",
            "DELETE",
            _path("FineTuneJob", namespace, name),
            body={"propagationPolicy": "Background"},
            ok=(404,),
        )
