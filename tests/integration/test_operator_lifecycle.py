"""The operator on the real control plane: a FineTuneJob's life from create to Succeeded or
Failed, gang restarts, suspend/resume, deletion with the real garbage collector, TTL.

The operator runs as a subprocess (``python -m kubegraft_operator``) authenticated with its
own ServiceAccount's token, so manifests/rbac/ is exercised by every test. kwok plays the
kubelet: each job's pods carry the test-outcome label/annotations that make kwok finish them
(succeed / fail with an exit code / keep running) after a short delay. Every wait is on a
condition with a timeout.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    state_is,
    wait_for,
)

from kubegraft.devcluster.cluster import Cluster
from kubegraft.devcluster.manifests import OUTCOME_LABEL
from kubegraft_operator.settings import FINALIZER

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""


def test_create_runs_the_gang_and_succeeds(
    kube: Kube, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    kube.create_job(namespace, job_manifest("happy", nodes=2, procs_per_node=2, delay="3s"))
    pods = wait_for(
        lambda: (p := kube.pods(namespace, "happy")) and len(p) == 2 and p, WAIT, message="2 pods"
    )
    by_rank = {p["metadata"]["labels"]["kubegraft.io/node-rank"]: p for p in pods}
    assert set(by_rank) == {"0", "1"}
    for rank, pod in by_rank.items():
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"]["kubegraft.io/job-name"] == "happy"
        assert meta["labels"]["kubegraft.io/attempt"] == "0"
        assert meta["ownerReferences"][0]["kind"] == "FineTuneJob"
        assert meta["ownerReferences"][0]["controller"]
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["MASTER_ADDR"] == f"happy-worker-0.happy-workers.{namespace}.svc"
        assert (env["NODE_RANK"], env["NNODES"], env["WORLD_SIZE"]) == (rank, "2", "4")
        assert spec["hostname"] == f"happy-worker-{rank}"
        assert spec["subdomain"] == "happy-workers"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    svc = kube.core.read_namespaced_service("happy-workers", namespace)
    assert svc.spec.cluster_ip == "None"
    running = wait_for(
        lambda: state_is(kube, namespace, "happy", "Running", "Succeeded"), WAIT, message="Running"
    )
    if running["state"] == "Running":
        assert running["nodesReady"] == "2/2"
        assert not _has_finalizer(kube, namespace, "happy")  # kopf's costs a write per job
    done = wait_for(
        lambda: state_is(kube, namespace, "happy", "Succeeded", "Failed"), WAIT, message="finished"
    )
    assert (done["state"], done["reason"], done["restarts"]) == ("Succeeded", "Completed", 0)
    assert done["startTime"]
    assert done["completionTime"]
    conds = {c["type"]: c for c in done["conditions"]}
    assert conds["Succeeded"]["status"] == "True"
    assert conds["Succeeded"]["observedGeneration"] == 1
    reasons = wait_for(
        lambda: (r := [x[1] for x in kube.events(namespace, "happy")]) and "Completed" in r and r,
        WAIT,
        message="Completed event",
    )
    assert "WaitingForGang" in reasons
    table = cluster.kubectl("get", "ftj", "happy", "-n", namespace).stdout
    assert "Succeeded" in table.splitlines()[1]
    assert operator.metric("kubegraft_operator_jobs", state="Succeeded") >= 1
    assert operator.metric("kubegraft_operator_reconcile_duration_seconds_count") > 0
    # No finalizer, ever (not even while it ran: checked above at Running): the job can be
    # deleted with no operator running. Finished with nothing left running, it stays counted.
    assert not _has_finalizer(kube, namespace, "happy")
    assert kube.status(namespace, "happy")["active"] == 0
    assert operator.metric("kubegraft_operator_jobs", state="Succeeded") >= 1


def test_pods_pass_the_restricted_pod_security_standard(
    kube: Kube, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    # The API server's PodSecurity admission, enforcing "restricted" on the namespace, judges
    # the rendered pods (non-root, no privilege escalation, all capabilities dropped, seccomp
    # RuntimeDefault, allowed volume types). A refused pod would never be created.
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    bare = {"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    with pytest.raises(ApiException) as refused:  # the enforcement is on
        kube.core.create_namespaced_pod(namespace, bare)
    assert refused.value.status == 403
    assert 'violates PodSecurity "restricted' in json.loads(refused.value.body)["message"]
    kube.create_job(namespace, job_manifest("strict", nodes=2, outcome="run"))
    wait_for(lambda: len(kube.pods(namespace, "strict")) == 2, WAIT, message="2 pods admitted")
    wait_for(lambda: state_is(kube, namespace, "strict", "Running"), WAIT, message="Running")


def test_retryable_exit_restarts_the_whole_gang_then_succeeds(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    restarts_before = operator.metric(
        "kubegraft_operator_gang_restarts_total", reason="OOMKilledOrKilled"
    )
    manifest = job_manifest(
        "oom",
        nodes=2,
        outcome="fail",
        exit_code=137,
        delay="2s",
        run_policy={"restartBackoffSeconds": 8, "backoffLimit": 2},
    )
    kube.create_job(namespace, manifest)
    st = wait_for(
        lambda: (s := kube.status(namespace, "oom")).get("restarts") == 1 and s,
        WAIT,
        message="restart",
    )
    assert st["lastRestartReason"] == "OOMKilledOrKilled"
    assert st["attempt"] == 1
    # The next attempt is told to succeed (spec.pod may change while running; new pods use it).
    kube.patch_job(namespace, "oom", {"spec": {"pod": {"labels": {OUTCOME_LABEL: "succeed"}}}})
    done = wait_for(
        lambda: state_is(kube, namespace, "oom", "Succeeded", "Failed"), WAIT, message="finished"
    )
    assert (done["state"], done["restarts"], done["attempt"]) == ("Succeeded", 1, 1)
    attempts = sorted(
        {p["metadata"]["labels"]["kubegraft.io/attempt"] for p in kube.pods(namespace, "oom")}
    )
    assert "1" in attempts
    new = [
        p
        for p in kube.pods(namespace, "oom")
        if p["metadata"]["labels"]["kubegraft.io/attempt"] == "1"
    ]
    assert sorted(p["metadata"]["name"] for p in new) == ["oom-worker-0-a1", "oom-worker-1-a1"]
    assert ("Warning", "OOMKilledOrKilled") in kube.events(namespace, "oom")
    after = operator.metric("kubegraft_operator_gang_restarts_total", reason="OOMKilledOrKilled")
    assert after - restarts_before == 1


def test_config_error_fails_at_once(kube: Kube, namespace: str, operator: OperatorProcess) -> None:
    kube.create_job(
        namespace,
        job_manifest(
            "badcfg", outcome="fail", exit_code=78, delay="1s", run_policy={"backoffLimit": 3}
        ),
    )
    done = wait_for(
        lambda: state_is(kube, namespace, "badcfg", "Failed", "Succeeded"), WAIT, message="Failed"
    )
    assert (done["reason"], done["restarts"], done["attempt"]) == ("ConfigurationError", 0, 0)
    assert "78" in done["message"]
    wait_for(lambda: not _has_finalizer(kube, namespace, "badcfg"), WAIT, message="no finalizer")


def _has_finalizer(kube: Kube, namespace: str, name: str) -> bool:
    return FINALIZER in (kube.job(namespace, name) or {}).get("metadata", {}).get("finalizers", [])


def test_unschedulable_gang_is_pending_then_fails_after_startup_timeout(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # 9 GPUs per pod on 8-GPU nodes: the scheduler can never place it.
    kube.create_job(
        namespace,
        job_manifest(
            "toobig",
            nodes=1,
            procs_per_node=9,
            outcome="run",
            run_policy={"startupTimeoutSeconds": 12},
        ),
    )
    pending = wait_for(
        lambda: (s := kube.status(namespace, "toobig")).get("reason") == "Unschedulable" and s,
        WAIT,
        message="Pending Unschedulable",
    )
    assert pending["state"] == "Pending"
    assert "nvidia.com/gpu" in pending["message"]
    done = wait_for(lambda: state_is(kube, namespace, "toobig", "Failed"), WAIT, message="Failed")
    assert done["reason"] == "Unschedulable"
    assert ("Warning", "Unschedulable") in kube.events(namespace, "toobig")


def test_image_pull_error_is_pending_then_fails_after_startup_timeout(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # kwok plays a kubelet that cannot pull the image: the scheduled pods stay Pending with
    # their containers waiting in ImagePullBackOff (outcome image-pull-error).
    kube.create_job(
        namespace,
        job_manifest(
            "nopull",
            nodes=2,
            outcome="image-pull-error",
            delay="0s",
            run_policy={"startupTimeoutSeconds": 12},
        ),
    )
    pending = wait_for(
        lambda: (s := kube.status(namespace, "nopull")).get("reason") == "ImagePullBackOff" and s,
        WAIT,
        message="Pending ImagePullBackOff",
    )
    assert pending["state"] == "Pending"
    assert "Back-off pulling image" in pending["message"], pending["message"]
    done = wait_for(lambda: state_is(kube, namespace, "nopull", "Failed"), WAIT, message="Failed")
    assert done["reason"] == "ImagePullBackOff"
    assert ("Warning", "ImagePullBackOff") in kube.events(namespace, "nopull")
    # The failed gang's pods are deleted: nothing is left waiting on the nodes.
    wait_for(
        lambda: all(p["metadata"].get("deletionTimestamp") for p in kube.pods(namespace, "nopull")),
        WAIT,
        message="pods deleted",
    )


def test_partial_gang_never_counts_as_running(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # 5 pods x 8 GPUs on 4 nodes x 8 GPUs: four fit, one does not. The job must not run.
    kube.create_job(
        namespace,
        job_manifest(
            "partial",
            nodes=5,
            procs_per_node=8,
            outcome="run",
            # long enough for the status to show 4/5 under load before the job fails
            run_policy={"startupTimeoutSeconds": 40},
        ),
    )

    def four_running() -> dict[str, Any] | None:
        # The status is written after the pods change: wait until it shows the 4th pod, not
        # only until the pods do (the status may still say 3/5 when the pods say 4).
        pods = kube.pods(namespace, "partial")
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        st = kube.status(namespace, "partial")
        seen = len(running) == 4 and st.get("reason") == "Unschedulable"
        return st if seen and st.get("nodesReady") == "4/5" else None

    st = wait_for(four_running, WAIT, message="4 of 5 running, 1 unschedulable")
    assert st["state"] == "Pending"
    assert "startTime" not in st
    done = wait_for(lambda: state_is(kube, namespace, "partial", "Failed"), WAIT, message="Failed")
    assert done["reason"] == "Unschedulable"
    # The placed pods are deleted, so a partial gang does not hold GPUs forever.
    wait_for(
        lambda: (
            not [
                p for p in kube.pods(namespace, "partial") if p["status"].get("phase") == "Running"
            ]
        ),
        WAIT,
        message="partial gang released",
    )


def test_suspend_deletes_pods_and_resume_starts_a_new_attempt(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(namespace, job_manifest("pause", nodes=2, outcome="run"))
    running = wait_for(
        lambda: state_is(kube, namespace, "pause", "Running"), WAIT, message="Running"
    )
    kube.patch_job(namespace, "pause", {"spec": {"runPolicy": {"suspend": True}}})
    st = wait_for(
        lambda: state_is(kube, namespace, "pause", "Suspended"), WAIT, message="Suspended"
    )
    assert st["reason"] == "Suspended"
    wait_for(lambda: not kube.pods(namespace, "pause"), WAIT, message="pods deleted")
    assert kube.status(namespace, "pause")["startTime"] == running["startTime"]
    kube.patch_job(namespace, "pause", {"spec": {"runPolicy": {"suspend": False}}})
    st = wait_for(
        lambda: state_is(kube, namespace, "pause", "Running"), WAIT, message="Running again"
    )
    assert (st["attempt"], st["restarts"]) == (1, 0)
    names = sorted(p["metadata"]["name"] for p in kube.pods(namespace, "pause"))
    assert names == ["pause-worker-0-a1", "pause-worker-1-a1"]
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds["Suspended"] == "False"
    assert conds["Running"] == "True"


def test_delete_removes_everything_through_the_garbage_collector(
    kube: Kube, namespace: str, cluster: Cluster, operator: OperatorProcess
) -> None:
    kube.create_job(namespace, job_manifest("gone", nodes=2, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "gone", "Running"), WAIT, message="Running")
    owned = "kubegraft.io/job-name=gone"
    kinds = "pods,services,configmaps,serviceaccounts,roles,rolebindings"
    before = cluster.kubectl(
        "get", kinds, "-n", namespace, "-l", owned, "-o", "name"
    ).stdout.split()
    assert len(before) == 2 + 1 + 1  # pods, the Service, the config ConfigMap: no RBAC
    kube.delete_job(namespace, "gone")
    wait_for(lambda: kube.job(namespace, "gone") is None, WAIT, message="job deleted")
    wait_for(
        lambda: (
            not cluster.kubectl(
                "get", kinds, "-n", namespace, "-l", owned, "-o", "name"
            ).stdout.split()
        ),
        WAIT,
        message="children garbage-collected",
    )


def test_a_job_recreated_at_once_under_the_same_name_runs_its_own_gang(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # Jobs carry no finalizer, so a job is gone the moment it is deleted and a new one of the
    # same name can arrive while the old one's daemon is still stopping and its pods are still
    # being collected. The new job must get its own gang and reach Running (the old daemon's
    # exit must not take the name's wake-up or cache with it), and the old pods must go.
    kube.create_job(namespace, job_manifest("again", nodes=2, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "again", "Running"), WAIT, message="Running")
    old_uid = (kube.job(namespace, "again") or {})["metadata"]["uid"]
    kube.delete_job(namespace, "again")
    wait_for(lambda: kube.job(namespace, "again") is None, WAIT, message="deleted")
    kube.create_job(namespace, job_manifest("again", nodes=2, outcome="run"))
    new_uid = (kube.job(namespace, "again") or {})["metadata"]["uid"]
    assert new_uid != old_uid

    def own_gang_running() -> bool:
        pods = kube.pods(namespace, "again")
        owners = {p["metadata"]["ownerReferences"][0]["uid"] for p in pods}
        return (
            owners == {new_uid}
            and len(pods) == 2
            and state_is(kube, namespace, "again", "Running") is not None
        )

    wait_for(own_gang_running, WAIT, message="the new job's own gang Running, the old pods gone")
    assert kube.status(namespace, "again")["restarts"] == 0


def test_ttl_after_finished_deletes_the_job(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(
        namespace,
        job_manifest("short", nodes=1, delay="1s", run_policy={"ttlSecondsAfterFinished": 2}),
    )
    wait_for(lambda: state_is(kube, namespace, "short", "Succeeded"), WAIT, message="Succeeded")
    wait_for(lambda: kube.job(namespace, "short") is None, WAIT, message="deleted by TTL")


def test_stalled_job_is_restarted_as_stalled(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    # Pods keep running but rank 0 never reports a step: stalled after stallTimeoutSeconds.
    before = operator.metric("kubegraft_operator_gang_restarts_total", reason="Stalled")
    kube.create_job(
        namespace,
        job_manifest(
            "stuck",
            nodes=1,
            outcome="run",
            run_policy={"stallTimeoutSeconds": 10, "progressIntervalSeconds": 2, "backoffLimit": 1},
        ),
    )
    wait_for(lambda: state_is(kube, namespace, "stuck", "Running"), WAIT, message="Running")
    st = wait_for(
        lambda: (s := kube.status(namespace, "stuck")).get("restarts") == 1 and s,
        WAIT,
        message="stall",
    )
    assert st["lastRestartReason"] == "Stalled"
    assert operator.metric("kubegraft_operator_gang_restarts_total", reason="Stalled") - before == 1


def test_active_deadline_fails_the_job(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(
        namespace,
        job_manifest("late", nodes=1, outcome="run", run_policy={"activeDeadlineSeconds": 3}),
    )
    done = wait_for(lambda: state_is(kube, namespace, "late", "Failed"), WAIT, message="Failed")
    assert done["reason"] == "DeadlineExceeded"
    wait_for(
        lambda: all(
            p["metadata"].get("deletionTimestamp") or p["status"].get("phase") != "Running"
            for p in kube.pods(namespace, "late")
        ),
        WAIT,
        message="pods stopped",
    )


def test_pod_deleted_from_under_the_job_restarts_the_gang(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(namespace, job_manifest("evicted", nodes=2, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "evicted", "Running"), WAIT, message="Running")
    kube.core.delete_namespaced_pod("evicted-worker-1-a0", namespace)
    st = wait_for(
        lambda: (s := kube.status(namespace, "evicted")).get("disruptions") == 1 and s,
        WAIT,
        message="restart",
    )
    assert st["lastRestartReason"] == "PodDeleted"
    assert st["restarts"] == 0  # a disruption: backoffLimit is not used up
    st = wait_for(
        lambda: state_is(kube, namespace, "evicted", "Running"), WAIT, message="Running again"
    )
    assert st["attempt"] == 1
