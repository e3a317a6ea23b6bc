"""The operator survives what a real cluster does to it: being killed half-way through a
reconcile, running as two replicas (one leader, kopf peering), being stopped with jobs
resident, losing a node, and a restart of the kube-apiserver.

As elsewhere, the operator is a real subprocess with its ServiceAccount's token, kwok plays
the kubelet, and every wait is on a condition with a timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    post_progress,
    progress_token,
    repo_root,
    state_is,
    wait_for,
)

from kubegraft.devcluster import procs
from kubegraft.devcluster.cluster import Cluster
from kubegraft.devcluster.manifests import FAKE_NODE_ANNOTATION
from kubegraft.progress import ProgressReport

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""
LIFETIME = 15
"""Peering keep-alive lifetime (s): short for a quick failover, long enough that a busy
machine does not miss keep-alives and make the replicas flap."""
PEERING_OBJECT = {
    "apiVersion": "kopf.dev/v1",
    "kind": "KopfPeering",
    "metadata": {"name": "kubegraft"},
}


def test_killed_half_way_then_restarted_creates_nothing_twice(
    cluster: Cluster, kube: Kube, namespace: str, op_kubeconfig: Path, tmp_path: Path
) -> None:
    # The first operator dies (exit 137, as if SIGKILLed) right after its 2nd create: the
    # creates go out in one wave, pods first in rank order, so 2 of the 4 pods exist; the
    # config ConfigMap and the Service do not; no status was written.
    crashing = OperatorProcess(
        op_kubeconfig,
        tmp_path / "crash.log",
        namespace=namespace,
        exit_after_creates=2,
    ).start()
    kube.create_job(namespace, job_manifest("crash", nodes=4, delay="3s"))
    assert crashing.proc is not None
    assert crashing.proc.wait(timeout=90) == 137
    half = kube.pods(namespace, "crash")
    assert len(half) == 2, [p["metadata"]["name"] for p in half]
    assert "state" not in kube.status(namespace, "crash")
    selector = ("-n", namespace, "-l", "kubegraft.io/job-name=crash", "-o", "name")
    assert cluster.kubectl("get", "services,configmaps", *selector).stdout.split() == []

    with OperatorProcess(op_kubeconfig, tmp_path / "after.log", namespace=namespace):
        done = wait_for(
            lambda: state_is(kube, namespace, "crash", "Succeeded", "Failed"),
            WAIT,
            message="finished",
        )
    assert (done["state"], done["restarts"], done["attempt"]) == ("Succeeded", 0, 0)
    pods = kube.pods(namespace, "crash")
    assert sorted(p["metadata"]["name"] for p in pods) == [f"crash-worker-{r}-a0" for r in range(4)]
    # The two pods from before the crash were kept, not recreated.
    assert {p["metadata"]["uid"] for p in half} <= {p["metadata"]["uid"] for p in pods}
    owned = cluster.kubectl(
        "get",
        "services,configmaps",
        "-n",
        namespace,
        "-l",
        "kubegraft.io/job-name=crash",
        "-o",
        "name",
    ).stdout.split()
    kinds = Counter(name.split("/")[0] for name in owned)
    assert kinds == Counter({"service": 1, "configmap": 1})
    job_uid = kube.job(namespace, "crash")["metadata"]["uid"]  # type: ignore[index]
    for p in pods:
        assert [o["uid"] for o in p["metadata"]["ownerReferences"]] == [job_uid]


def test_two_replicas_one_leader_and_failover(
    cluster: Cluster, kube: Kube, namespace: str, op_kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-f", str(repo_root() / "manifests" / "operator" / "peering.yaml"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/kopfpeerings.kopf.dev"
    )
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(PEERING_OBJECT),
    )
    env = {"KUBEGRAFT_PEERING_LIFETIME": str(LIFETIME)}
    low = OperatorProcess(
        op_kubeconfig,
        tmp_path / "low.log",
        namespace=namespace,
        peering="kubegraft",
        priority=10,
        env=env,
    )
    high = OperatorProcess(
        op_kubeconfig,
        tmp_path / "high.log",
        namespace=namespace,
        peering="kubegraft",
        priority=20,
        env=env,
    )
    # Both at the same instant, as a Deployment with two replicas starts them. kopf starts
    # every replica paused until it has read the peering object. A low one that reads it
    # after the high one's keep-alive never runs (and so never logs "Pausing"); one that
    # reads it before resumes, then pauses on the keep-alive. Either way it must not act.
    low.start()
    high.start()
    try:
        low.wait_healthy()
        high.wait_healthy()
        wait_for(
            lambda: len(_peers(cluster, namespace)) == 2, WAIT, message="both replicas in peering"
        )
        wait_for(lambda: _peering_verdict(low.logs()) != "Resuming", WAIT, message="low one paused")
        kube.create_job(namespace, job_manifest("led", nodes=2, outcome="run"))
        wait_for(lambda: state_is(kube, namespace, "led", "Running"), WAIT, message="Running")
        assert high.metric("kubegraft_operator_reconciles_total", result="ok") > 0
        assert low.metric("kubegraft_operator_reconciles_total", result="ok") == 0
        assert "Pausing operations" not in high.logs()
        # Progress: the paused replica refuses rank 0's report (503: the sink tries another
        # connection, which the Service may send to the leader); the leader takes it.
        rank0 = next(
            p
            for p in kube.pods(namespace, "led")
            if p["metadata"]["labels"]["kubegraft.io/node-rank"] == "0"
        )
        token = progress_token(cluster.kubectl, rank0)
        path = f"/v1/namespaces/{namespace}/finetunejobs/led/progress"
        report = ProgressReport(step=7, total_steps=70).to_json()
        with pytest.raises(urllib.error.HTTPError) as paused:
            post_progress(f"https://127.0.0.1:{low.progress_port}{path}", report, token)
        assert paused.value.code == 503
        assert "step" not in (kube.status(namespace, "led").get("progress") or {})
        post_progress(f"https://127.0.0.1:{high.progress_port}{path}", report, token)
        wait_for(
            lambda: (kube.status(namespace, "led").get("progress") or {}).get("step") == 7,
            WAIT,
            message="the leader folded the report",
        )

        high.kill(signal.SIGKILL)  # no goodbye: the follower must notice the expired keep-alive
        killed = time.monotonic()
        kube.create_job(namespace, job_manifest("after", nodes=1, outcome="run"))
        wait_for(
            lambda: state_is(kube, namespace, "after", "Running"),
            WAIT,
            message="follower takes over",
        )
        took = time.monotonic() - killed
        assert low.metric("kubegraft_operator_reconciles_total", result="ok") > 0
        assert _peering_verdict(low.logs()) == "Resuming"
        print(f"failover took {took:.1f}s with a peering lifetime of {LIFETIME}s")
    finally:
        low.stop()
        high.stop()


def test_sigterm_stops_the_operator_with_jobs_resident(
    kube: Kube, namespace: str, op_kubeconfig: Path, tmp_path: Path
) -> None:
    """SIGTERM (a rollout, a drain) ends the operator by itself, well inside a pod's default
    30 s grace period, with jobs resident: its pod watch threads are blocked in a read of an
    open watch, and closing that response from the event loop blocked the loop, so the
    operator never exited and was always SIGKILLed after the grace period.

    Every daemon returns by itself, both when its job finished and at the operator's exit:
    kopf cancels a daemon that does not (a WARNING "... is cancelled" per job)."""
    op = OperatorProcess(op_kubeconfig, tmp_path / "op.log", namespace=namespace)
    op.start().wait_healthy()
    try:
        for name in ("resident-a", "resident-b"):
            kube.create_job(namespace, job_manifest(name, nodes=2, outcome="run"))
        kube.create_job(namespace, job_manifest("finishing", nodes=2, delay="1s"))
        for name in ("resident-a", "resident-b"):
            wait_for(lambda n=name: state_is(kube, namespace, n, "Running"), WAIT, message=name)
        wait_for(lambda: state_is(kube, namespace, "finishing", "Succeeded"), WAIT, message="done")
        wait_for(lambda: _daemons(op) == 2, WAIT, message="two daemons (the finished one stopped)")
    finally:
        assert op.proc is not None
        op.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = op.proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            code = None
        op.kill()
    logs = op.logs()
    assert code == 0, f"no exit {GRACE}s after SIGTERM (code {code}):\n{logs[-3000:]}"
    assert "Operator is stopping" in logs
    cancelled = [line for line in logs.splitlines() if "is cancelled" in line]
    assert not cancelled, "kopf had to cancel daemons:\n" + "\n".join(cancelled)


GRACE = 20
"""Seconds an operator may take to exit on SIGTERM: under the 30 s a pod gets by default."""


def _daemons(op: OperatorProcess) -> int:
    """The operator's liveness probe result: the number of jobs with a running daemon."""
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=5) as r:
        return int(json.loads(r.read())["jobs"])


def _peers(cluster: Cluster, namespace: str) -> dict[str, object]:
    """The replicas' keep-alive records in the peering object (its status, by identity)."""
    body = cluster.kubectl_json("get", "-n", namespace, "kopfpeering", "kubegraft")
    return dict(body.get("status") or {})


def _peering_verdict(log: str) -> str | None:
    """kopf's last "Pausing operations" / "Resuming operations" line in a replica's log."""
    verdicts = [w for w in ("Pausing", "Resuming") if f"{w} operations" in log]
    return max(verdicts, key=lambda w: log.rindex(f"{w} operations"), default=None)


def _set_ready(cluster: Cluster, node: str, status: str) -> None:
    """Set the node's Ready condition as a kubelet (here: kwok) would report it."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {
        "type": "Ready",
        "status": status,
        "reason": "KubeletStopped",
        "message": "test",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }
    patch = json.dumps({"status": {"conditions": [ready]}})
    cluster.kubectl("patch", "node", node, "--subresource=status", "--type=strategic", "-p", patch)


def test_node_not_ready_restarts_the_gang_on_other_nodes(
    cluster: Cluster, kube: Kube, namespace: str, op_kubeconfig: Path, tmp_path: Path
) -> None:
    with OperatorProcess(op_kubeconfig, tmp_path / "op.log", namespace=namespace):
        kube.create_job(namespace, job_manifest("lost", nodes=2, procs_per_node=8, outcome="run"))
        wait_for(lambda: state_is(kube, namespace, "lost", "Running"), WAIT, message="Running")
        victim = next(
            p
            for p in kube.pods(namespace, "lost")
            if p["metadata"]["labels"]["kubegraft.io/node-rank"] == "1"
        )
        node = victim["spec"]["nodeName"]
        cluster.kubectl("cordon", node)
        # Its kubelet is gone: kwok stops managing the node (else kwok's node-initialize Stage
        # turns a NotReady node Ready again within milliseconds, and an operator that looks a
        # moment later never sees it lost), then the node reports NotReady.
        cluster.kubectl("annotate", "node", node, f"{FAKE_NODE_ANNOTATION}-")
        try:
            _set_ready(cluster, node, "False")
            st = wait_for(
                lambda: (s := kube.status(namespace, "lost")).get("disruptions") == 1 and s,
                WAIT,
                message="gang restart",
            )
            assert st["lastRestartReason"] == "NodeLost"
            assert st["restarts"] == 0  # a lost node is a disruption, not a failure
            st = wait_for(
                lambda: state_is(kube, namespace, "lost", "Running"), WAIT, message="Running again"
            )
            assert st["attempt"] == 1
            new = [
                p
                for p in kube.pods(namespace, "lost")
                if p["metadata"]["labels"]["kubegraft.io/attempt"] == "1"
            ]
            assert len(new) == 2
            assert all(p["spec"]["nodeName"] != node for p in new)
        finally:
            cluster.kubectl("annotate", "node", node, f"{FAKE_NODE_ANNOTATION}=fake")
            cluster.kubectl("uncordon", node)
            _set_ready(cluster, node, "True")


def _ready(cluster: Cluster) -> bool:
    """/readyz answers 200; a starting API server may accept connections and hang: not ready."""
    try:
        res = cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def _restart_apiserver(cluster: Cluster) -> float:
    """Stop the kube-apiserver process and start it again with the same argv; seconds down."""
    index, record = next((i, r) for i, r in enumerate(cluster.processes) if "apiserver" in r.name)
    started = time.monotonic()
    assert procs.stop(record)
    fresh = procs.start(record.name, record.argv, Path(record.log))
    cluster.processes[index] = fresh
    cluster.save()
    wait_for(lambda: _ready(cluster), WAIT, interval=0.5, message="kube-apiserver ready again")
    return time.monotonic() - started


def test_operator_keeps_working_across_an_apiserver_restart(
    cluster: Cluster, kube: Kube, namespace: str, op_kubeconfig: Path, tmp_path: Path
) -> None:
    with OperatorProcess(op_kubeconfig, tmp_path / "op.log", namespace=namespace) as op:
        kube.create_job(namespace, job_manifest("before", nodes=1, outcome="run"))
        wait_for(lambda: state_is(kube, namespace, "before", "Running"), WAIT, message="Running")
        down = _restart_apiserver(cluster)
        assert op.alive()
        kube.create_job(namespace, job_manifest("afterwards", nodes=2, delay="2s"))
        done = wait_for(
            lambda: state_is(kube, namespace, "afterwards", "Succeeded", "Failed"),
            120,
            message="job after the restart finished",
        )
        assert done["state"] == "Succeeded"
        # The job from before is still tracked: suspending it takes effect.
        kube.patch_job(namespace, "before", {"spec": {"runPolicy": {"suspend": True}}})
        wait_for(
            lambda: state_is(kube, namespace, "before", "Suspended"), WAIT, message="Suspended"
        )
        print(f"kube-apiserver was restarted in {down:.1f}s")
