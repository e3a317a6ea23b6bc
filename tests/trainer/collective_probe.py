"""The real trainer with every tensor collective it issues checked for its device.

torchrun starts this file in place of ``-m kubegraft_trainer`` (:func:`probe_argv`); it wraps
``torch.distributed``'s tensor collectives, then runs the trainer's own entrypoint. A
collective whose direct caller is trainer code (a file of the ``kubegraft_trainer`` package)
is checked: each of its tensors must be on the expected device. Collectives that DeepSpeed,
Accelerate or torch issue for themselves pass through unchecked (they place their own tensors).
Each rank writes ``<KUBEGRAFT_PROBE_REPORT>/rank-<N>.json``: every checked collective with its
call site and devices, and the violations.

Two modes (``KUBEGRAFT_PROBE_DEVICE``):

* ``lazy`` (CPU machines): the process group is gloo, where a CPU tensor is right and would
  pass unnoticed, so the probe makes the trainer's one device rule,
  ``kubegraft_trainer.collectives.collective_device``, answer PyTorch's lazy device: a real,
  CPU-backed device that is not ``cpu``. A checked collective asserts its tensors are there,
  carries their data through gloo on CPU copies and writes the results back into them, so the
  run goes on with real values. A tensor built on the CPU, which NCCL would refuse, fails the
  run. The rule itself is the only thing replaced (gloo cannot move lazy tensors); when the
  module does not exist (code without the rule) nothing is replaced and its CPU tensors fail.
* ``native`` (GPU machines): nothing is replaced; the expected device is what the rule says
  (the rank's CUDA device under NCCL), and the collectives run as they are.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENSOR_COLLECTIVES = (
    "all_gather",
    "all_gather_into_tensor",
    "all_reduce",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
)
ENV_MODE = "KUBEGRAFT_PROBE_DEVICE"
ENV_REPORT = "KUBEGRAFT_PROBE_REPORT"


CLASSIFICATION_SITES = {
    "loop._reduce_window",
    "evaluation.evaluate",
    "feature_cache.compute_features",
    "signals.agreed",
    "checkpointing.ranks_agreeing",
}
CAUSAL_LM_SITES = {
    "loop._reduce_window",
    "loop._evaluate_lm",
    "signals.agreed",
    "checkpointing.ranks_agreeing",
}


def classification_spec(tmp: Path) -> dict[str, Any]:
    """A few steps of head-only simple_cnn on digits: logged loss, evaluation, feature cache."""
    from trainer_helpers import write_digits, write_simple_cnn_init

    digits = write_digits(tmp / "digits")
    init = write_simple_cnn_init(tmp / "init.safetensors", seed=1)
    return {
        "model": {
            "checkpoint": str(init),
            "task": "image-classification",
            "format": "state-dict",
            "architecture": "simple_cnn",
        },
        "dataset": {
            "train": {"uri": str(digits)},
            "validationSplit": 0.2,
            "maxSamples": 128,
            "maxEvalSamples": 64,
        },
        # only the head trains: the frozen features are cached (an all-gather per table)
        "freeze": {"preset": "feature-extraction"},
        "training": {
            "maxSteps": 4,
            "perDeviceBatchSize": 16,
            "logEverySteps": 1,
            "evalEverySteps": 2,
            "cacheFrozenFeatures": True,
        },
    }


def causal_lm_spec(tmp: Path) -> dict[str, Any]:
    """A few steps of a tiny GPT-2: logged loss and the causal-LM evaluation."""
    from trainer_helpers import sentences, tiny_gpt2

    return {
        "model": {"checkpoint": str(tiny_gpt2(tmp / "gpt2")), "task": "causal-lm"},
        "dataset": {
            "train": {"uri": str(sentences(tmp / "text.jsonl", n=96))},
            "validationSplit": 0.2,
            "maxLength": 16,
        },
        "freeze": {"preset": "full"},
        "training": {
            "maxSteps": 4,
            "perDeviceBatchSize": 8,
            "logEverySteps": 1,
            "evalEverySteps": 2,
            "scheduler": "constant",
        },
    }


def check_reports(reports: list[dict[str, Any]], *, sites: set[str], expected: str) -> None:
    """Shared with the GPU tier: no violation, the right device, every path, the helpers."""
    for r in reports:
        assert r["violations"] == [], r["violations"]
        assert r["exit_code"] == 0, r
        assert r["expected"] == [expected], r["expected"]
        calls = r["calls"]
        assert {c["site"] for c in calls} >= sites, (sites, {c["site"] for c in calls})
        for c in calls:
            assert c["issuer"].startswith("collectives."), c  # no collective issued elsewhere
            assert c["devices"], c
            assert set(c["devices"]) == {expected}, c


def probe_argv(argv: list[str], script: Path | None = None) -> list[str]:
    """A launch command (``kubegraft.launch.build_launch``) with ``script`` (this file by
    default) in place of ``-m kubegraft_trainer``: everything else (node supervisor, torchrun
    flags) unchanged."""
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "kubegraft_trainer":
            return [*argv[:i], str((script or Path(__file__)).resolve()), *argv[i + 2 :]]
    raise ValueError(f"no '-m kubegraft_trainer' in {argv}")


def run_probe(config: Path, nproc: int, report: Path, mode: str, timeout: float) -> int:
    """Run ``config`` under torchrun (as :func:`trainer_helpers.run` does) with the probe in
    place of the trainer module; returns the launcher's exit code."""
    import subprocess

    from trainer_helpers import kill_gang, launch_argv, trainer_env

    argv, env = launch_argv(config, nproc)
    with open(config.with_suffix(".log"), "wb") as out:
        proc = subprocess.Popen(
            probe_argv(argv),
            env=trainer_env({**env, ENV_MODE: mode, ENV_REPORT: str(report)}),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_gang(proc)
            raise


def read_reports(report: Path, nproc: int) -> list[dict[str, Any]]:
    """Every rank's report, rank order."""
    found = sorted(report.glob("rank-*.json"))
    assert len(found) == nproc, (report, found)
    return [json.loads(p.read_text()) for p in found]


def _main() -> int:
    import torch
    import torch.distributed as dist

    mode = os.environ.get(ENV_MODE, "lazy")
    report = Path(os.environ[ENV_REPORT])
    rank = int(os.environ.get("RANK", "0"))
    import kubegraft_trainer

    package = str(Path(kubegraft_trainer.__file__).resolve().parent)
    try:
        import kubegraft_trainer.collectives as rule
    except ImportError:
        rule = None  # type: ignore[assignment]

    if mode == "lazy":
        import torch._lazy.ts_backend

        torch._lazy.ts_backend.init()
        lazy = torch.device("lazy", 0)
        if rule is not None:
            rule.collective_device = lambda: lazy  # the one rule, answered with a non-CPU device

        def expected() -> torch.device:
            return lazy

    elif mode == "native":
        assert rule is not None, "native mode needs kubegraft_trainer.collectives"

        def expected() -> torch.device:
            return rule.collective_device()

    else:
        raise SystemExit(f"{ENV_MODE}={mode!r}: use lazy or native")

    calls: list[dict[str, Any]] = []
    violations: list[str] = []
    expected_devices: set[str] = set()

    def tensors(x: Any) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            return [x]
        if isinstance(x, (list, tuple)):
            return [t for v in x for t in tensors(v)]
        if isinstance(x, dict):
            return [t for v in x.values() for t in tensors(v)]
        return []

    def to_cpu(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.cpu()
        if isinstance(x, (list, tuple)):
            return type(x)(to_cpu(v) for v in x)
        return x

    def trainer_frames() -> list[str]:
        """module.function of every trainer frame on the stack, innermost first."""
        out, f = [], sys._getframe(2)
        while f is not None:
            if f.f_code.co_filename.startswith(package):
                out.append(f"{Path(f.f_code.co_filename).stem}.{f.f_code.co_name}")
            f = f.f_back
        return out

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not sys._getframe(1).f_code.co_filename.startswith(package):
                return fn(*args, **kwargs)  # DeepSpeed's, Accelerate's, torch's own
            frames = trainer_frames()
            issuer = frames[0]
            # the trainer function the collective is for: the first one outside the helpers
            site = next((f for f in frames if not f.startswith("collectives.")), issuer)
            want = expected()
            expected_devices.add(str(want))
            devices = [str(t.device) for t in tensors((args, kwargs))]
            calls.append({"op": name, "issuer": issuer, "site": site, "devices": devices})
            wrong = [d for d in devices if torch.device(d) != want]
            if wrong:
                msg = f"{name} from {site} (issued by {issuer}) got tensors on {wrong}, not {want}"
                violations.append(msg)
                raise AssertionError(msg)
            if mode == "native":
                return fn(*args, **kwargs)
            assert not kwargs.get("async_op"), "the probe carries synchronous collectives only"
            cpu_args, cpu_kwargs = to_cpu(list(args)), {k: to_cpu(v) for k, v in kwargs.items()}
            result = fn(*cpu_args, **cpu_kwargs)
            for mine, carried in zip(
                tensors((args, kwargs)), tensors((cpu_args, cpu_kwargs)), strict=True
            ):
                mine.copy_(carried)
            return result

        return checked

    for name in TENSOR_COLLECTIVES:
        setattr(dist, name, wrap(name, getattr(dist, name)))

    from kubegraft_trainer.entrypoint import main

    code = 1
    try:
        code = main(sys.argv[1:])
    finally:
        report.mkdir(parents=True, exist_ok=True)
        (report / f"rank-{rank}.json").write_text(
            json.dumps(
                {
                    "rank": rank,
                    "mode": mode,
                    "expected": sorted(expected_devices),
                    "exit_code": code,
                    "calls": calls,
                    "violations": violations,
                },
                indent=1,
            )
        )
    return code


if __name__ == "__main__":
    sys.exit(_main())
