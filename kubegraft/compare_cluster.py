"""``kubegraft compare --cluster``: the trials as FineTuneJobs, their results read from status.

One FineTuneJob per (policy, seed), created in one namespace with the Kubernetes client, each
labelled ``kubegraft.io/comparison=<id>`` (one id per comparison) and with its policy and
seed (``kubegraft.io/compare-policy``, ``kubegraft.io/compare-seed``), so ``kubectl get ftj -l
kubegraft.io/comparison=<id>`` lists one comparison. Names and the id are derived from the
inputs (manifest, policies, budget, seeds), never random: the same comparison run twice
meets its own jobs (AlreadyExists) instead of doubling them. The jobs run side by side, as
the cluster's scheduler (or Kueue) admits them; this module waits on a watch of the
comparison's label until every trial is Succeeded or Failed (no polling), then reads
accuracy, macro-F1, the parameter counts and the running time from each status
(:func:`kubegraft.policy_compare.status_record`). A failed trial is a row with its reason.

At the end -- also after Ctrl-C, SIGTERM or a timeout -- the trial jobs are deleted (their pods
go with them), unless ``keep``: then they stay, with their status and outputs, for ``kubectl``
to read. SIGTERM is what a CI job's timeout, ``timeout(1)`` or ``kill`` sends; without a handler
it ends Python at once and the trials would go on running on the cluster, nobody waiting for
them. SIGINT keeps Python's own handling (KeyboardInterrupt), so a background job of a script,
which the shell starts with SIGINT ignored, is not stopped by a Ctrl-C meant for the terminal.

The ``kubernetes`` package comes with the ``operator`` extra; it is imported only here.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kubegraft.api.v1alpha1 import GROUP, MAX_NAME_LENGTH, VERSION, FineTuneJob

PLURAL = "finetunejobs"
LABEL_COMPARISON = f"{GROUP}/comparison"
LABEL_POLICY = f"{GROUP}/compare-policy"
LABEL_SEED = f"{GROUP}/compare-seed"
TERMINAL = ("Succeeded", "Failed")


def policy_slug(policy: str) -> str:
    """A policy as a name and label value: ``top-k:2`` -> ``top-k2``, ``feature-extraction``
    -> ``fe`` (short, so the job's own name keeps room)."""
    return "fe" if policy == "feature-extraction" else policy.replace(":", "")


def comparison_id(manifest_text: str, policies: list[str], budget: str, seeds: int) -> str:
    """Ten hex digits of a hash of everything that defines the comparison."""
    key = json.dumps([manifest_text, policies, budget, seeds])
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def trial_name(job: str, policy: str, seed: int, cid: str) -> str:
    """``<job>-<policy>-s<seed>-<id[:5]>``, the job's name cut so the whole is a valid
    FineTuneJob name (at most MAX_NAME_LENGTH characters)."""
    tail = f"-{policy_slug(policy)}-s{seed}-{cid[:5]}"
    base = job[: MAX_NAME_LENGTH - len(tail)].rstrip("-") or "c"
    return f"{base}{tail}"


def _drop_nulls(value: Any) -> Any:
    """``key: null`` (an override's "unset") as an absent key, as the API server expects."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


@dataclass(frozen=True)
class Trial:
    policy: str
    seed: int
    name: str
    manifest: dict[str, Any]


def trial_manifest(
    doc: dict[str, Any], *, name: str, cid: str, policy: str, seed: int, namespace: str
) -> dict[str, Any]:
    """The user's manifest (overrides already applied) as one trial's FineTuneJob: its name,
    namespace and comparison labels; validated by the API model, so a bad field is named
    before anything is created."""
    out = _drop_nulls(json.loads(json.dumps(doc)))
    meta = dict(out.get("metadata") or {})
    meta.pop("generateName", None)
    meta.update(name=name, namespace=namespace)
    meta["labels"] = {
        **(meta.get("labels") or {}),
        LABEL_COMPARISON: cid,
        LABEL_POLICY: policy_slug(policy),
        LABEL_SEED: str(seed),
    }
    out["metadata"] = meta
    FineTuneJob.model_validate(out)
    return dict(out)


def current_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kube context in use (``default`` when it names none)."""
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise SystemExit(f"kubegraft compare --cluster: kubeconfig: {exc}") from exc
    if context:
        active = next((c for c in contexts if c["name"] == context), active)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _states(items: Iterable[dict[str, Any]], names: set[str]) -> dict[str, dict[str, Any]]:
    return {
        i["metadata"]["name"]: i
        for i in items
        if i["metadata"]["name"] in names and (i.get("status") or {}).get("state") in TERMINAL
    }


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C's KeyboardInterrupt is: the same
    ``finally`` deletes the trials."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (the main thread's handler, put
    back at the end)."""
    saved = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, saved)


def run_trials(
    trials: list[Trial],
    *,
    namespace: str,
    cid: str,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout_seconds: float = 3600.0,
    keep: bool = False,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict[str, dict[str, Any]]:
    """Create the trials' jobs, wait until all are finished, return name -> the finished job
    (trials still running at the timeout are absent). Deletes the jobs at the end unless
    ``keep``, whatever happened (Ctrl-C and SIGTERM included: call it in the main thread,
    inside :func:`terminated_as_interrupt`)."""
    from kubernetes import client, config, watch
    from kubernetes.client.exceptions import ApiException

    try:
        api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context
        )
    except config.ConfigException as exc:
        raise SystemExit(f"kubegraft compare --cluster: kubeconfig: {exc}") from exc
    api = client.CustomObjectsApi(api_client)
    names = {t.name for t in trials}
    created: list[str] = []
    done: dict[str, dict[str, Any]] = {}
    selector = f"{LABEL_COMPARISON}={cid}"
    try:
        for t in trials:
            # Counted before the call: interrupted while it is in flight, the job may exist
            # with its response unread (deleting one that does not is a 404, ignored).
            created.append(t.name)
            try:
                api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, t.manifest)
            except ApiException as exc:
                created.pop()  # not ours: a 409 is somebody's job (an earlier --keep)
                if exc.status == 409:
                    raise SystemExit(
                        f"kubegraft compare: {namespace}/{t.name} exists already (this "
                        f"comparison was run before with --keep?); delete it with: kubectl "
                        f"delete ftj -n {namespace} -l {selector}"
                    ) from exc
                raise
            log(f"trial {t.policy} seed {t.seed} -> FineTuneJob {namespace}/{t.name}")
        log(f"waiting for {len(trials)} trials (kubectl get ftj -n {namespace} -l {selector})")
        deadline = time.monotonic() + timeout_seconds
        while len(done) < len(names):
            listing: Any = api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, label_selector=selector
            )
            done.update(_states(listing.get("items", []), names))
            left = deadline - time.monotonic()
            if len(done) == len(names) or left <= 0:
                break
            w: Any = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in w.stream(
                    api.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    label_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=max(1, int(min(left, 300))),
                ):
                    obj = event["object"]
                    if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                        break
                    if event["type"] == "DELETED":
                        name = obj["metadata"]["name"]
                        if name in names and name not in done:
                            done[name] = {**obj, "status": {"state": "Failed",
                                                            "reason": "Deleted"}}  # fmt: skip
                    else:
                        done.update(_states([obj], names))
                    if len(done) == len(names):
                        break
            except ApiException as exc:
                if exc.status != 410:
                    raise
            finally:
                w.stop()
        return done
    finally:
        if keep:
            log(f"--keep: the trial jobs stay (kubectl get ftj -n {namespace} -l {selector})")
        elif created:
            for name in created:
                try:
                    api.delete_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        log(f"could not delete {namespace}/{name}: {exc.reason}")
            log(f"deleted the {len(created)} trial jobs (--keep leaves them)")
        api_client.close()


def not_finished_reason(timeout_seconds: float) -> str:
    return f"not finished within --timeout {timeout_seconds:.0f}s"
