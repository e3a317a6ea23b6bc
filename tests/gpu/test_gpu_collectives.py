"""Every collective path with CUDA tensors over NCCL, even on a one-GPU machine.

The trainer tier proves the device rule on CPU with a stand-in device; this runs the same probe
(``tests/trainer/collective_probe.py``) on a GPU in its ``native`` mode: nothing is replaced,
the process group is NCCL (which refuses CPU tensors outright), and every collective the
trainer issues must carry tensors on the rank's CUDA device. World size 1 through torchrun is
the point: its process group is a real NCCL group and the collectives run, so a one-GPU machine
checks what a multi-GPU job depends on. Paths: the logged loss, evaluation, the frozen-feature
cache and the preemption flag (DDP), the causal-LM evaluation, and the same loop under
DeepSpeed ZeRO-2 (whose process group DeepSpeed makes).

Marked ``gpu``; ``bench/gpu_check.sh`` runs it first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer"))

from collective_probe import (
    CAUSAL_LM_SITES,
    CLASSIFICATION_SITES,
    causal_lm_spec,
    check_reports,
    classification_spec,
    read_reports,
    run_probe,
)
from trainer_helpers import log_text, metrics, write_job

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(400),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

ZERO2 = {"strategy": "deepspeed", "deepspeed": {"zeroStage": 2}}
CASES: dict[str, tuple[Any, dict[str, Any], set[str]]] = {
    "ddp-classification": (classification_spec, {}, CLASSIFICATION_SITES),
    "ddp-causal-lm": (causal_lm_spec, {}, CAUSAL_LM_SITES),
    # no feature cache under DeepSpeed (it shards the parameters the cache would read)
    "zero2-classification": (
        classification_spec,
        ZERO2,
        CLASSIFICATION_SITES - {"feature_cache.compute_features"},
    ),
}


def _world_sizes() -> list[int]:
    n = torch.cuda.device_count()
    return [1] if n <= 1 else [1, n]


@pytest.mark.parametrize("nproc", _world_sizes())
@pytest.mark.parametrize("case", list(CASES))
def test_collectives_carry_cuda_tensors_over_nccl(tmp_path: Path, case: str, nproc: int) -> None:
    make_spec, distributed, sites = CASES[case]
    spec = make_spec(tmp_path)
    out = tmp_path / "out"
    spec["distributed"] = {"procsPerNode": nproc, "backend": "nccl", **distributed}
    spec["output"] = {"path": str(out), "keepCheckpoints": 1, "ephemeral": True}
    cfg = write_job(tmp_path / "job.yaml", f"gpu-probe-{case}-{nproc}", spec)
    report = tmp_path / "report"
    rc = run_probe(cfg, nproc, report, mode="native", timeout=300)
    reports = read_reports(report, nproc)
    assert rc == 0, log_text(cfg)[-4000:]
    for r in reports:
        # each rank's own GPU (Accelerate and DeepSpeed set the current device to it)
        check_reports([r], sites=sites, expected=f"cuda:{r['rank']}")
    m = metrics(out)
    assert m["processes"] == nproc
    assert m["step"] == 4
