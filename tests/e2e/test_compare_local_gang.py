"""``kubegraft compare --cluster`` end to end: the real operator, the real trainer.

**Local processes stand in for a kubelet here** (:mod:`local_kubelet`, as in
test_local_gang.py): the trial's FineTuneJob is created by the command, the operator makes its
pod, the local kubelet runs the pod's real trainer command, rank 0 reports to the operator,
and the command reads accuracy, F1, the parameter counts and the running time from the
job's status, then deletes the job. One trial (one policy, one seed, one node): every pod
shares this host's network, so trials side by side would contend for the manifest's one
masterPort, which on a cluster each pod has for itself; several trials, a failed one and the
labels are tested against the operator with kwok in
tests/integration/test_compare_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import test_local_gang
import yaml
from compare_harness import compare_cluster_argv
from local_kubelet import LocalKubelet
from operator_harness import Kube, OperatorProcess, wait_for

from kubegraft.devcluster.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
kubelet = test_local_gang.kubelet
"""test_local_gang's local kubelet fixture: the output volume one shared tmp dir."""

RUN_TIMEOUT = 480.0
"""One tiny run takes ~1 minute on 2 idle cores; the test machines are shared and busy."""


def test_compare_cluster_reads_a_real_trials_status(
    cluster: Cluster,
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    tmp_path: Path,
) -> None:
    doc = test_local_gang.quickstart_job("qs", tmp_path / "output", max_steps=1)
    doc["spec"]["distributed"]["nodes"] = 1
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen(
        compare_cluster_argv(
            manifest,
            tmp_path / "cmp",
            cluster.kubeconfig,
            namespace,
            "--policies",
            "feature-extraction",
            "--budget-steps",
            "4",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def exited() -> bool:
        kubelet.check()
        return proc.poll() is not None

    try:
        wait_for(exited, RUN_TIMEOUT, interval=1.0, message="compare finished")
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = proc.communicate()
    print(out, err)
    assert proc.returncode == 0, out + err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    (summary,) = result["summaries"]
    assert summary["policy"] == "feature-extraction"
    (trial,) = result["trials"]["feature-extraction"]
    assert trial["step"] == 4  # the budget reached the trainer, the step the status
    metrics = json.loads((tmp_path / "output" / "metrics.json").read_text())
    assert metrics["step"] == 4
    # What the command read from the status is what the trainer measured and reported.
    assert trial["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-3)
    assert trial["f1"] == pytest.approx(metrics["f1"], abs=1e-3)
    assert summary["trainable_share"] == pytest.approx(
        metrics["trainable_parameters"] / metrics["total_parameters"]
    )
    assert trial["train_seconds"] > 0
    assert "deleted the 1 trial jobs" in err
    wait_for(
        lambda: (
            not kube.custom.list_namespaced_custom_object(
                "kubegraft.io", "v1alpha1", namespace, "finetunejobs"
            )["items"]
        ),
        120,
        message="trial job deleted",
    )
