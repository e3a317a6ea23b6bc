"""Training progress flows from rank 0 to ``.status`` through the operator's endpoint.

kwok plays the kubelet, so nothing runs inside the pod: the test plays rank 0's reporting
side with the real client code (``kubegraft.progress.OperatorSink``), authenticated exactly as
a pod would be: a token from the TokenRequest API for the pod's ServiceAccount, bound to the
rank 0 pod, of the progress audience (what the kubelet projects into the pod). The operator
verifies it with a real TokenReview and checks the pod against its cache: only the job's own
rank 0 may report, and the operator creates no ServiceAccount, Role or RoleBinding for it.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml
from operator_harness import (
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    Kube,
    OperatorProcess,
    job_manifest,
    post_progress,
    progress_token,
    wait_for,
)

from kubegraft.devcluster.cluster import Cluster
from kubegraft.progress import PROGRESS_AUDIENCE, OperatorSink, ProgressReport, now_rfc3339

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""


def rank(kube: Kube, namespace: str, job: str, r: int) -> dict[str, Any]:
    return next(
        p
        for p in kube.pods(namespace, job)
        if p["metadata"]["labels"]["kubegraft.io/node-rank"] == str(r)
    )


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_rank0_progress_reaches_status_and_printer_columns(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    kube.create_job(namespace, job_manifest("learn", nodes=2, outcome="run"))
    wait_for(
        lambda: kube.status(namespace, "learn").get("state") == "Running", WAIT, message="Running"
    )
    rank0, rank1 = rank(kube, namespace, "learn", 0), rank(kube, namespace, "learn", 1)
    env = env_of(rank0)
    url = env["KUBEGRAFT_PROGRESS_URL"]
    assert url == (
        f"https://127.0.0.1:{operator.progress_port}"
        f"/v1/namespaces/{namespace}/finetunejobs/learn/progress"
    )
    assert "BEGIN CERTIFICATE" in env["KUBEGRAFT_PROGRESS_CA"]
    assert "KUBEGRAFT_PROGRESS_URL" not in env_of(rank1)
    # No API token in the pod and no per-job ServiceAccount: the namespace's default one, and
    # rank 0's projected token is of the progress audience only.
    assert rank0["spec"]["serviceAccountName"] == "default"
    assert rank0["spec"]["automountServiceAccountToken"] is False
    projected = [v for v in rank0["spec"]["volumes"] if "projected" in v]
    assert projected[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == (
        PROGRESS_AUDIENCE
    )
    token = progress_token(cluster.kubectl, rank0)

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
    post_progress(url, report.to_json(), token, env["KUBEGRAFT_PROGRESS_CA"])

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

    # Only the job's own rank 0 may report: not rank 1, not another job's rank 0; and only
    # with a token of the progress audience bound to that pod.
    kube.create_job(namespace, job_manifest("other", nodes=1, outcome="run"))
    wait_for(
        lambda: kube.status(namespace, "other").get("state") == "Running",
        WAIT,
        message="other Running",
    )
    other_url = env_of(rank(kube, namespace, "other", 0))["KUBEGRAFT_PROGRESS_URL"]
    refusals = [
        (url, progress_token(cluster.kubectl, rank1), 403),  # rank 1 of the job
        (other_url, token, 403),  # learn's rank 0, for another job
        (url, progress_token(cluster.kubectl, rank0, audience=""), 401),  # an API token
        (url, token[:-4] + "AAAA", 401),  # a forged signature
    ]
    for target, bad, code in refusals:
        with pytest.raises(urllib.error.HTTPError) as denied:
            post_progress(target, ProgressReport(step=1).to_json(), bad)
        assert denied.value.code == code, (target, code)
    assert (kube.status(namespace, "learn").get("progress") or {}).get("step") == 90
    assert not (kube.status(namespace, "other").get("progress") or {}).get("step")
    # ... and not with a report that is not one.
    with pytest.raises(urllib.error.HTTPError) as bad_body:
        post_progress(url, json.dumps({"step": -1}), token)
    assert bad_body.value.code == 400

    # The progress token is no API credential: the API server refuses its audience.
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    req = urllib.request.Request(
        f"{server['server']}/api/v1/namespaces/{namespace}/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    import ssl

    ctx = ssl.create_default_context(cafile=server["certificate-authority"])
    with pytest.raises(urllib.error.HTTPError) as api_refused:
        urllib.request.urlopen(req, context=ctx, timeout=30)
    assert api_refused.value.code == 401
    # The operator may not create ServiceAccounts, Roles or RoleBindings at all now.
    who = f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
    for what in ("serviceaccounts", "roles.rbac.authorization.k8s.io", "rolebindings"):
        res = cluster.kubectl("auth", "can-i", "create", what, "-n", namespace, who, check=False)
        assert res.stdout.strip() == "no", what

    # A later report moves the columns on.
    post_progress(
        url, ProgressReport(step=200, total_steps=200, f1=0.9, phase="done").to_json(), token
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
) -> None:
    """rank 0 evaluates at one step for well past stallTimeoutSeconds, sending a heartbeat
    (the real client, a token bound to the pod) every second: Running. Then the heartbeats stop:
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
    rank0 = rank(kube, namespace, "evals", 0)
    env = env_of(rank0)
    token_file = tempfile.NamedTemporaryFile("w", suffix=".token")  # noqa: SIM115
    token_file.write(progress_token(cluster.kubectl, rank0))
    token_file.flush()
    sink = OperatorSink(
        env["KUBEGRAFT_PROGRESS_URL"], token_file=token_file.name, ca=env["KUBEGRAFT_PROGRESS_CA"]
    )
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
        token_file.close()
    progress = kube.status(namespace, "evals")["progress"]
    assert progress["phase"] == "evaluating"
    assert progress["step"] == 40
    assert progress["heartbeatAt"]
    assert sink.connections == 1  # ~36 POSTs over one kept-alive connection

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
