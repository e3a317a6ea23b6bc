"""The only module that writes to the API server: executes a :class:`.decide.Decision`.

Every operation is idempotent, so a reconcile that is repeated, or that runs again after the
operator died half-way, converges without duplicates:

- create-if-absent: names are deterministic, a 409 AlreadyExists means "done before";
- delete: a 404 means "already gone";
- the status is written as ONE JSON merge patch on the ``/status`` subresource, and only
  when it differs from what is stored.

Runs in worker threads (the kubernetes client is synchronous); the async daemon in
:mod:`.reconciler` hands it snapshots and posts Events after the status write succeeded.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubegraft.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubegraft.constants import LABEL_COMPONENT, LABEL_JOB_NAME
from kubegraft_operator import metrics, names
from kubegraft_operator.render import COMPONENT_CONFIG, COMPONENT_WORKER

Obj = dict[str, Any]
T = TypeVar("T")

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


class Api:
    """Thin typed wrapper over the kubernetes client calls the operator makes."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.api_client = api_client

    def _call(self, operation: str, fn: Callable[[], T], ok: tuple[int, ...] = ()) -> T | None:
        """Run one request; statuses in ``ok`` return None, other errors are counted and raised."""
        try:
            return fn()
        except ApiException as e:
            if e.status in ok:
                return None
            metrics.API_ERRORS.labels(operation=operation, code=str(e.status or 0)).inc()
            raise
        except Exception:
            metrics.API_ERRORS.labels(operation=operation, code="0").inc()
            raise

    def _sanitize(self, obj: Any) -> Obj:
        out: Obj = self.api_client.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return out

    # ------------------------------------------------------------------ reads
    def list_job_pods(self, namespace: str, job: str) -> list[Obj]:
        selector = f"{LABEL_JOB_NAME}={job},{LABEL_COMPONENT}={COMPONENT_WORKER}"
        res = self._call(
            "list_pods", lambda: self.core.list_namespaced_pod(namespace, label_selector=selector)
        )
        return [self._sanitize(p) for p in (res.items if res is not None else [])]

    def get_progress(self, namespace: str, job: str) -> Obj | None:
        res = self._call(
            "get_configmap",
            lambda: self.core.read_namespaced_config_map(names.progress_config_map(job), namespace),
            ok=(404,),
        )
        return None if res is None else self._sanitize(res)

    def list_nodes(self) -> list[Obj]:
        res = self._call("list_nodes", lambda: self.core.list_node())
        return [self._sanitize(n) for n in (res.items if res is not None else [])]

    # ----------------------------------------------------------------- writes
    def create_if_absent(self, obj: Obj) -> Obj | None:
        """Create ``obj``; returns the created object, or None when it existed already.
        Thread-safe: the reconciler creates a gang's pods from several threads."""
        if os.environ.get(ENV_FAULT_EXIT_AFTER_CREATES):
            with _fault_lock:
                return self._create_if_absent(obj)
        return self._create_if_absent(obj)

    def _create_if_absent(self, obj: Obj) -> Obj | None:
        kind = obj["kind"]
        ns = obj["metadata"]["namespace"]
        body = cast(Any, obj)  # the client accepts plain dicts; its stubs name the models
        creators: dict[str, Callable[[], Any]] = {
            "Pod": lambda: self.core.create_namespaced_pod(ns, body),
            "Service": lambda: self.core.create_namespaced_service(ns, body),
            "ConfigMap": lambda: self.core.create_namespaced_config_map(ns, body),
            "ServiceAccount": lambda: self.core.create_namespaced_service_account(ns, body),
            "Role": lambda: self.rbac.create_namespaced_role(ns, body),
            "RoleBinding": lambda: self.rbac.create_namespaced_role_binding(ns, body),
        }
        res = self._call(f"create_{kind.lower()}", creators[kind], ok=(409,))
        if res is not None:
            _maybe_die_after_create()
        if (
            res is None
            and kind == "ConfigMap"
            and obj["metadata"]["labels"].get(LABEL_COMPONENT) == COMPONENT_CONFIG
        ):
            # The rendered config follows the spec (e.g. after a resume with changed
            # runPolicy); patching it is cheap and happens only when a gang is created.
            self._call(
                "patch_configmap",
                lambda: self.core.patch_namespaced_config_map(
                    obj["metadata"]["name"], ns, {"data": obj["data"]}
                ),
            )
        return None if res is None else self._sanitize(res)

    def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> Obj | None:
        """Delete a pod (404: already gone); ``force``: grace period 0 (its node is lost).
        Returns the pod as the API answered, if any."""
        grace = 0 if force else None
        res = self._call(
            "delete_pod",
            lambda: self.core.delete_namespaced_pod(
                name, namespace, propagation_policy="Background", grace_period_seconds=grace
            ),
            ok=(404,),
        )
        if res is None:
            return None
        out = self._sanitize(res)
        return out if out.get("kind") == "Pod" else None

    def patch_status(self, namespace: str, name: str, patch: Obj) -> Obj:
        """ONE merge patch of the job's status subresource; returns the updated job."""
        res = self._call(
            "patch_status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": patch},
                _content_type="application/merge-patch+json",
            ),
        )
        assert res is not None
        return cast(Obj, res)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete the FineTuneJob (ttlSecondsAfterFinished); children go with it (GC)."""
        self._call(
            "delete_job",
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
            ),
            ok=(404,),
        )
