"""Resolving checkpoint and data URIs: absolute paths, file://, pkg:// (files inside an
installed package, how offline images carry weights), and the ConfigErrors naming the field."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

from kubegraft_trainer.errors import ConfigError
from kubegraft_trainer.uris import is_hub_uri, resolve_uri

pytestmark = pytest.mark.unit

F = "spec.dataset.train.uri"


def test_absolute_path_and_file_uri(tmp_path: Path) -> None:
    target = tmp_path / "data with space.jsonl"
    target.write_text("{}\n")
    assert resolve_uri(str(target), field=F) == target
    assert resolve_uri(f"file://{tmp_path}/data%20with%20space.jsonl", field=F) == target
    assert resolve_uri(f"file://localhost{target}", field=F) == target


def test_package_uri_resolves_inside_the_installed_package() -> None:
    root = Path(str(importlib.resources.files("kubegraft")))
    assert (
        resolve_uri("pkg://kubegraft/api/v1alpha1.py", field=F)
        == (root / "api/v1alpha1.py").resolve()
    )
    assert resolve_uri("pkg://kubegraft", field=F) == root.resolve()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/definitely/not/here.pth", "does not exist"),
        ("relative/path.jsonl", "relative path"),
        ("s3://bucket/key", "unsupported scheme 's3'"),
        ("pkg://kubegraft/no/such/file.txt", "does not exist"),
        ("pkg://no_such_package_kg/x", "is not installed"),
        ("pkg://", "expected pkg://<python_package>/<path>"),
        ("file://otherhost/x", "must not name a host"),
        ("hf://org/name", "Hugging Face Hub id"),
        ("", "empty URI"),
    ],
)
def test_errors_name_the_field(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^spec\.dataset\.train\.uri: .*{message}") as err:
        resolve_uri(uri, field=F)
    assert err.value.field == F
    assert err.value.exit_code == 78


def test_must_exist_false_allows_outputs(tmp_path: Path) -> None:
    assert (
        resolve_uri(str(tmp_path / "later.json"), field=F, must_exist=False)
        == tmp_path / "later.json"
    )


def test_hub_uri_detection() -> None:
    assert is_hub_uri("hf://org/name")
    assert not is_hub_uri("/hf/org")
