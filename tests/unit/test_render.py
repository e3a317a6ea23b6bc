"""Golden-file tests of the operator's pure renderer, plus the properties the issue names.

Each ``tests/data/golden/<case>.input.yaml`` (a FineTuneJob) renders to
``<case>.expected.yaml``. Regenerate after an intended change with
``KUBEGRAFT_UPDATE_GOLDEN=1 pytest tests/unit/test_render.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.constants import (
    CONFIG_FILE,
    CONFIG_MOUNT_DIR,
    LABEL_ATTEMPT,
    LABEL_JOB_NAME,
    LABEL_NODE_RANK,
)
from kubegraft.launch import build_launch
from kubegraft.progress import PROGRESS_AUDIENCE, PROGRESS_TOKEN_DIR
from kubegraft_operator.render import render

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
CASES = sorted(p.name.removesuffix(".input.yaml") for p in GOLDEN.glob("*.input.yaml"))
UID = "00000000-0000-0000-0000-000000000001"


def load(case: str) -> FineTuneJob:
    return FineTuneJob.model_validate(yaml.safe_load((GOLDEN / f"{case}.input.yaml").read_text()))


def rendered(job: FineTuneJob, attempt: int = 0) -> list[dict[str, Any]]:
    return render(job, namespace=job.metadata.namespace or "default", uid=UID, attempt=attempt)


def pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == "Pod"]


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 2


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str) -> None:
    text = yaml.safe_dump_all(rendered(load(case), attempt=1), sort_keys=True)
    expected = GOLDEN / f"{case}.expected.yaml"
    if os.environ.get("KUBEGRAFT_UPDATE_GOLDEN") == "1":
        expected.write_text(text)
    assert expected.exists(), f"missing {expected}; run with KUBEGRAFT_UPDATE_GOLDEN=1"
    assert text == expected.read_text()


@pytest.mark.parametrize("case", CASES)
def test_render_is_pure_and_deterministic(case: str) -> None:
    job = load(case)
    before = job.model_dump()
    assert rendered(job) == rendered(job)
    assert job.model_dump() == before


def _scribble(value: Any) -> None:
    """Change every dict and list inside ``value`` in place."""
    if isinstance(value, dict):
        for v in list(value.values()):
            _scribble(v)
        value["scribbled"] = True
    elif isinstance(value, list):
        for v in value:
            _scribble(v)
        value.append("scribbled")


@pytest.mark.parametrize("case", CASES)
def test_the_rendered_objects_share_nothing_with_the_job(case: str) -> None:
    # The operator validates a job's spec once per generation and renders from that one
    # model on every gang (reconciler._job_from): what is done to a rendered object (rank 0's
    # progress environment, ...) must never reach the spec it came from.
    job = load(case)
    before = job.model_dump()
    _scribble(rendered(job))
    assert job.model_dump() == before


def test_basic_pods_rendezvous_labels_and_gpus() -> None:
    job = load("basic")
    objs = rendered(job, attempt=3)
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ConfigMap", "Service", "Pod", "Pod"]
    ps = pods(objs)
    assert [p["metadata"]["name"] for p in ps] == ["sentiment-worker-0-a3", "sentiment-worker-1-a3"]
    for rank, p in enumerate(ps):
        labels = p["metadata"]["labels"]
        assert labels[LABEL_JOB_NAME] == "sentiment"
        assert labels[LABEL_NODE_RANK] == str(rank)
        assert labels[LABEL_ATTEMPT] == "3"
        spec = p["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["hostname"] == f"sentiment-worker-{rank}"
        assert spec["subdomain"] == "sentiment-workers"
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        expected = build_launch(
            job.spec,
            node_rank=rank,
            master_addr="sentiment-worker-0.sentiment-workers.team-a.svc",
            config_path=f"{CONFIG_MOUNT_DIR}/{CONFIG_FILE}",
        )
        assert c["command"] == expected.argv
        env = env_of(p)
        for k, v in expected.env.items():
            assert env[k] == v
        assert env["WORLD_SIZE"] == "8"
        assert env["NODE_RANK"] == str(rank)
        # Only rank 0 reports progress and gets a token: for the operator's endpoint only,
        # no API token (automount off) on any rank.
        assert ("KUBEGRAFT_PROGRESS_TOKEN_FILE" in env) == (rank == 0)
        assert spec["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in spec  # the namespace's default ServiceAccount
        projected = [v for v in spec["volumes"] if "projected" in v]
        assert len(projected) == (rank == 0)
        owner = p["metadata"]["ownerReferences"][0]
        assert owner["uid"] == UID
        assert owner["controller"]
        assert owner["blockOwnerDeletion"]
    token = ps[0]["spec"]["volumes"][-1]["projected"]["sources"][0]["serviceAccountToken"]
    assert token == {"audience": PROGRESS_AUDIENCE, "expirationSeconds": 3600, "path": "token"}
    mounts = {m["name"]: m for m in ps[0]["spec"]["containers"][0]["volumeMounts"]}
    token_dir = mounts["kubegraft-progress-token"]
    assert (token_dir["mountPath"], token_dir["readOnly"]) == (PROGRESS_TOKEN_DIR, True)
    assert env_of(ps[0])["KUBEGRAFT_PROGRESS_TOKEN_FILE"] == f"{PROGRESS_TOKEN_DIR}/token"


def test_restricted_security_context_and_shm() -> None:
    for p in pods(rendered(load("full"))):
        spec = p["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = spec["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        shm = next(v for v in spec["volumes"] if v["name"] == "shm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["shm"] == "/dev/shm"
        assert mounts["config"] == CONFIG_MOUNT_DIR
        assert mounts["output"] == "/output"
        assert mounts["data"] == "/data"


def test_pass_through_and_secrets_by_reference() -> None:
    p = pods(rendered(load("full")))[1]
    spec = p["spec"]
    assert p["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert p["metadata"]["annotations"] == {
        "example.com/team": "vision",
        "kueue.x-k8s.io/pod-group-total-count": "3",
    }
    # One Kueue pod group per gang attempt: Kueue admits the gang all-or-nothing.
    assert p["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] == "vision-a0"
    assert spec["schedulerName"] == "volcano"
    assert spec["priorityClassName"] == "training-high"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert "podAntiAffinity" in spec["affinity"]
    assert spec["serviceAccountName"] == "trainer"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    env = env_of(p)
    assert "HF_TOKEN" not in env  # a file from the Secret: tests/unit/test_render_security.py
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["DS_BUILD_OPS"] == "0"
    res = spec["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "8"}
    output = next(v for v in spec["volumes"] if v["name"] == "output")
    assert output["persistentVolumeClaim"] == {"claimName": "vision-output"}


def test_user_labels_cannot_override_ownership_labels() -> None:
    job = load("basic")
    job.spec.pod.labels = {LABEL_JOB_NAME: "someone-else", LABEL_ATTEMPT: "99"}
    p = pods(rendered(job))[0]
    assert p["metadata"]["labels"][LABEL_JOB_NAME] == "sentiment"
    assert p["metadata"]["labels"][LABEL_ATTEMPT] == "0"


def test_a_job_owns_one_config_object_a_service_and_its_pods_and_no_rbac() -> None:
    for case in ("basic", "full"):
        kinds = [o["kind"] for o in rendered(load(case))]
        assert kinds[:2] == ["ConfigMap", "Service"]
        assert set(kinds[2:]) == {"Pod"}


def test_service_is_headless_and_config_holds_the_spec() -> None:
    objs = rendered(load("basic"))
    svc = next(o for o in objs if o["kind"] == "Service")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    cm = next(o for o in objs if o["metadata"]["name"] == "sentiment-config")
    doc = yaml.safe_load(cm["data"][CONFIG_FILE])
    again = FineTuneJob.model_validate(doc)
    assert again.spec == load("basic").spec


@pytest.mark.parametrize("case", ["basic", "full"])
def test_the_config_reads_back_with_yaml_11_as_the_spec_less_its_env(case: str) -> None:
    """job.yaml is JSON written for YAML 1.1 readers (json_yaml): PyYAML, as the trainer reads
    it, gets the spec's wire form back with every float a float (5e-05 is no string)."""
    job = load(case)
    cm = next(o for o in rendered(job) if o["kind"] == "ConfigMap")
    doc = yaml.safe_load(cm["data"][CONFIG_FILE])
    wire = job.spec.to_wire()
    wire.get("pod", {}).pop("env", None)
    assert doc["spec"] == wire
    assert isinstance(doc["spec"]["training"]["learningRate"], float)


def test_cpu_only_job_requests_no_gpus() -> None:
    job = load("basic")
    job.spec.distributed.gpus_per_node = 0
    c = pods(rendered(job))[0]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(c.get("resources", {}))


def test_config_carries_the_job_uid_for_checkpoint_identity() -> None:
    """The trainer resumes only checkpoints of its own job: the uid reaches it in job.yaml."""
    cm = next(
        o for o in rendered(load("basic")) if o["kind"] == "ConfigMap" and "job.yaml" in o["data"]
    )
    doc = yaml.safe_load(cm["data"]["job.yaml"])
    assert doc["metadata"]["uid"] == UID
