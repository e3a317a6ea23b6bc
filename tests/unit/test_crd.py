"""The generated CRD: structural, documented, bounded, with the right names and columns.

The API server itself checks structure and CEL costs when the CRD is applied (the integration
tier does that); these checks catch the same mistakes without a cluster and say where they are.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubegraft.api import v1alpha1
from kubegraft.commands import crd as crd_command
from kubegraft.commands import validate as validate_command
from kubegraft.crd import generate_crd, render_yaml
from kubegraft.exitcodes import ExitCode

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return generate_crd()


@pytest.fixture(scope="module")
def root(generated: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under ``node`` with its dotted path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_scope_version_and_status_subresource(generated: dict[str, Any]) -> None:
    spec = generated["spec"]
    assert generated["metadata"]["name"] == "finetunejobs.kubegraft.io"
    assert spec["group"] == "kubegraft.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "FineTuneJob",
        "listKind": "FineTuneJobList",
        "plural": "finetunejobs",
        "singular": "finetunejob",
        "shortNames": ["ftj"],
        "categories": ["all", "kubegraft"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_top_level_object(root: dict[str, Any]) -> None:
    assert root["type"] == "object"
    assert root["required"] == ["spec"]
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert (
        root["properties"]["metadata"]["properties"]["name"]["maxLength"]
        == v1alpha1.MAX_NAME_LENGTH
    )


def test_schema_is_structural(root: dict[str, Any]) -> None:
    for path, node in walk(root, ""):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for key in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "nullable"):
            assert key not in node, f"{path}: {key}"
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert node[key] is True, f"{path}: OpenAPI 3.0 wants a boolean {key}"
                assert ("minimum" if key == "exclusiveMinimum" else "maximum") in node, path


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_is_documented(root: dict[str, Any], part: str) -> None:
    undocumented = [
        path
        for path, node in walk(root["properties"][part], part)
        if not path.endswith(("[]", "{}")) and not node.get("description", "").strip()
    ]
    assert undocumented == []


def test_every_spec_list_and_string_is_bounded(root: dict[str, Any]) -> None:
    """CEL cost estimation needs bounds; unbounded input is a bug anyway."""
    unbounded = []
    for path, node in walk(root["properties"]["spec"], "spec"):
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        bounded = {"maxLength", "enum", "pattern"} & set(node)
        # Map values (labels, node selectors) are bounded by the API server's own object limits.
        if node.get("type") == "string" and not bounded and not path.endswith("{}"):
            unbounded.append(path)
    assert unbounded == []


def test_bounds_enums_and_patterns_are_carried_over(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]["properties"]
    lr = spec["training"]["properties"]["learningRate"]
    assert (lr["minimum"], lr["exclusiveMinimum"], lr["maximum"]) == (0.0, True, 10.0)
    assert spec["freeze"]["properties"]["preset"]["enum"] == [
        p.value for p in v1alpha1.FreezePreset
    ]
    assert spec["distributed"]["properties"]["deepspeed"]["properties"]["zeroStage"]["enum"] == [
        0,
        1,
        2,
        3,
    ]
    assert spec["model"]["required"] == ["checkpoint", "task"]
    eval_name = spec["dataset"]["properties"]["evalSets"]["items"]["properties"]["name"]
    assert eval_name["pattern"].startswith("^[a-z0-9]")
    tolerations = spec["pod"]["properties"]["tolerations"]
    assert tolerations["items"]["x-kubernetes-preserve-unknown-fields"] is True


def test_defaults_are_safe(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]["properties"]
    assert spec["freeze"]["default"]["preset"] == "full"
    assert spec["training"]["default"]["epochs"] == 1
    assert spec["distributed"]["properties"]["procsPerNode"]["default"] == 1
    # The operator decides the image when the user does not.
    assert "default" not in spec["pod"]["properties"]["image"]
    # "1.0 unless null": the server prunes nulls, so the default stays in the model.
    assert "default" not in spec["training"]["properties"]["maxGradNorm"]
    # The status is the operator's to write: no defaults there.
    assert all("default" not in n for _, n in walk(root["properties"]["status"], "status"))
    assert "default" not in spec["model"]


def test_cel_rules_come_from_the_model(root: dict[str, Any]) -> None:
    spec = root["properties"]["spec"]
    freeze = spec["properties"]["freeze"]["x-kubernetes-validations"]
    assert {"rule", "message", "fieldPath"} <= set(freeze[0])
    assert [v["rule"] for v in freeze] == [r.cel for r in v1alpha1.FreezeSpec.cel_rules]
    transition = [
        v["fieldPath"] for v in spec["x-kubernetes-validations"] if "oldSelf" in v["rule"]
    ]
    assert transition == [".model", ".dataset", ".freeze", ".training", ".distributed", ".output"]


def test_field_paths_of_rules_exist(root: dict[str, Any]) -> None:
    for path, node in walk(root, ""):
        for rule in node.get("x-kubernetes-validations", []):
            target = node
            for part in rule["fieldPath"].strip(".").split("."):
                assert part in target.get("properties", {}), f"{path}: {rule['fieldPath']}"
                target = target["properties"][part]


def test_printer_columns(generated: dict[str, Any], root: dict[str, Any]) -> None:
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
    default = [(c["name"].upper(), c["jsonPath"]) for c in columns if not c.get("priority")]
    wide = [(c["name"].upper(), c["jsonPath"]) for c in columns if c.get("priority") == 1]
    assert default == [
        ("STATE", ".status.state"),
        ("NODES", ".status.nodesReady"),
        ("PROGRESS", ".status.progress.display"),
        ("METRIC", ".status.metrics.display"),
        ("LOSS", ".status.metrics.trainLoss"),
        ("AGE", ".metadata.creationTimestamp"),
    ]
    assert [name for name, _ in wide] == [
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
    for _, json_path in default + wide:
        node = root
        parts = json_path.strip(".").split(".")
        if parts[0] == "metadata":
            continue
        for part in parts:
            node = node["properties"][part]


def test_crd_command_writes_the_generated_yaml(tmp_path: Path) -> None:
    out = tmp_path / "crd" / "ftj.yaml"
    assert crd_command.main(argparse.Namespace(out=out)) == 0
    assert out.read_text() == render_yaml(generate_crd())
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert docs == [generate_crd()]


def test_validate_command_reports_every_field_and_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = yaml.safe_load((DATA / "valid" / "minimal.yaml").read_text())
    manifest["spec"]["freeze"] = {"preset": "full", "topK": 3}
    manifest["spec"]["training"] = {"epochs": 0}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    args = argparse.Namespace(manifests=[path], quiet=False)
    assert validate_command.main(args) == ExitCode.CONFIG_ERROR == 78
    err = capsys.readouterr().err.splitlines()
    assert (
        f"{path}: spec.freeze.topK: topK is required with preset top-k and only allowed with it"
        in err
    )
    assert any(line.startswith(f"{path}: spec.training.epochs: ") for line in err)


def test_validate_command_accepts_a_valid_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "valid" / "minimal.yaml"
    assert validate_command.main(argparse.Namespace(manifests=[path], quiet=False)) == 0
    assert capsys.readouterr().out.strip() == f"{path}: valid"


def test_validate_command_rejects_non_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    args = argparse.Namespace(manifests=[broken, listing], quiet=True)
    assert validate_command.main(args) == 78
    err = capsys.readouterr().err
    assert str(broken) in err
    assert "must be a mapping" in err


def test_cli_dispatches_to_crd_and_validate(capsys: pytest.CaptureFixture[str]) -> None:
    from kubegraft import cli

    assert cli.main(["crd"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == generate_crd()
    bad = DATA / "invalid" / "topk-without-top-k-preset.yaml"
    assert cli.main(["validate", str(bad)]) == 78
    assert f"{bad}: spec.freeze.topK: " in capsys.readouterr().err
