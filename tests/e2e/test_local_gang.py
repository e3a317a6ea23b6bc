"""End to end without a kubelet: the operator's worker pods run the real trainer as local
processes, and the FineTuneJob's status tells the story.

**Local processes stand in for a kubelet here.** The control plane is real (etcd,
kube-apiserver with RBAC, controller-manager, scheduler) and kwok marks the scheduled pods
Running, but nothing would execute them. :mod:`local_kubelet` does: it takes each pod the
operator created, runs the pod's own container command and environment as a local process
(rank 0's DNS name mapped to 127.0.0.1, the config ConfigMap written to a local file, the
output volume a tmp dir both ranks share, a pod-bound TokenRequest token of the progress
audience in the projected token volume), and reports the process's exit back through the
pod's status subresource (phase, terminated exit code), as a kubelet would.

The job is the quickstart (examples/quickstart.yaml: a frozen all-MiniLM-L6-v2 with a new
head on the kaomoji data set) shrunk to a couple of dozen steps on 200 examples, with
nodes = 2 and one process per node.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_kubelet import LocalKubelet, free_port, repo_kubelet
from operator_harness import (
    Kube,
    OperatorProcess,
    repo_root,
    wait_for,
)

from kubegraft.devcluster.cluster import Cluster
from kubegraft.devcluster.manifests import OUTCOME_LABEL
from kubegraft.exitcodes import describe
from kubegraft_trainer.checkpointing import latest_checkpoint, list_checkpoints

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RUN_TIMEOUT = 420.0
"""One tiny run takes ~1 minute on 2 idle cores; the test machines are shared and busy."""


@pytest.fixture
def kubelet(cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path) -> Iterator[LocalKubelet]:
    """The local kubelet for the test's namespace; the output volume is one shared tmp dir."""
    with repo_kubelet(
        kube.api_client,  # type: ignore[arg-type]
        cluster.server,
        cluster.kubeconfig,
        namespace,
        tmp_path,
    ) as k:
        yield k


def quickstart_job(
    name: str,
    output: Path,
    *,
    max_steps: int,
    cache_features: bool = True,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """examples/quickstart.yaml, shrunk: 2 nodes x 1 process, a few steps on 200 examples."""
    doc: dict[str, Any] = yaml.safe_load((repo_root() / "examples" / "quickstart.yaml").read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"] = {"name": name}
    spec = doc["spec"]
    spec["dataset"].update(maxSamples=200, maxEvalSamples=100, maxLength=16)
    training = spec["training"]
    training.pop("epochs", None)
    training.update(
        maxSteps=max_steps,
        perDeviceBatchSize=16,
        logEverySteps=1,
        cacheFrozenFeatures=cache_features,
    )
    if checkpoint_every:
        training["checkpointEverySteps"] = checkpoint_every
    spec["distributed"] = {"nodes": 2, "procsPerNode": 1, "masterPort": free_port()}
    # The config names the output path the trainer writes to; the local kubelet maps the
    # output volume to the same host dir, so mount path and host path are one, shared by both
    # ranks as a ReadWriteMany claim would be. `ephemeral`: a claim would need a bound
    # PersistentVolume before the real kube-scheduler places the pods, and the local kubelet
    # maps the volume by name whatever its type.
    spec["output"] = {"path": str(output), "ephemeral": True, "keepCheckpoints": 2}
    # `run`: kwok keeps these pods Running whatever owns them; the local kubelet finishes them.
    spec["pod"] = {"labels": {OUTCOME_LABEL: "run"}}
    spec["runPolicy"] = {
        "restartBackoffSeconds": 1,
        "backoffLimit": 2,
        "startupTimeoutSeconds": 300,
    }
    return doc


def finished(kube: Kube, ns: str, name: str, kubelet: LocalKubelet) -> dict[str, Any] | None:
    kubelet.check()
    st = kube.status(ns, name)
    return st if st.get("state") in ("Succeeded", "Failed") else None


def pod_phase(kube: Kube, ns: str, pod: str) -> tuple[str, int | None]:
    """The pod's phase and its container's exit code, as stored by the API server."""
    status: Any = kube._plain(kube.core.read_namespaced_pod(pod, ns))["status"]
    statuses = status.get("containerStatuses") or [{}]
    term = (statuses[0].get("state") or {}).get("terminated") or {}
    return status["phase"], term.get("exitCode")


def test_quickstart_gang_runs_on_local_processes_and_succeeds(
    kube: Kube,
    cluster: Cluster,
    namespace: str,
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Local processes stand in for a kubelet: the operator's two pods train for real."""
    steps = 16
    kube.create_job(namespace, quickstart_job("qs", tmp_path / "output", max_steps=steps))
    done = wait_for(
        lambda: finished(kube, namespace, "qs", kubelet),
        RUN_TIMEOUT,
        interval=1.0,
        message="qs finished",
    )
    assert done["state"] == "Succeeded", done
    assert (done["reason"], done["restarts"], done["attempt"]) == ("Completed", 0, 0)

    # Progress and metrics reached the status through rank 0's reports to the operator.
    progress, metrics = done["progress"], done["metrics"]
    assert progress["step"] == progress["totalSteps"] == steps
    assert progress["percent"] == 100
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["display"].startswith("accuracy=")
    assert 0 < done["parameters"]["trainable"] < done["parameters"]["total"]

    # Each local process's exit was reported as its pod's outcome, and kwok left it there.
    pods = ["qs-worker-0-a0", "qs-worker-1-a0"]
    for pod in pods:
        outcome = kubelet.outcome(pod)
        assert outcome is not None, pod
        assert (outcome.exit_code, outcome.reported) == (0, True), outcome
        assert pod_phase(kube, namespace, pod) == ("Succeeded", 0)
    # Both ranks ran the pod's real command, rendezvousing at rank 0's address mapped locally.
    for pod in pods:
        argv = (tmp_path / "kubelet" / pod / "argv.txt").read_text().split("\n")
        assert "--master-addr=127.0.0.1" in argv
        assert "kubegraft_trainer" in argv
    assert (tmp_path / "output" / "model").is_dir()
    assert (tmp_path / "output" / "metrics.json").is_file()

    # `kubectl get ftj` shows the state, the progress and the main metric.
    header, row = cluster.kubectl("get", "ftj", "qs", "-n", namespace).stdout.splitlines()[:2]
    cells = dict(zip(header.split(), row.split(), strict=False))
    assert (cells["STATE"], cells["PROGRESS"]) == ("Succeeded", "100%"), (header, row)
    assert cells["METRIC"] == metrics["display"], (header, row)

    # The reports came to the operator's endpoint with rank 0's pod-bound token: no per-job
    # ServiceAccount, Role, RoleBinding or progress ConfigMap, and no API token in any pod.
    rank0 = kube.core.read_namespaced_pod("qs-worker-0-a0", namespace)
    assert rank0.spec.automount_service_account_token is False
    assert [v.name for v in rank0.spec.volumes if v.projected] == ["kubegraft-progress-token"]
    accounts = kube.core.list_namespaced_service_account(namespace).items
    assert [a.metadata.name for a in accounts] == ["default"]
    assert not kube.core.list_namespaced_config_map(
        namespace, label_selector="kubegraft.io/component=progress"
    ).items


def test_killed_worker_restarts_the_gang_from_the_checkpoint_and_succeeds(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    tmp_path: Path,
) -> None:
    """Local processes stand in for a kubelet: SIGKILL rank 1 mid-training (exit 137)."""
    steps = 150
    # Features are not cached, so every step runs the encoder, and there are enough steps
    # (tens of seconds even on an idle machine) that the kill, right after the first
    # checkpoint, lands mid-training; with 60 steps an idle machine sometimes finished first.
    output = tmp_path / "output"
    kube.create_job(
        namespace,
        quickstart_job("kill", output, max_steps=steps, cache_features=False, checkpoint_every=5),
    )

    def checkpointed() -> tuple[int, int] | None:
        """(rank 0's reported step, latest complete checkpoint's step) once both are > 0."""
        kubelet.check()
        st = kube.status(namespace, "kill")
        if st.get("state") != "Running":
            return None
        step = int((st.get("progress") or {}).get("step") or 0)
        saved = latest_checkpoint(output / "checkpoints")
        return (step, list_checkpoints(output / "checkpoints")[-1][0]) if step and saved else None

    # Rank 0's progress as the operator folded it from its reports.
    step, saved_step = wait_for(
        checkpointed, RUN_TIMEOUT, interval=0.2, message="step + checkpoint"
    )
    assert step < steps, "the run finished before it could be killed"
    kubelet.kill("kill-worker-1-a0", signal.SIGKILL)

    killed = wait_for(
        lambda: kubelet.outcome("kill-worker-1-a0"), 30, message="rank 1 exit reported"
    )
    assert (killed.exit_code, killed.phase) == (137, "Failed")
    # The whole container died, torchrun's worker (in a session of its own) included, as a
    # container runtime kills them all: a surviving worker used to keep training with rank 0.
    victim = kubelet.pod("kill-worker-1-a0")
    assert victim is not None
    assert len(victim.tree) >= 3, victim.tree  # the node supervisor, torchrun, the worker
    wait_for(lambda: not victim.running(), 30, message="every process of rank 1 gone")
    # The pod's status says so too (a Failed pod is not deleted by the restart; kwok leaves it).
    assert pod_phase(kube, namespace, "kill-worker-1-a0") == ("Failed", 137)
    restarted = wait_for(
        lambda: (s := kube.status(namespace, "kill")).get("restarts") == 1 and s,
        60,
        message="gang restart",
    )
    assert restarted["attempt"] == 1
    # Whichever rank's failure the operator saw first (rank 1: 137; rank 0 may fail too when its
    # peer vanishes), it restarted the whole gang.
    assert restarted["lastRestartReason"] in (describe(137), describe(1)), restarted

    done = wait_for(
        lambda: finished(kube, namespace, "kill", kubelet),
        RUN_TIMEOUT,
        interval=1.0,
        message="kill finished",
    )
    assert done["state"] == "Succeeded", done
    assert (done["restarts"], done["attempt"]) == (1, 1)
    assert done["progress"]["step"] == done["progress"]["totalSteps"] == steps

    # The new gang: attempt label 1, new pod names, both ran to exit 0 here.
    new = [
        p
        for p in kube.pods(namespace, "kill")
        if p["metadata"]["labels"]["kubegraft.io/attempt"] == "1"
    ]
    assert sorted(p["metadata"]["name"] for p in new) == ["kill-worker-0-a1", "kill-worker-1-a1"]
    for name in ("kill-worker-0-a1", "kill-worker-1-a1"):
        outcome = kubelet.outcome(name)
        assert outcome is not None, name
        assert outcome.exit_code == 0, outcome
    # The old rank 0 was stopped by the gang restart (it did not run to the end).
    old0 = kubelet.outcome("kill-worker-0-a0")
    assert old0 is not None
    assert old0.exit_code != 0, old0
    # The new attempt resumed from a checkpoint in the shared output dir, not from step 0.
    log = kubelet.pods["kill-worker-0-a1"].logs()
    assert "resumed from" in log, log[-3000:]
    resumed_at = int(log.split("resumed from", 1)[1].split(" at step ", 1)[1].split()[0])
    assert 0 < saved_step <= resumed_at < steps, (saved_step, resumed_at)
