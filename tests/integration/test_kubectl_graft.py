"""``kubectl graft`` (the plugin installed with the package) through the real kubectl against
the local control plane, with the operator reconciling: status (progress bar, ETA, metrics,
restarts, failure reason), logs (the pod of the asked rank), suspend and resume.

kwok plays the kubelet, so there are no container logs to read: ``logs`` is checked up to
choosing the right pod and handing over to ``kubectl logs`` (whose answer from a kwok node is
an error, passed through); rank 0's progress is reported with the real client code, as
tests/integration/test_operator_progress.py does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The operator-test helpers (helper "opfix" moves this module into tests/).
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    post_progress,
    progress_token,
    state_is,
    wait_for,
)

from kubegraft.devcluster.cluster import Cluster
from kubegraft.progress import ProgressReport

pytestmark = pytest.mark.integration
WAIT = 120


def graft(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl graft ARGS`` exactly as a user runs it: kubectl finds the plugin on PATH."""
    plugin = shutil.which("kubectl-graft") or str(Path(sys.executable).parent / "kubectl-graft")
    assert os.access(plugin, os.X_OK), "kubectl-graft is a console script of the package"
    path = os.pathsep.join([str(Path(plugin).parent), str(cluster.bin_dir), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "KUBECONFIG": str(cluster.kubeconfig)}
    env["KUBECTL"] = str(cluster.bin_dir / "kubectl")
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "graft", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


def _manifest(name: str, **kw: object) -> dict[str, object]:
    m = job_manifest(name, **kw)  # type: ignore[arg-type]
    m["spec"]["output"] = {"ephemeral": True}  # type: ignore[index]
    return m


def test_kubectl_finds_the_plugin(cluster: Cluster) -> None:
    plugin = shutil.which("kubectl-graft") or str(Path(sys.executable).parent / "kubectl-graft")
    env = {**os.environ, "PATH": f"{Path(plugin).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "plugin", "list"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert "kubectl-graft" in res.stdout, res.stdout + res.stderr


def test_status_logs_suspend_resume(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    kube.create_job(namespace, _manifest("learn", nodes=2, outcome="run"))
    wait_for(lambda: state_is(kube, namespace, "learn", "Running"), WAIT, message="Running")
    pods = kube.pods(namespace, "learn")
    rank0 = next(p for p in pods if p["metadata"]["labels"]["kubegraft.io/node-rank"] == "0")
    rank1 = next(p for p in pods if p["metadata"]["labels"]["kubegraft.io/node-rank"] == "1")
    env = {e["name"]: e.get("value") for e in rank0["spec"]["containers"][0]["env"]}
    token = progress_token(cluster.kubectl, rank0)
    report = ProgressReport(
        step=90, total_steps=200, epoch=0.45, eta_seconds=750, train_loss=0.4213,
        accuracy=0.83, f1=0.8123, time="2026-01-01T00:00:00Z",
    )  # fmt: skip
    post_progress(env["KUBEGRAFT_PROGRESS_URL"], report.to_json(), token)
    wait_for(
        lambda: (kube.status(namespace, "learn").get("progress") or {}).get("step") == 90,
        WAIT,
        message="progress folded into status",
    )

    one = graft(cluster, "status", "learn", "-n", namespace)
    assert one.returncode == 0, one.stderr
    assert f"{namespace}/learn: Running" in one.stdout
    assert "]  45%  step 90/200" in one.stdout
    eta = kube.status(namespace, "learn")["progress"]["eta"]
    assert f"eta       {eta}" in one.stdout
    assert "trainLoss=0.4213 accuracy=0.83 f1=0.8123" in one.stdout
    assert "restarts  0" in one.stdout

    table = graft(cluster, "status", "-n", namespace)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["NAME", "STATE", "PROGRESS"]
    assert "learn" in table.stdout
    assert "45%" in table.stdout

    logs = graft(cluster, "logs", "learn", "--rank", "1", "-n", namespace)
    assert f"node rank 1 is pod {rank1['metadata']['name']}" in logs.stderr
    logs0 = graft(cluster, "logs", "learn", "-n", namespace)
    assert f"node rank 0 is pod {rank0['metadata']['name']}" in logs0.stderr
    missing = graft(cluster, "logs", "learn", "--rank", "5", "-n", namespace)
    assert missing.returncode == 1
    assert "no pod of node rank 5 (ranks with pods: 0, 1)" in missing.stderr

    sus = graft(cluster, "suspend", "learn", "-n", namespace)
    assert sus.returncode == 0, sus.stderr
    wait_for(lambda: state_is(kube, namespace, "learn", "Suspended"), WAIT, message="Suspended")
    wait_for(lambda: not kube.pods(namespace, "learn"), WAIT, message="pods gone")
    assert "Suspended" in graft(cluster, "status", "learn", "-n", namespace).stdout
    res = graft(cluster, "resume", "learn", "-n", namespace)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: state_is(kube, namespace, "learn", "Running"), WAIT, message="Running again")


def test_status_shows_restarts_and_the_failure_reason(
    cluster: Cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    kube.create_job(
        namespace,
        _manifest("boom", nodes=1, outcome="fail", exit_code=3, delay="1s",
                  run_policy={"backoffLimit": 1}),
    )  # fmt: skip
    st = wait_for(lambda: state_is(kube, namespace, "boom", "Failed"), WAIT, message="Failed")
    out = graft(cluster, "status", "boom", "-n", namespace)
    assert out.returncode == 0, out.stderr
    assert f"restarts  {st['restarts']}" in out.stdout
    assert st["restarts"] >= 1
    assert f"failed    {st['reason']}" in out.stdout
    table = graft(cluster, "status", "-n", namespace).stdout
    assert st["reason"] in table.splitlines()[1]
    unknown = graft(cluster, "status", "nope", "-n", namespace)
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
