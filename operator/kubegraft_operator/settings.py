"""kopf settings for this operator, applied at start-up (see :func:`configure`).

- Persistence in annotations under ``kubegraft.io/`` (the status schema is strict and belongs
  to the API; kopf must not write its bookkeeping there); no diff base at all
  (:class:`NoDiffBase`).
- Peering: kopf pauses every operator that sees a peer with a higher priority, and ALL of
  them when priorities tie. Each replica therefore takes a distinct priority
  ($KUBEGRAFT_PEERING_PRIORITY, or a random one), so exactly one (the highest) acts and the
  others wait; when it dies, its record expires after the peering lifetime
  ($KUBEGRAFT_PEERING_LIFETIME, default 60 s) and the next one takes over. Run with
  ``--peering=NAME`` (kopf's CRDs: manifests/operator/peering.yaml; the Helm chart creates the
  peering object when ``replicaCount`` > 1).
- Events: only the ones the state machine decides are posted (log lines are not).
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Iterable
from typing import Any, cast

import kopf

from kubegraft.api.v1alpha1 import GROUP
from kubegraft.constants import LABEL_COMPONENT, LABEL_JOB_NAME
from kubegraft_operator.render import COMPONENT_WORKER

ENV_PRIORITY = "KUBEGRAFT_PEERING_PRIORITY"
ENV_LIFETIME = "KUBEGRAFT_PEERING_LIFETIME"
ENV_WORKERS = "KUBEGRAFT_OPERATOR_WORKERS"
ENV_RECONCILE_THREADS = "KUBEGRAFT_OPERATOR_RECONCILE_THREADS"
"""Threads for the reconciles' blocking API calls (default 32, the API client's pool size)."""
ENV_OBJECT_LOG_LEVEL = "KUBEGRAFT_OPERATOR_OBJECT_LOG_LEVEL"
"""Level of kopf's per-object log (default WARNING: at INFO it logs every watch event's
handler, thousands of lines a minute at scale; our state transitions are Events anyway)."""
ENV_TRAINER_IMAGE = "KUBEGRAFT_TRAINER_IMAGE"
"""The trainer image for jobs that set no ``spec.pod.image`` (the Helm chart's
``trainer.image``); unset means the API's default."""
FINALIZER = f"{GROUP}/operator"
REPORTING_COMPONENT = "kubegraft-operator"
"""The controller that reports the jobs' Events (:mod:`.events`; kopf's settings name it too)."""


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: an empty essence, nothing fetched, nothing stored.

    kopf builds a diff base (the "essence") of every object on every watch event, a deep copy
    of the whole body, to find what changed for ``on.create``/``on.update``/``on.field``
    handlers. This operator has none (a daemon per job and ``on.event`` watches), so the
    essence was never used, yet those copies were ~14% of the operator's CPU at 300 jobs
    (py-spy --gil during bench/operator_scale.py): every pod event paid for one.
    ``tests/unit/test_operator_settings.py`` fails if a change handler is ever registered.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def peering_priority() -> int:
    """This replica's priority: from the environment, else random (ties would pause all)."""
    value = os.environ.get(ENV_PRIORITY)
    return int(value) if value else random.SystemRandom().randint(1, 2**31 - 1)


def trainer_image() -> str | None:
    """The operator-wide default trainer image, if the installation set one."""
    return os.environ.get(ENV_TRAINER_IMAGE) or None


def with_default_image(spec: dict[str, Any], image: str | None) -> dict[str, Any]:
    """``spec`` with ``pod.image`` set to ``image`` when the job names none (its own wins)."""
    pod = dict(spec.get("pod") or {})
    if image is None or pod.get("image"):
        return spec
    return {**spec, "pod": {**pod, "image": image}}


def reconcile_threads() -> int:
    """How many reconciles may wait on the API server at once."""
    return max(1, int(os.environ.get(ENV_RECONCILE_THREADS, "32")))


WORKER_POD_SELECTOR = f"{LABEL_JOB_NAME},{LABEL_COMPONENT}={COMPONENT_WORKER}"
"""The label selector of the pods the operator watches (:mod:`.pod_watch`): only workers."""


def watched_namespaces(argv: list[str]) -> list[str] | None:
    """The namespaces (kopf's patterns) on the operator's command line, for the watches that
    kopf does not run (:mod:`.pod_watch`); None for all: ``-A``, or neither option
    (``python -m kubegraft_operator`` then adds ``-A``)."""
    found: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("-A", "--all-namespaces"):
            return None
        if arg in ("-n", "--namespace"):
            found.append(next(args, ""))
        elif arg.startswith("--namespace="):
            found.append(arg.split("=", 1)[1])
        elif arg.startswith("-n") and not arg.startswith("--"):
            found.append(arg[2:].lstrip("="))
    return [ns for ns in found if ns] or None


def reporting_instance() -> str:
    """Which operator process reported an Event: the pod's name (the chart sets ``POD_NAME``),
    else the host's."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply our settings (called from the on.startup handler in :mod:`.main`)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.finalizer = FINALIZER
    if settings.peering.priority == 0:
        settings.peering.priority = peering_priority()
    settings.peering.lifetime = int(os.environ.get(ENV_LIFETIME, "60"))
    settings.peering.stealth = True
    settings.posting.loggers = False
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.posting.reporting_instance = reporting_instance()
    settings.posting.level = logging.INFO
    # Reconnect quickly after an API server restart; keep watch connections recycled.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    logging.getLogger("kopf.objects").setLevel(os.environ.get(ENV_OBJECT_LOG_LEVEL, "WARNING"))
    settings.execution.max_workers = int(os.environ.get(ENV_WORKERS, "16"))
    # Daemons stop promptly when the job is deleted or the operator pauses for a peer.
    settings.background.cancellation_polling = 5
