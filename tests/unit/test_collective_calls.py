"""The trainer's collectives go through one module, so the device rule is written once.

``kubegraft_trainer.collectives`` moves every tensor to the process group's device (NCCL takes
only CUDA tensors). A tensor collective called anywhere else in the trainer would bypass that
rule; this reads the trainer's source and fails on any such call. (The trainer tier's
``test_collectives.py`` checks the same at run time, on the call paths a run takes.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

TRAINER = Path(__file__).resolve().parents[2] / "trainer" / "kubegraft_trainer"
HOME = "collectives.py"
# torch.distributed's tensor collectives and Accelerate's (which pass tensors on as they are);
# the *_object collectives place their own tensors and are not listed.
COLLECTIVES = frozenset(
    {
        "all_gather",
        "all_gather_into_tensor",
        "all_reduce",
        "all_to_all",
        "all_to_all_single",
        "broadcast",
        "reduce_scatter",
        "reduce_scatter_tensor",
        "gather_for_metrics",
        "pad_across_processes",
    }
)
# Names that are also tensor methods (Tensor.gather, functools.reduce): only on dist or an
# accelerator object.
AMBIGUOUS = frozenset({"gather", "reduce", "scatter"})
COMMUNICATORS = frozenset({"dist", "acc", "accelerator"})


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def collective_calls(source: str) -> list[tuple[int, str]]:
    """(line, name) of every tensor-collective call in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, receiver = node.func.attr, _receiver(node.func.value)
            if name in COLLECTIVES or (name in AMBIGUOUS and receiver in COMMUNICATORS):
                found.append((node.lineno, f"{receiver}.{name}"))
        elif isinstance(node, ast.ImportFrom) and node.module in (
            "torch.distributed",
            "torch.distributed.distributed_c10d",
        ):
            found += [
                (node.lineno, f"import {a.name}") for a in node.names if a.name in COLLECTIVES
            ]
    return sorted(found)


def test_the_scanner_sees_collectives() -> None:
    src = (
        "import torch.distributed as dist\n"
        "from torch.distributed import all_reduce\n"
        "dist.all_gather(parts, t)\n"
        "self.acc.gather(t)\n"
        "x.gather(1, idx)\n"
        "dist.all_gather_object(objs, o)\n"
    )
    assert collective_calls(src) == [
        (2, "import all_reduce"),
        (3, "dist.all_gather"),
        (4, "acc.gather"),
    ]


def test_only_the_collectives_module_issues_collectives() -> None:
    offenders = {
        p.name: calls
        for p in sorted(TRAINER.glob("*.py"))
        if p.name != HOME and (calls := collective_calls(p.read_text()))
    }
    assert offenders == {}, (
        f"tensor collectives outside {HOME} (use its helpers, which put tensors on the "
        f"process group's device): {offenders}"
    )
    assert collective_calls((TRAINER / HOME).read_text())  # and the helpers are there
