"""The job's Events (``kubectl describe``, ``kubectl events``), posted by the operator itself.

A pass hands its Events, once its status write succeeded, to the operator's Event threads,
which post them through the same transport as its other requests (:mod:`.transport`); the
pass does not wait for them (in the pass, each held a reconcile thread one round trip longer,
and a burst's passes queued for threads). kopf's poster did this before:
a queue, a task per Event and an aiohttp request on kopf's event loop, 6.3 % of the
operator's GIL-holding samples at 1000 jobs (py-spy, bench/operator_scale.py), all of it on the
one thread that also decodes kopf's watch events and runs every daemon (issue 12).

An Event is auxiliary: a failure to post one is logged and never fails the pass (the status,
written already, tells the same story); the next (state, reason) change posts the next one.
The body is what kopf posted (core/v1, with the reporting controller and instance, and the
``source.component`` that ``kubectl describe`` shows in its From column), named after the job
(``<job>.<random>``) rather than ``kopf-event-<random>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubegraft_operator.decide import Event
from kubegraft_operator.settings import REPORTING_COMPONENT

Obj = dict[str, Any]

MAX_MESSAGE = 1024
"""Longest message posted (status messages are short already: :func:`.observe.short_message`)."""


def event_body(job: Mapping[str, Any], event: Event, *, now: datetime, instance: str) -> Obj:
    """The core/v1 Event about ``job`` (the FineTuneJob as the API has it), reported by
    ``instance`` (:func:`.settings.reporting_instance`). Pure."""
    meta = job.get("metadata") or {}
    stamp = now.isoformat()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"namespace": meta["namespace"], "generateName": f"{meta['name']}."},
        "involvedObject": {
            "apiVersion": job.get("apiVersion"),
            "kind": job.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_MESSAGE],
        "action": event.reason,
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance,
        "source": {"component": REPORTING_COMPONENT},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": stamp,
        "count": 1,
    }
