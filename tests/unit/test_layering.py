"""The package layering holds at run time: operator -> kubegraft <- trainer.

Each check imports modules in a fresh interpreter and inspects ``sys.modules``, so that what
the test process has already imported cannot hide a violation. ``.importlinter`` checks the
same rules statically (``lint-imports``, run by the test command); this proves them for the
imports that actually happen, including ones made by third-party code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ML_STACK = ("torch", "transformers", "accelerate", "deepspeed", "peft", "timm")

# Imports every module of the given packages, then prints the top-level names in sys.modules.
PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    module = importlib.import_module(name)
    for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def imported_after(*modules: str, walk: bool = True) -> set[str]:
    """Top-level module names loaded by importing ``modules`` (and, if ``walk``, every
    submodule) in a fresh interpreter, with the source tree first on the path."""
    code = (
        PROBE
        if walk
        else "import importlib, json, sys\n"
        + (
            "[importlib.import_module(m) for m in sys.argv[1:]]\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *modules],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_operator_is_the_standard_library() -> None:
    code = "import operator, json; print(json.dumps([operator.__file__, hasattr(operator, 'itemgetter')]))"  # noqa: E501
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    path, has_itemgetter = json.loads(proc.stdout)
    assert has_itemgetter
    assert Path(path).parent == Path(sysconfig.get_paths()["stdlib"])
    assert not (ROOT / "operator" / "__init__.py").exists()


def test_core_and_cli_do_not_import_torch_or_kopf() -> None:
    loaded = imported_after("kubegraft", "kubegraft.cli", walk=False)
    assert "kubegraft" in loaded
    assert not loaded & {"torch", "kopf", *ML_STACK}


def test_cli_parser_with_every_command_stays_light() -> None:
    # `kubegraft --help` builds the parser, importing each kubegraft.commands module.
    code = "from kubegraft.cli import build_parser; build_parser()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "trainer")])}
    probe = (
        code
        + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & {"torch", "kopf", "kubegraft_trainer", "kubegraft_operator", *ML_STACK}


def test_core_imports_neither_operator_nor_trainer() -> None:
    loaded = imported_after("kubegraft")
    assert "kubegraft" in loaded
    assert not loaded & {"kubegraft_operator", "kubegraft_trainer", "torch", "kopf"}


def test_operator_never_imports_the_ml_stack() -> None:
    pytest.importorskip("kopf", reason="the operator extra is not installed")
    loaded = imported_after("kubegraft_operator")
    assert "kubegraft_operator" in loaded
    assert not loaded & set(ML_STACK)
    assert "kubegraft_trainer" not in loaded


def test_trainer_never_imports_kopf() -> None:
    pytest.importorskip("torch", reason="the trainer extra is not installed")
    loaded = imported_after("kubegraft_trainer")
    assert "kubegraft_trainer" in loaded
    assert not loaded & {"kopf", "kubegraft_operator"}


def test_the_packages_come_from_this_checkout() -> None:
    # The cached venv is shared by every checkout with the same pyproject.toml, and its editable
    # install maps the packages to the checkout that created it. hack/test.sh puts this
    # checkout first on PYTHONPATH; without that a clean checkout would test another's code.
    import kubegraft
    import kubegraft_operator
    import kubegraft_trainer

    for module in (kubegraft, kubegraft_operator, kubegraft_trainer):
        assert Path(str(module.__file__)).resolve().is_relative_to(ROOT), module.__file__
