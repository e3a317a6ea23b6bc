"""The slim pods and Workloads the caches keep, as msgspec Structs: one definition of which
fields are kept, used both to decode the API's JSON straight into that shape and to cut a
dict (kopf's bodies, a test's objects) down to it.

Why typed decoding: decoding whole worker pods was the largest single share of the
operator's CPU at 1000 jobs (py-spy, bench/README.md: 15 % of the GIL-holding samples, in the
pod watch and in the answers to our pod creates). A pod as the API sends it is ~12 KB of JSON
(managedFields ~5.6 KB, the spec ~4.8 KB) of which a decision reads ~0.3 KB. orjson builds
every dict and string of it, then :func:`slim_pod` threw them away; msgspec, given the
Structs below, skips what they do not name without building it: ~4x faster per pod event
(8 vs 32 us, timeit on a pod event the local API server sent; bench/README.md has the
whole operator's before and after).

The shape (what :func:`.observe.observe_pod`, :func:`.store.job_key`, the resourceVersion and
tombstone checks, :meth:`.store.Store.put_node` and :func:`.kueue.observe_workload` read):
absent fields stay absent (``omit_defaults``), so ``"deletionTimestamp" in meta`` and
``.get`` read as they would on the whole object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from kubegraft.constants import LABEL_ATTEMPT, LABEL_JOB_NAME, LABEL_NODE_RANK

Obj = dict[str, Any]


class _Labels(msgspec.Struct, frozen=True, omit_defaults=True):
    job_name: str | None = msgspec.field(default=None, name=LABEL_JOB_NAME)
    node_rank: str | None = msgspec.field(default=None, name=LABEL_NODE_RANK)
    attempt: str | None = msgspec.field(default=None, name=LABEL_ATTEMPT)


class _OwnerRef(msgspec.Struct, frozen=True, omit_defaults=True):
    # Ownership is by the controller's UID (the name label is shared by every job ever
    # created under that name): of each reference, only that.
    controller: bool | None = None
    uid: str | None = None


class _Meta(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    labels: _Labels | None = None
    owner_references: list[_OwnerRef] | None = None


class _Message(msgspec.Struct, frozen=True, omit_defaults=True):
    reason: str | None = None
    message: str | None = None


class _Terminated(msgspec.Struct, frozen=True, rename="camel"):
    # Every field kept (None when absent): a terminated state stays truthy as observe_pod
    # tests it, whatever the kubelet filled in.
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None


class _ContainerState(msgspec.Struct, frozen=True, omit_defaults=True):
    terminated: _Terminated | None = None
    waiting: _Message | None = None


class _ContainerStatus(msgspec.Struct, frozen=True):
    name: str | None = None
    state: _ContainerState = _ContainerState()


class _Condition(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str | None = None
    status: str | None = None
    reason: str | None = None
    message: str | None = None


class _PodSpec(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    node_name: str | None = None


class _PodStatus(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[_Condition] | None = None
    container_statuses: list[_ContainerStatus] | None = None


class _Pod(msgspec.Struct, frozen=True):
    metadata: _Meta = _Meta()
    spec: _PodSpec = _PodSpec()
    status: _PodStatus = _PodStatus()


class _PodEvent(msgspec.Struct, frozen=True):
    type: str
    object: _Pod


class _ListMeta(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    resource_version: str | None = None
    continue_: str | None = msgspec.field(default=None, name="continue")


class _PodList(msgspec.Struct, frozen=True):
    metadata: _ListMeta = _ListMeta()
    items: list[_Pod] | None = None


class _WorkloadMeta(_Meta, frozen=True, omit_defaults=True, rename="camel"):
    generation: int | None = None


class _WorkloadStatus(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    conditions: Any = None
    admission: Any = None
    admission_checks: Any = None


class _Workload(msgspec.Struct, frozen=True):
    metadata: _WorkloadMeta = _WorkloadMeta()
    status: _WorkloadStatus = _WorkloadStatus()


_EVENT = msgspec.json.Decoder(_PodEvent)
_POD = msgspec.json.Decoder(_Pod)
_LIST = msgspec.json.Decoder(_PodList)


def _plain(slim: Any) -> Obj:
    out: Obj = msgspec.to_builtins(slim)
    out["metadata"].setdefault("labels", {})  # job_key and observe read the labels directly
    return out


def slim_pod(obj: Mapping[str, Any]) -> Obj:
    """The part of a pod (a dict, whole or already slim) that the caches keep."""
    return _plain(msgspec.convert(obj, _Pod))


def slim_workload(obj: Mapping[str, Any]) -> Obj:
    """A Workload (a dict) reduced to what :func:`.kueue.observe_workload` reads."""
    return _plain(msgspec.convert(obj, _Workload))


def decode_pod(data: bytes) -> Obj:
    """A pod from the API's JSON (an answer to a create or a GET), slim."""
    return _plain(_POD.decode(data))


def decode_pod_list(data: bytes) -> tuple[list[Obj], str, str]:
    """A page of a pod LIST: its pods (slim), its ``continue`` token, its resourceVersion."""
    page = _LIST.decode(data)
    pods = [_plain(p) for p in page.items or ()]
    return pods, page.metadata.continue_ or "", page.metadata.resource_version or ""


def decode_pod_event(line: bytes) -> tuple[str, Obj] | None:
    """One pod watch event: its type and its pod (slim). None for an event whose object is
    not a pod (an ERROR carries a Status): the caller decodes that one as plain JSON."""
    try:
        event = _EVENT.decode(line)
    except msgspec.ValidationError:
        return None
    return event.type, _plain(event.object)
