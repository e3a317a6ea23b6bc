"""What a user sees with kubectl: the examples are accepted, ``kubectl get ftj`` shows the
printer columns, and ``kubectl explain`` prints the model's field docstrings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.devcluster.cluster import Cluster

pytestmark = pytest.mark.integration

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
DEFAULT_COLUMNS = ["NAMESPACE", "NAME", "STATE", "NODES", "PROGRESS", "METRIC", "LOSS", "AGE"]
WIDE_COLUMNS = [
    "TASK",
    "FREEZE",
    "STRATEGY",
    "RESTARTS",
    "DISRUPTIONS",
    "QUEUE",
    "REASON",
    "ETA",
    "MODEL",
]


def names(paths: list[Path]) -> list[str]:
    return [yaml.safe_load(p.read_text())["metadata"]["name"] for p in paths]


def test_examples_are_accepted_and_listed_with_printer_columns(
    cluster: Cluster, crd: list[str], namespace: str
) -> None:
    assert len(EXAMPLES) >= 6  # and examples/quickstart.yaml once the trainer issue adds it
    for path in EXAMPLES:
        result = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        stored = cluster.kubectl_json("get", "ftj", names([path])[0], "-n", namespace)
        local = FineTuneJob.model_validate(yaml.safe_load(path.read_text()))
        assert FineTuneJob.model_validate(stored).spec == local.spec, path.name

    # Status as the operator would write it, to see the columns filled in.
    status = {
        "status": {
            "state": "Running",
            "nodesReady": "2/2",
            "restarts": 1,
            "startTime": "2026-01-01T12:00:00Z",
            "conditions": [
                {
                    "type": "Running",
                    "status": "True",
                    "reason": "AllNodesReady",
                    "lastTransitionTime": "2026-01-01T12:00:05Z",
                    "observedGeneration": 1,
                }
            ],
            "progress": {"step": 450, "totalSteps": 1000, "display": "45%", "eta": "12m30s"},
            "metrics": {"trainLoss": 0.4321, "f1": 0.812, "display": "f1=0.812"},
        }
    }
    cluster.kubectl(
        "patch", "ftj", "qwen7b-sft-zero3", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip

    table = cluster.kubectl("get", "ftj", "-A").stdout.splitlines()
    assert table[0].split() == DEFAULT_COLUMNS
    rows = {line.split()[1]: line.split() for line in table[1:] if line.split()[0] == namespace}
    assert sorted(rows) == sorted(names(EXAMPLES))
    assert rows["qwen7b-sft-zero3"][2:7] == ["Running", "2/2", "45%", "f1=0.812", "0.4321"]

    wide = cluster.kubectl("get", "ftj", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == DEFAULT_COLUMNS[1:] + WIDE_COLUMNS
    row = next(line.split() for line in wide if line.startswith("qwen7b-sft-zero3 "))
    assert row[-6:] == ["causal-lm", "full", "deepspeed", "1", "12m30s", "hf://Qwen/Qwen2.5-7B"]

    # The short name and the categories work too.
    by_category = cluster.kubectl("get", "kubegraft", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(by_category) == sorted(f"finetunejob.kubegraft.io/{n}" for n in names(EXAMPLES))


def test_kubectl_explain_prints_the_field_docs(cluster: Cluster, crd: list[str]) -> None:
    freeze = cluster.kubectl("explain", "finetunejob.spec.freeze").stdout
    assert "Which parameters train (the layer-freezing policy)" in freeze
    assert "feature-extraction: only the new head trains" in " ".join(freeze.split())
    assert "gradualUnfreezing" in freeze
    assert "layerwiseLrDecay" in freeze

    suspend = " ".join(cluster.kubectl("explain", "ftj.spec.runPolicy.suspend").stdout.split())
    assert "Kueue admits jobs by flipping this" in suspend
    spec = " ".join(cluster.kubectl("explain", "ftj.spec").stdout.split())
    assert "immutable after creation" in spec
