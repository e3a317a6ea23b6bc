"""Resume only a checkpoint of the same run (real single-process runs on CPU).

Each checkpoint records the FineTuneJob's uid (rendered into job.yaml by the operator) and a
hash of the sections that define the run. A different job on the same output path -- e.g. a
job deleted and recreated under the same name, which gets a new uid -- and a changed run
definition are configuration errors (exit 78) naming both sides, never a silent resume of
another run's optimizer; a checkpoint that does not fit the model at load time is exit 78 too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from trainer_helpers import log_text, run_single, write_digits, write_job, write_simple_cnn_init

from kubegraft.exitcodes import ExitCode
from kubegraft_trainer.checkpointing import TRAINER_STATE, latest_checkpoint, read_trainer_state

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


def _job(path: Path, out: Path, assets: tuple[Path, Path], *, uid: str, **training: object) -> Path:
    digits, init = assets
    head = training.pop("head", {"hiddenLayers": [32]})
    spec = {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
            "head": head,
        },
        "dataset": {"train": {"uri": str(digits)}, "validationSplit": 0.2, "imageSize": 16},
        "training": {
            "maxSteps": 4,
            "perDeviceBatchSize": 16,
            "checkpointEverySteps": 2,
            "evalEverySteps": 1000,
            "seed": 3,
            **training,
        },
        "output": {"path": str(out)},
    }
    write_job(path, "digits", spec)
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["uid"] = uid  # as the operator renders it into job.yaml
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _status(out: Path) -> dict[str, object]:
    value: dict[str, object] = json.loads((out / "status" / "rank-0.json").read_text())
    return value


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("identity-assets")
    return write_digits(root / "digits"), write_simple_cnn_init(root / "init.safetensors", seed=4)


@pytest.fixture(scope="module")
def finished_a(tmp_path_factory: pytest.TempPathFactory, assets: tuple[Path, Path]) -> Path:
    """The output of job A (uid-a), run to its end: checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("job-a")
    cfg = _job(root / "a.yaml", root / "out", assets, uid="uid-a")
    assert run_single(cfg) == 0, log_text(cfg)
    saved = read_trainer_state(latest_checkpoint(root / "out" / "checkpoints"))  # type: ignore[arg-type]
    assert saved["run"]["job_uid"] == "uid-a"
    return root / "out"


def test_another_job_on_the_same_output_is_refused_naming_both(
    tmp_path: Path, assets: tuple[Path, Path], finished_a: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_a, out)
    # same name and spec, new uid: the job was deleted and recreated
    cfg = _job(tmp_path / "b.yaml", out, assets, uid="uid-b", maxSteps=8)
    assert run_single(cfg) == ExitCode.CONFIG_ERROR, log_text(cfg)
    message = str(_status(out)["message"])
    assert message.startswith("spec.output: ")
    assert "uid-a" in message
    assert "uid-b" in message
    assert "another job" in message
    assert not (out / "checkpoints" / "step-00000006").exists()  # nothing of B's was trained

    # the same job (uid-a, same spec) still resumes its own checkpoints
    again = _job(tmp_path / "a.yaml", out, assets, uid="uid-a")
    assert run_single(again) == 0, log_text(again)
    assert "resumed from" in log_text(again)


def test_a_changed_run_definition_is_refused_naming_the_section(
    tmp_path: Path, assets: tuple[Path, Path], finished_a: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_a, out)
    cfg = _job(tmp_path / "a2.yaml", out, assets, uid="uid-a", learningRate=1e-3)
    assert run_single(cfg) == ExitCode.CONFIG_ERROR, log_text(cfg)
    message = str(_status(out)["message"])
    assert "spec training changed" in message
    assert "uid-a" in message


def test_an_architecture_mismatch_at_load_is_a_configuration_error(
    tmp_path: Path, assets: tuple[Path, Path], finished_a: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished_a, out)
    latest = latest_checkpoint(out / "checkpoints")
    assert latest is not None
    # a checkpoint from before run identities (nothing to compare), for another head size
    state = json.loads((latest / TRAINER_STATE).read_text())
    del state["run"]
    (latest / TRAINER_STATE).write_text(json.dumps(state))
    cfg = _job(tmp_path / "a3.yaml", out, assets, uid="uid-a", head={"hiddenLayers": [16]})
    assert run_single(cfg) == ExitCode.CONFIG_ERROR, log_text(cfg)
    message = str(_status(out)["message"])
    assert message.startswith("spec.model: ")
    assert "does not fit this model" in message


def test_the_job_yaml_the_operator_renders_trains_and_carries_the_uid(
    tmp_path: Path, assets: tuple[Path, Path]
) -> None:
    """The trainer reads the operator's ConfigMap as it is rendered (JSON written for YAML
    1.1 readers, kubegraft_operator.json_yaml), exponent floats and all."""
    from kubegraft.api.v1alpha1 import FineTuneJob
    from kubegraft.constants import CONFIG_FILE
    from kubegraft_operator.render import render_config_map

    manifest = _job(tmp_path / "manifest.yaml", tmp_path / "out", assets, uid="unused")
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["training"].update(learningRate=1e-6, weightDecay=2e-20)  # orjson: 1e-6, 2e-20
    job = FineTuneJob.model_validate(doc)
    cm = render_config_map(job, namespace="team-a", uid="uid-rendered")
    assert '"learningRate": 1.0e-6' in cm["data"][CONFIG_FILE]
    cfg = tmp_path / CONFIG_FILE
    cfg.write_text(cm["data"][CONFIG_FILE])
    assert run_single(cfg) == 0, log_text(cfg)
    saved = read_trainer_state(latest_checkpoint(tmp_path / "out" / "checkpoints"))  # type: ignore[arg-type]
    assert saved["run"]["job_uid"] == "uid-rendered"
