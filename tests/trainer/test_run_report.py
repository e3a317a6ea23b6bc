"""`kubegraft run` locally: the report a finished run leaves, /metrics during a run, Ctrl-C.

One real 2-process run (a module fixture) is read by the report tests: history.json holds the
run's numbers (its last loss is metrics.json's), the confusion matrix counts every validation
example, the model card names the base checkpoint and embeds the metrics and the manifest,
and the PNGs are real pictures. Two more real runs, stopped on purpose: one is scraped on
--metrics-port while it trains and then stopped with Ctrl-C (checkpoint, exit 75); in the
other every process is frozen (SIGSTOP: a hung run, which ignores every signal but SIGKILL)
before the Ctrl-C, and `kubegraft run` still returns, leaving no process behind.
"""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from trainer_helpers import (
    free_port,
    local_digits_model,
    trainer_env,
    wait_for,
    write_digits,
    write_simple_cnn_init,
)

pytestmark = [pytest.mark.trainer, pytest.mark.timeout(900)]

LABELS = ["0", "1", "2", "3", "4"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _manifest(root: Path, name: str, **training: object) -> Path:
    if not (root / "digits").exists():
        write_digits(root / "digits")
        write_simple_cnn_init(root / "init.safetensors")
    doc = {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": local_digits_model(),
            "dataset": {
                "train": {"uri": "digits"},
                "validationSplit": 0.2,
                "includeLabels": LABELS,
            },
            "training": {
                "perDeviceBatchSize": 32,
                "learningRate": 3e-3,
                "logEverySteps": 2,
                **training,
            },
            "distributed": {"procsPerNode": 2},
            "output": {"persistentVolumeClaim": f"{name}-output"},
        },
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start(manifest: Path, output: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kubegraft.cli",
            "run",
            str(manifest),
            "--output",
            str(output),
            *args,
        ],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_processes(output: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes of a run: their command lines name its output directory."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(output) in " ".join(
                p.info["cmdline"] or []
            ):
                found.append(p)
        except psutil.Error:
            continue
    return found


def _progress_step(output: Path) -> int:
    try:
        return int(json.loads((output / "progress.json").read_text()).get("step") or 0)
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A finished 2-process run: (the manifest's directory, its output, metrics.json)."""
    root = tmp_path_factory.mktemp("report")
    manifest = _manifest(root, "digits-report", epochs=3)
    out = root / "out"
    proc = _start(manifest, out, "--no-progress")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    # --no-progress echoes the trainer's log, which also stays in train.log
    assert "loss" in stdout
    assert "samples/s" in stdout
    assert (out / "train.log").read_text().count("samples/s") >= 2
    return root, out, json.loads((out / "metrics.json").read_text())


def test_history_holds_the_runs_numbers(finished: tuple[Path, Path, dict[str, Any]]) -> None:
    _, out, metrics = finished
    history = json.loads((out / "history.json").read_text())
    records = history["log_history"]
    train = [r for r in records if "set" not in r]
    evals = [r for r in records if r.get("set") == "validation"]
    assert history["global_step"] == metrics["step"] == metrics["total_steps"]
    assert train[-1]["loss"] == metrics["train_loss"]
    assert train[-1]["step"] == metrics["step"]
    steps = [r["step"] for r in train]
    assert steps == sorted(set(steps))
    assert all(s % 2 == 0 or s == steps[-1] for s in steps)
    for r in train:
        assert r["learning_rate"] >= 0
        assert r["samples_per_second"] > 0
        assert r["grad_norm"] > 0  # training.maxGradNorm defaults to clipping: measured
    assert train[0]["learning_rate"] > train[-1]["learning_rate"]  # the cosine schedule
    assert len(evals) == 3  # one per epoch
    assert [round(r["epoch"]) for r in evals] == [1, 2, 3]
    final = evals[-1]["metrics"]
    for key in ("loss", "accuracy", "precision", "recall", "f1"):
        assert final[key] == metrics["eval"]["validation"][key]
    assert train[0]["loss"] > train[-1]["loss"]  # it learned


def test_confusion_matrix_counts_every_validation_example(
    finished: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, out, metrics = finished
    final = json.loads((out / "history.json").read_text())["final_evaluation"]
    matrix = final["confusion_matrix"]["validation"]
    images = sum(len(list((root / "digits" / label).glob("*.png"))) for label in LABELS)
    validation_size = images - metrics["train_examples"]
    assert final["label_names"] == LABELS
    assert len(matrix) == len(LABELS)
    assert all(len(row) == len(LABELS) for row in matrix)
    assert sum(map(sum, matrix)) == validation_size == metrics["eval"]["validation"]["samples"]
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    assert correct / validation_size == pytest.approx(metrics["accuracy"])


def test_model_card_names_the_base_model_and_holds_metrics_and_manifest(
    finished: tuple[Path, Path, dict[str, Any]],
) -> None:
    root, out, metrics = finished
    card = (out / "model" / "README.md").read_text()
    front, _, body = card.removeprefix("---\n").partition("\n---\n")
    meta = yaml.safe_load(front)
    assert "kubegraft" in meta["tags"]
    assert "image-classification" in meta["tags"]
    assert meta["metrics"] == ["accuracy", "precision", "recall", "f1"]
    result = meta["model-index"][0]["results"][0]
    assert meta["model-index"][0]["name"] == "digits-report"
    assert {m["type"]: m["value"] for m in result["metrics"]}["accuracy"] == metrics["accuracy"]
    assert str(root / "init.safetensors") in body
    assert "simple_cnn" in body
    assert f"Accuracy: {metrics['accuracy']:.4f}" in body
    assert f"{metrics['trainable_parameters']:,}" in body
    assert "preset: `full`" in body
    embedded = yaml.safe_load(re.search(r"## Manifest.*?```yaml\n(.*?)```", body, re.S)[1])  # type: ignore[index]
    ran = yaml.safe_load((out / "job.yaml").read_text())
    assert embedded["metadata"]["name"] == ran["metadata"]["name"]
    # the spec as it ran: what the manifest said, plus the defaults it left out
    assert embedded["spec"]["model"].items() >= ran["spec"]["model"].items()
    assert embedded["spec"]["training"]["epochs"] == ran["spec"]["training"]["epochs"] == 3
    assert embedded["spec"]["dataset"]["train"] == ran["spec"]["dataset"]["train"]


@pytest.mark.parametrize("name", ["loss.png", "eval_metrics.png", "confusion_matrix.png"])
def test_pictures_are_pngs(finished: tuple[Path, Path, dict[str, Any]], name: str) -> None:
    data = (finished[1] / name).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 300
    assert height >= 300
    assert len(data) > 10_000  # axes, curves and text, not an empty canvas


def test_metrics_port_serves_during_the_run_and_ctrl_c_checkpoints(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "digits-stop", maxSteps=100_000)
    out, port = tmp_path / "out", free_port()
    proc = _start(manifest, out, "--metrics-port", str(port))

    def steps_scraped() -> float:
        try:
            text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except (URLError, OSError):
            return 0.0
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "kubegraft_trainer_steps_total"
        )

    try:
        assert wait_for(lambda: steps_scraped() >= 2, timeout=300, interval=0.5), (
            "no steps on /metrics"
        )
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, stdout + stderr
    assert f"http://127.0.0.1:{port}/metrics" in stderr
    assert "the same command resumes" in stderr
    saved = sorted((out / "checkpoints").glob("step-*/COMPLETE"))
    assert saved, stderr
    assert _run_processes(out) == []


def test_ctrl_c_stops_a_hung_run_in_bounded_time(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "digits-hung", maxSteps=100_000)
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["runPolicy"] = {"terminationGracePeriodSeconds": 10}  # the API's minimum
    manifest.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    proc = _start(manifest, out, "--no-progress")
    frozen: list[psutil.Process] = []
    try:
        assert wait_for(lambda: _progress_step(out) >= 1, timeout=300, interval=0.5)
        frozen = psutil.Process(proc.pid).children(recursive=True)
        assert len(frozen) >= 4  # supervisor, torchrun, 2 trainers
        for p in frozen:
            p.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            for p in frozen:
                p.kill()
    assert proc.returncode != 0
    assert "did not stop in time: SIGTERM" in stderr
    assert "did not stop in time: SIGKILL" in stderr
    assert "the training log is" in stderr
    assert str(out / "train.log") in stderr
    _gone, alive = psutil.wait_procs(frozen, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert _run_processes(out) == []


def test_model_card_of_a_hub_checkpoint_names_it_as_base_model() -> None:
    """Pure: the front matter's base_model is the Hub id (the Hub links the model to it)."""
    from kubegraft.api.v1alpha1 import FineTuneJobSpec
    from kubegraft_trainer.model_card import render_model_card

    spec = FineTuneJobSpec.model_validate(
        {
            "model": {
                "checkpoint": "hf://org/bert-tiny",
                "revision": "1.0",
                "task": "sequence-classification",
            },
            "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
            "freeze": {"preset": "top-k", "topK": 2},
            "output": {"ephemeral": True},
        }
    )
    results = {"validation": {"loss": 0.5, "accuracy": 0.75, "f1": 0.7, "samples": 8}}
    card = render_model_card(
        job="tiny",
        spec=spec,
        summary={"eval": results, "trainable_parameters": 10, "total_parameters": 40},
        records=[],
        parameter_table="",
        manifest={"spec": spec.to_wire()},
        versions={},
    )
    meta = yaml.safe_load(card.removeprefix("---\n").partition("\n---\n")[0])
    assert meta["base_model"] == "org/bert-tiny"
    assert "text-classification" in meta["tags"]
    assert "top-k" in meta["tags"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"loss": 0.5, "accuracy": 0.75, "f1": 0.7}
    assert "(https://huggingface.co/org/bert-tiny)" in card
    assert "revision: `1.0`" in card
    assert "10 of 40 (25.00 %)" in card
