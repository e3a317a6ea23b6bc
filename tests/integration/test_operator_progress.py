"""Training progress flows from rank 0 to ``.status`` through a narrowly scoped token.

kwok plays the kubelet, so nothing runs inside the pod: the test plays rank 0's reporting
side with the real client code (``kubegraft.progress``), authenticated exactly as a pod
would be: a TokenRequest token for the job's own ServiceAccount (``<job>-worker``). RBAC is
real: that token may patch the job's progress ConfigMap and nothing else.
"""

from __future__ import annotations

import time
import urllib.error
from typing import Any

import pytest
import yaml
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    patch_progress,
    wait_for,
)

from kubegraft.devcluster.cluster import Cluster
from kubegraft.progress import ConfigMapSink, ProgressReport, now_rfc3339

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""


def ca_file(cluster: Cluster) -> str:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["certificate-authority"])


def test_rank0_progress_reaches_status_and_printer_columns(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube.create_job(namespace, job_manifest("learn", nodes=2, outcome="run"))
    wait_for(
        lambda: kube.status(namespace, "learn").get("state") == "Running", WAIT, message="Running"
    )
    rank0 = next(
        p
        for p in kube.pods(namespace, "learn")
        if p["metadata"]["labels"]["kubegraft.io/node-rank"] == "0"
    )
    env = {e["name"]: e.get("value") for e in rank0["spec"]["containers"][0]["env"]}
    ref = env["KUBEGRAFT_PROGRESS_CONFIGMAP"]
    assert ref == f"{namespace}/learn-progress"
    sa = rank0["spec"]["serviceAccountName"]
    assert sa == "learn-worker"
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration=10m").stdout.strip()
    monkeypatch.setenv("KUBEGRAFT_CA_FILE", ca_file(cluster))

    report = ProgressReport(
        step=90,
        total_steps=200,
        epoch=0.45,
        eta_seconds=750,
        train_loss=0.4213,
        eval_loss=0.51,
        accuracy=0.83,
        f1=0.8123,
        trainable_parameters=250,
        total_parameters=1000,
        latest_checkpoint="/output/checkpoints/step-80",
        latest_checkpoint_step=80,
        time="2026-01-01T00:00:00Z",
    )
    patch_progress(ref, report.to_json(), api=cluster.server, token=token)

    def folded() -> dict[str, Any] | None:
        st = kube.status(namespace, "learn")
        return st if (st.get("progress") or {}).get("step") == 90 else None

    st = wait_for(folded, WAIT, message="progress in status")
    assert st["progress"]["display"] == "45%"
    assert st["progress"]["eta"] == "12m30s"
    assert st["metrics"]["display"] == "f1=0.81"
    assert st["metrics"]["trainLoss"] == pytest.approx(0.4213)
    assert st["parameters"] == {"trainable": 250, "total": 1000, "trainablePercent": 25.0}
    assert st["checkpoints"]["latest"] == "/output/checkpoints/step-80"
    table = cluster.kubectl("get", "ftj", "learn", "-n", namespace).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:6] == ["NAME", "STATE", "NODES", "PROGRESS", "METRIC", "LOSS"]
    assert row[:6] == ["learn", "Running", "2/2", "45%", "f1=0.81", "0.4213"]

    # The token is good for exactly that ConfigMap: not the config, not another job's report.
    kube.create_job(namespace, job_manifest("other", nodes=1, outcome="run"))
    wait_for(
        lambda: kube.status(namespace, "other").get("state") == "Running",
        WAIT,
        message="other Running",
    )
    for target in (f"{namespace}/learn-config", f"{namespace}/other-progress"):
        with pytest.raises(urllib.error.HTTPError) as denied:
            patch_progress(target, "{}", api=cluster.server, token=token)
        assert denied.value.code == 403
    who = f"--as=system:serviceaccount:{namespace}:{sa}"
    for verb, what in (
        ("get", "secrets"),
        ("list", "configmaps"),
        ("create", "pods"),
        ("patch", "finetunejobs"),
    ):
        res = cluster.kubectl("auth", "can-i", verb, what, "-n", namespace, who, check=False)
        assert res.stdout.strip() == "no", (verb, what)
    assert (
        cluster.kubectl(
            "auth", "can-i", "patch", "configmaps/learn-progress", "-n", namespace, who, check=False
        ).stdout.strip()
        == "yes"
    )

    # A later report moves the columns on.
    patch_progress(
        ref,
        ProgressReport(step=200, total_steps=200, f1=0.9, phase="done").to_json(),
        api=cluster.server,
        token=token,
    )
    st = wait_for(
        lambda: (
            (s := kube.status(namespace, "learn")).get("progress", {}).get("percent") == 100 and s
        ),
        20,
        message="100%",
    )
    assert st["metrics"]["display"] == "f1=0.90"


def test_heartbeats_keep_a_long_evaluation_alive_and_their_loss_is_a_stall(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rank 0 evaluates at one step for well past stallTimeoutSeconds, sending a heartbeat
    (the real client, the pod's own token) every second: Running. Then the heartbeats stop:
    Stalled, and the reason says so."""
    stall = 12
    kube.create_job(
        namespace,
        job_manifest(
            "evals",
            nodes=1,
            outcome="run",
            run_policy={
                "stallTimeoutSeconds": stall,
                "progressIntervalSeconds": 1,
                "backoffLimit": 1,
            },
        ),
    )
    wait_for(
        lambda: kube.status(namespace, "evals").get("state") == "Running", WAIT, message="Running"
    )
    token = cluster.kubectl(
        "create", "token", "evals-worker", "-n", namespace, "--duration=10m"
    ).stdout.strip()
    monkeypatch.setenv("KUBEGRAFT_CA_FILE", ca_file(cluster))
    sink = ConfigMapSink(f"{namespace}/evals-progress", api=cluster.server, token=token)
    started = time.monotonic()
    last = ""
    try:
        while time.monotonic() - started < 3 * stall:
            stamp = now_rfc3339()
            if stamp != last:  # one heartbeat per second, each with its own time
                sink.send(ProgressReport(phase="evaluating", step=40, time=stamp).to_json())
                last = stamp
            st = kube.status(namespace, "evals")
            assert st.get("restarts", 0) == 0, st
            assert st.get("state") == "Running", st
            time.sleep(0.2)
    finally:
        sink.close()
    progress = kube.status(namespace, "evals")["progress"]
    assert progress["phase"] == "evaluating"
    assert progress["step"] == 40
    assert progress["heartbeatAt"]
    assert sink.connections == 1  # ~36 PATCHes over one kept-alive connection

    st = wait_for(
        lambda: (s := kube.status(namespace, "evals")).get("restarts") == 1 and s,
        WAIT,
        message="stall after the heartbeats stopped",
    )
    assert st["lastRestartReason"] == "Stalled"
    restarting = [c for c in st["conditions"] if c["type"] == "Restarting"]
    assert restarting, st
    assert (
        "no heartbeat from rank 0 for 12s (phase evaluating, step 40)" in restarting[0]["message"]
    )
