"""Ownership by UID and disruption budgets on the real control plane (issue 9, items 8, 9).

- A job deleted and recreated under the same name while its predecessor's pods are still
  terminating (a finalizer holds them, as a slow kubelet or a long grace period would) never
  adopts or counts those pods: it waits for them, then runs its own gang.
- Preemption (the trainer's exit 75) and an eviction through the Eviction API restart the gang
  without using up backoffLimit; they count against maxDisruptions.

The operator is the real subprocess with its own RBAC; kwok plays the kubelet.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import Kube, OperatorProcess, job_manifest, state_is, wait_for

from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""
HOLD = "kubegraft.io/test-hold"
"""A finalizer the test puts on pods to keep them Terminating until it removes it."""


def _owner(pod: dict[str, Any]) -> str:
    return str(next(r["uid"] for r in pod["metadata"]["ownerReferences"] if r.get("controller")))


def _set_finalizers(kube: Kube, namespace: str, name: str, finalizers: list[str]) -> None:
    # A JSON merge patch replaces the list (a strategic merge patch would merge it: finalizers
    # has patchStrategy merge, so [] would remove nothing).
    kube.core.patch_namespaced_pod(
        name,
        namespace,
        {"metadata": {"finalizers": finalizers or None}},
        _content_type="application/merge-patch+json",
    )


def test_a_recreated_job_never_adopts_its_predecessors_terminating_pods(
    kube: Kube, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    kube.create_job(namespace, job_manifest("twin", nodes=2, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "twin", "Running"), WAIT, message="Running")
    first_uid = kube.job(namespace, "twin")["metadata"]["uid"]  # type: ignore[index]
    old = kube.pods(namespace, "twin")
    assert sorted(p["metadata"]["name"] for p in old) == ["twin-worker-0-a0", "twin-worker-1-a0"]
    for p in old:
        _set_finalizers(kube, namespace, p["metadata"]["name"], [HOLD])
    try:
        kube.delete_job(namespace, "twin")
        wait_for(lambda: kube.job(namespace, "twin") is None, WAIT, message="job deleted")
        # The garbage collector deletes the pods; the finalizer keeps them Terminating.
        wait_for(
            lambda: all(
                p["metadata"].get("deletionTimestamp") for p in kube.pods(namespace, "twin")
            ),
            WAIT,
            message="old pods terminating",
        )
        # The same name again, a new job (another UID), whose pods would succeed.
        kube.create_job(namespace, job_manifest("twin", nodes=2, outcome="succeed", delay="1s"))
        second_uid = kube.job(namespace, "twin")["metadata"]["uid"]  # type: ignore[index]
        assert second_uid != first_uid
        st = wait_for(
            lambda: (
                (s := kube.status(namespace, "twin")).get("reason") == "WaitingForPreviousJob" and s
            ),
            WAIT,
            message="waiting for the previous job",
        )
        # Neither counted nor adopted: no pod of its own, none active, no restart.
        assert (st["state"], st.get("active"), st["restarts"], st.get("disruptions", 0)) == (
            "Pending",
            0,
            0,
            0,
        )
        assert first_uid in st["message"]
        pods = kube.pods(namespace, "twin")
        assert {_owner(p) for p in pods} == {first_uid}
        assert "startTime" not in st
        # A while later (several passes, the pods' watch events) it still waits.
        operator_passes = wait_for(
            lambda: (
                ("WaitingForPreviousJob", "Warning")
                in {(r, t) for t, r in kube.events(namespace, "twin")}
            ),
            WAIT,
            message="WaitingForPreviousJob event",
        )
        assert operator_passes
        st = kube.status(namespace, "twin")
        assert (st["state"], st["reason"], st.get("active")) == (
            "Pending",
            "WaitingForPreviousJob",
            0,
        )
    finally:
        # Let them go, and confirm their deletion as their kubelet would (kwok acted on them
        # while the finalizer held them, and does not again).
        for p in kube.pods(namespace, "twin"):
            if _owner(p) == first_uid:
                name = p["metadata"]["name"]
                _set_finalizers(kube, namespace, name, [])
                with contextlib.suppress(ApiException):
                    kube.core.delete_namespaced_pod(
                        name,
                        namespace,
                        grace_period_seconds=0,
                        body=client.V1DeleteOptions(
                            preconditions=client.V1Preconditions(uid=p["metadata"]["uid"])
                        ),
                    )
    try:
        done = wait_for(
            lambda: state_is(kube, namespace, "twin", "Succeeded", "Failed"),
            WAIT,
            message="finished",
        )
    except TimeoutError as e:
        pods = [
            (
                p["metadata"]["name"],
                _owner(p),
                p["status"].get("phase"),
                p["metadata"].get("deletionTimestamp"),
            )
            for p in kube.pods(namespace, "twin")
        ]
        raise AssertionError(f"{e}: status {kube.status(namespace, 'twin')}; pods {pods}") from e
    assert (done["state"], done["restarts"], done.get("disruptions", 0), done["attempt"]) == (
        "Succeeded",
        0,
        0,
        0,
    )
    pods = kube.pods(namespace, "twin")
    assert sorted(p["metadata"]["name"] for p in pods) == ["twin-worker-0-a0", "twin-worker-1-a0"]
    assert {_owner(p) for p in pods} == {second_uid}
    # The Service and ConfigMaps are the new job's too (the old ones were not adopted).
    for kind in ("services", "configmaps"):
        out = cluster.kubectl(
            "get",
            kind,
            "-n",
            namespace,
            "-l",
            "kubegraft.io/job-name=twin",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[0].uid}",
        ).stdout.split()
        assert out
        assert set(out) == {second_uid}, kind


def test_preemption_counts_against_max_disruptions_not_the_backoff_limit(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # Every attempt is preempted (exit 75): with backoffLimit 0 a failure would end the job at
    # once; two disruptions are allowed, the third ends it.
    kube.create_job(
        namespace,
        job_manifest(
            "preempted",
            nodes=1,
            outcome="fail",
            exit_code=75,
            delay="1s",
            run_policy={"backoffLimit": 0, "maxDisruptions": 2},
        ),
    )
    done = wait_for(
        lambda: state_is(kube, namespace, "preempted", "Succeeded", "Failed"),
        WAIT,
        message="finished",
    )
    assert (done["reason"], done["restarts"], done["disruptions"], done["attempt"]) == (
        "MaxDisruptionsExceeded",
        0,
        2,
        2,
    )
    assert done["lastRestartReason"] == "Preempted"
    assert "maxDisruptions=2" in done["message"]


def test_an_eviction_restarts_the_gang_without_using_up_the_backoff_limit(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(
        namespace,
        job_manifest("evict", nodes=2, outcome="run", run_policy={"backoffLimit": 0}),
    )
    wait_for(lambda: state_is(kube, namespace, "evict", "Running"), WAIT, message="Running")
    # What `kubectl drain` and the cluster autoscaler do: the Eviction API.
    kube.core.create_namespaced_pod_eviction(
        "evict-worker-1-a0",
        namespace,
        client.V1Eviction(
            metadata=client.V1ObjectMeta(name="evict-worker-1-a0", namespace=namespace)
        ),
    )
    st = wait_for(
        lambda: (s := kube.status(namespace, "evict")).get("disruptions") == 1 and s,
        WAIT,
        message="gang restart after the eviction",
    )
    assert (st["restarts"], st["lastRestartReason"]) == (0, "PodDeleted")
    st = wait_for(
        lambda: state_is(kube, namespace, "evict", "Running"), WAIT, message="Running again"
    )
    assert (st["attempt"], st["restarts"], st["disruptions"]) == (1, 0, 1)
