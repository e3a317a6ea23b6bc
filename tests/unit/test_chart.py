"""The Helm chart's generated files match their sources (hack/chartgen.py), and its values
schema and RBAC rules have the shape the chart promises. Rendering with the real helm, the
schema's verdicts and the install itself are in tests/integration/test_helm_chart.py."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubegraft"


def _chartgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chartgen", ROOT / "hack" / "chartgen.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chartgen"] = module
    spec.loader.exec_module(module)
    return module


chartgen = _chartgen()


@pytest.mark.parametrize(
    "path", sorted(chartgen.generated()), ids=lambda p: str(p.relative_to(ROOT))
)
def test_generated_file_is_up_to_date(path: Path) -> None:
    want = chartgen.generated()[path]
    assert path.exists(), f"{path} missing; run `{chartgen.COMMAND}`"
    assert path.read_text() == want, f"{path} is stale; run `{chartgen.COMMAND}`"


def test_chart_crd_template_holds_the_generated_crd_unchanged() -> None:
    """From `spec:` on, the chart's CRD is manifests/crd/ verbatim (only metadata is added)."""
    template = (CHART / "templates" / "crds" / "finetunejobs.yaml").read_text()
    source = chartgen.CRD_SOURCE.read_text()
    body = template[template.index("\nspec:\n") :].removesuffix("{{- end }}\n")
    assert body.strip("\n") == source[source.index("\nspec:\n") :].strip("\n")
    assert yaml.safe_load(body)["spec"]["names"]["categories"] == ["all", "kubegraft"]


def test_crd_template_drift_is_detected() -> None:
    """The drift check compares content: a CRD changed after generation is reported stale."""
    crd = chartgen.CRD_SOURCE.read_text()
    changed = crd.replace("shortNames:\n    - ftj", "shortNames:\n    - ftjx")
    assert changed != crd
    assert chartgen.crd_template(changed) != chartgen.crd_template(crd)


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{key}" if path else key)
    return out


def test_values_schema_closes_every_object_and_documents_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    nodes = _walk(schema)
    for path, node in nodes:
        if "properties" in node:
            assert node["additionalProperties"] is False, path
        else:
            assert node.get("description"), f"{path} undocumented"
            assert "default" in node, path
    # the schema covers every key of values.yaml
    leaves = {p for p, n in nodes if "properties" not in n}
    assert {"replicaCount", "watchNamespaces", "crds.keep", "trainer.image"} <= leaves
    assert set(schema["properties"]) == set(values)


def test_value_without_a_description_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"`crds\.keep` has no `# --` description"):
        chartgen.values_schema("crds:\n  # -- on\n  enabled: true\n  keep: true\n")


def test_schema_comment_adds_keywords_and_stops_recursion() -> None:
    src = '# -- Free-form.\n# @schema {"additionalProperties": true}\nresources:\n  a: 1\n'
    node = json.loads(chartgen.values_schema(src))["properties"]["resources"]
    assert node == {
        "type": "object",
        "description": "Free-form.",
        "additionalProperties": True,
        "default": {"a": 1},
    }


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    for path, node in _walk(json.loads((CHART / "values.schema.json").read_text())):
        if path and "properties" not in node:
            assert f"| `{path}` |" in readme, path


def test_rbac_rules_are_least_privilege_and_scoped_right() -> None:
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    cluster_scoped = {
        "nodes",
        "namespaces",
        "customresourcedefinitions",
        "clusterkopfpeerings",
        "resourceflavors",
        "priorityclasses",
        "tokenreviews",
    }
    for section, items in rules.items():
        for rule in items:
            assert "*" not in rule["verbs"], rule
            assert "*" not in rule["resources"], rule
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            scoped = set(rule["resources"]) & cluster_scoped
            # a Role in a namespace cannot grant cluster-scoped resources
            assert bool(scoped) == (section != "namespaced"), (section, rule)
    # No RBAC objects or ServiceAccounts: the operator cannot mint identities or grant rights.
    granted = {r for section in rules.values() for rule in section for r in rule["resources"]}
    assert not {"serviceaccounts", "roles", "rolebindings"} & granted
    pvc = [r for r in rules["namespaced"] if "persistentvolumeclaims" in r["resources"]]
    assert pvc
    assert pvc[0]["verbs"] == ["get"]


def test_rbac_manifest_grants_exactly_the_chart_rules() -> None:
    rules = yaml.safe_load((CHART / "files" / "rbac-rules.yaml").read_text())
    docs = list(yaml.safe_load_all((ROOT / "manifests" / "rbac" / "operator.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert role["rules"] == rules["namespaced"] + rules["cluster"] + rules["clusterWide"]
