"""`kubegraft run JOB.yaml`: the project's main job, run locally.

A bad manifest fails before anything starts, naming the field (exit 78); a good one runs
through :func:`kubegraft.launch.build_launch` with local processes, shows progress, prints
the final metrics and writes the model; a configuration problem only the trainer can see
(the data) still comes back as 78, although torchrun itself reports every failure as 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from trainer_helpers import local_digits_model, trainer_env, write_digits, write_simple_cnn_init

from kubegraft.cli import main as cli_main
from kubegraft.commands.overrides import apply_override
from kubegraft.commands.run import localize

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(600)]


def _manifest(tmp_path: Path, **training: object) -> Path:
    write_digits(tmp_path / "digits")
    write_simple_cnn_init(tmp_path / "init.safetensors")
    doc = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "digits"},
        "spec": {
            # relative paths: taken from the manifest's directory
            "model": local_digits_model(),
            "dataset": {"train": {"uri": "digits"}, "validationSplit": 0.2},
            "training": {
                "epochs": 5,
                "perDeviceBatchSize": 32,
                "learningRate": 3e-3,
                "logEverySteps": 2,
                **training,
            },
            "distributed": {"procsPerNode": 1},
            # A cluster manifest: `kubegraft run` does not mount the claim, it writes to a
            # local directory (--output here), and the manifest stays valid as it is.
            "output": {"persistentVolumeClaim": "digits-output"},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_overrides_and_localisation(tmp_path: Path) -> None:
    doc: dict[str, object] = {
        "metadata": {"name": "x"},
        "spec": {"training": {"epochs": 3}, "dataset": {"train": {"uri": "d.jsonl"}}},
    }
    apply_override(doc, "training.epochs=7")
    apply_override(doc, "spec.dataset.includeLabels=[a, b]")
    apply_override(doc, "training.learningRate=1e-4")
    local = localize(doc, manifest_dir=tmp_path, nproc=3, output=None, master_port=1234)
    spec = local["spec"]
    assert spec["training"] == {"epochs": 7, "learningRate": 1e-4}
    assert spec["dataset"]["includeLabels"] == ["a", "b"]
    assert spec["dataset"]["train"]["uri"] == str(tmp_path / "d.jsonl")
    assert spec["distributed"] == {"nodes": 1, "procsPerNode": 3, "masterPort": 1234}
    assert spec["output"]["path"] == str(Path.cwd() / "runs" / "x")


def test_bad_manifest_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubegraft.io/v1alpha1",
                "kind": "FineTuneJob",
                "spec": {
                    "model": {"checkpoint": "/x", "task": "sequence-classification"},
                    "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
                    "training": {"epochs": 0, "learningRat": 1},
                    "output": {"ephemeral": True},
                },
            }
        )
    )
    assert cli_main(["run", str(path)]) == 78
    err = capsys.readouterr().err
    assert "spec.training.epochs" in err
    assert "spec.training.learningRat" in err
    doc = yaml.safe_load(path.read_text())
    del doc["spec"]["training"]["learningRat"]
    path.write_text(yaml.safe_dump(doc))
    args = ["run", str(path), "--set", "training.epochs=1", "--set", "training.maxSteps=5"]
    assert cli_main(args) == 78
    assert "set exactly one of epochs and maxSteps" in capsys.readouterr().err
    assert cli_main(["run", str(tmp_path / "missing.yaml")]) == 78


def test_run_takes_the_manifests_the_cluster_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The durable-output rule holds locally too (one manifest for both places): a job that
    may restart, without a claim and without ephemeral, is refused before anything starts;
    with a claim it is the cluster's manifest and runs here, writing to a local directory."""
    doc = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "no-claim"},
        "spec": {
            "model": {"checkpoint": "/x", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
        },
    }
    path = tmp_path / "no-claim.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli_main(["run", str(path), "--output", str(tmp_path / "out")]) == 78
    err = capsys.readouterr().err
    assert "spec.output.persistentVolumeClaim" in err
    assert "starts again from step 0" in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_run_locally_with_two_processes(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubegraft.cli",
            "run",
            str(manifest),
            "--nproc",
            "2",
            "--set",
            "training.epochs=4",
            "--set",
            "dataset.includeLabels=['0','1','2','3','4']",
        ],
        cwd=work,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = work / "runs" / "digits"  # default output: ./runs/<job-name>
    m = json.loads((out / "metrics.json").read_text())
    assert m["processes"] == 2
    assert m["label_names"] == ["0", "1", "2", "3", "4"]
    assert m["accuracy"] > 0.8
    assert "finished digits" in proc.stdout
    assert "validation: accuracy=" in proc.stdout
    assert "step" in proc.stderr
    assert "samples/s" in proc.stderr
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "done"
    assert progress["step"] == progress["totalSteps"]
    assert progress["samplesPerSecond"] > 0  # the final report keeps the run's throughput
    job = yaml.safe_load((out / "job.yaml").read_text())
    assert job["spec"]["distributed"]["procsPerNode"] == 2
    assert job["spec"]["distributed"]["nodes"] == 1
    assert (out / "model" / "model.safetensors").exists()


def test_trainer_side_config_error_exits_78(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubegraft.cli",
            "run",
            str(manifest),
            "--nproc",
            "2",
            "--output",
            "out",
            "--set",
            "dataset.includeLabels=[no-such-label]",
        ],
        cwd=tmp_path,
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 78, proc.stdout + proc.stderr
    assert "no training examples are left" in proc.stderr
    status = json.loads((tmp_path / "out" / "status" / "rank-0.json").read_text())
    assert status["reason"] == "ConfigurationError"
    # The failure shows where the whole log is and its last lines, not only the ERROR lines
    # (the supervisor's and torchrun's closing lines say which rank failed and how).
    log_file = tmp_path / "out" / "train.log"
    assert f"the training log is {log_file}" in proc.stderr
    tail = [ln for ln in log_file.read_text().splitlines() if ln.strip()][-5:]
    assert tail
    shown = proc.stderr.splitlines()
    for line in tail:
        assert f"  {line}" in shown, line
