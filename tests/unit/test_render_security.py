"""What the rendered pods and config must not leak or allow (issue 9, item 11): the Hub token is
a file from its Secret, never an environment variable; literal ``spec.pod.env`` values never
reach the config ConfigMap; the trainer's root filesystem is read-only, with emptyDirs for
/tmp and the caches the ML stack writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.constants import CONFIG_FILE
from kubegraft_operator.render import CACHE_DIR, CACHE_ENV, HF_TOKEN_DIR, TMP_DIR, render

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
SECRET_VALUE = "hf_literal_secret_value_1234"


def _job(case: str = "full") -> FineTuneJob:
    job = FineTuneJob.model_validate(yaml.safe_load((GOLDEN / f"{case}.input.yaml").read_text()))
    job.spec.pod.env = [
        {"name": "WANDB_API_KEY", "value": SECRET_VALUE},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    return job


def _objs(job: FineTuneJob) -> list[dict[str, Any]]:
    return render(job, namespace="ns", uid="uid-1", attempt=0)


def _pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == "Pod"]


def test_the_hub_token_is_a_mounted_secret_file_not_an_environment_variable() -> None:
    for pod in _pods(_objs(_job())):
        container = pod["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert "HF_TOKEN" not in env
        # No environment variable of ours takes a Secret's value (the user's may).
        ours = [e for e in container["env"] if e["name"] != "FROM_SECRET"]
        assert not any("secretKeyRef" in (e.get("valueFrom") or {}) for e in ours)
        volume = next(v for v in pod["spec"]["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == "hf-token"
        assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
        assert volume["secret"]["defaultMode"] == 0o440  # the pod's fsGroup reads it
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
        assert (mount["mountPath"], mount["readOnly"]) == (HF_TOKEN_DIR, True)
        # huggingface_hub reads the file HF_TOKEN_PATH names (trainer: pretrained.py).
        assert env["HF_TOKEN_PATH"]["value"] == f"{HF_TOKEN_DIR}/token"
    # Without a tokenSecretRef there is neither the volume nor the variable.
    basic = _pods(_objs(_job("basic")))[0]
    assert not any("secret" in v for v in basic["spec"]["volumes"])
    assert "HF_TOKEN_PATH" not in {e["name"] for e in basic["spec"]["containers"][0]["env"]}


def test_literal_env_values_never_reach_the_rendered_config() -> None:
    objs = _objs(_job())
    config = next(
        o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")
    )
    text = config["data"][CONFIG_FILE]
    assert SECRET_VALUE not in text
    assert "WANDB_API_KEY" not in text
    doc = yaml.safe_load(text)
    assert "env" not in doc["spec"]["pod"]
    # ... while the pods still get them, as the container's environment.
    env = {e["name"]: e for e in _pods(objs)[0]["spec"]["containers"][0]["env"]}
    assert env["WANDB_API_KEY"]["value"] == SECRET_VALUE
    # Nothing else of the spec is dropped: the trainer still reads the same job.
    assert FineTuneJob.model_validate(doc).spec.model == _job().spec.model


def test_the_trainer_runs_with_a_read_only_root_and_writable_tmp_and_caches() -> None:
    for pod in _pods(_objs(_job())):
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in (TMP_DIR, CACHE_DIR, "/dev/shm", "/output"):
            assert path in mounts, path
            assert not mounts[path].get("readOnly")
        assert "emptyDir" in volumes[mounts[TMP_DIR]["name"]]
        assert "emptyDir" in volumes[mounts[CACHE_DIR]["name"]]
        # Every cache and $HOME point into a writable volume.
        env = {e["name"]: e.get("value") for e in container["env"]}
        for name in CACHE_ENV:
            value = env[name]
            assert value is not None
            assert any(value == p or value.startswith(p + "/") for p in mounts), (name, value)
        for name in ("HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR"):
            assert name in env
        # The user's environment comes last, so it can point a cache elsewhere.
        assert [e["name"] for e in container["env"]][-2:] == ["WANDB_API_KEY", "FROM_SECRET"]
