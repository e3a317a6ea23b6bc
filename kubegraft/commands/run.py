"""``kubegraft run JOB.yaml``: run a FineTuneJob on this machine, the project's main job.

The same manifest that goes to a cluster runs here as one node with ``--nproc`` local
processes. The manifest is validated first (a bad one fails before anything starts, naming
the field, with exit code 78); local adjustments are then made and written to
``<output>/job.yaml``, which the trainer reads:

* ``--set key=value`` overrides (``training.epochs=2``, ``spec.dataset.maxSamples=500``),
  typed by the field's schema (:mod:`kubegraft.commands.overrides`: a string field keeps the
  text, ``model.revision=1.0`` is ``"1.0"``; numbers, booleans and lists are read as YAML);
* ``distributed.nodes`` is 1 and ``procsPerNode`` is ``--nproc`` (default: the manifest's);
* the rendezvous port is a free one, so runs do not collide;
* ``output.path``: ``--output``, else the manifest's unless it is the in-cluster default,
  else ``./runs/<job-name>``; relative paths are taken from the current directory, and
  relative data/checkpoint paths from the manifest's directory;
* ``output.persistentVolumeClaim`` is not mounted and ``output.ephemeral`` changes nothing:
  the local directory outlives the run either way, and a re-run of the same manifest resumes
  its own checkpoints. The manifest must still satisfy the durable-output rule (a claim or
  ``ephemeral``), so that what runs here is what a cluster admits.

The command is :func:`kubegraft.launch.build_launch` for node 0 -- exactly what a worker pod
runs -- started as a subprocess. A progress bar follows the trainer's progress file (loss,
samples/s, ETA); at the end the final metrics are printed. The exit code is the trainer's own
(0, 1, 75 or 78), read from the per-rank status files because torchrun reports every failure
as 1. This module imports no torch; the trainer runs in the subprocess.

The trainer writes its log to ``<output>/train.log`` (echoed with ``--no-progress``); a
failed run shows the log's path and its last lines. ``--metrics-port`` makes rank 0 serve
the same Prometheus /metrics as in a cluster. Ctrl-C stops the run the way a preemption does
(a checkpoint, exit 75, the same command resumes), in bounded time (:func:`supervise`).
Next to ``metrics.json`` the trainer leaves ``history.json``, the PNGs and the model card
(:mod:`kubegraft_trainer.run_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from pydantic import ValidationError

from kubegraft.api.errors import describe
from kubegraft.api.v1alpha1 import FineTuneJob
from kubegraft.commands.overrides import OverrideError, add_set_argument, apply_override
from kubegraft.commands.process_tree import ProcessTree
from kubegraft.constants import ENV_METRICS_PORT
from kubegraft.exitcodes import ExitCode, node_exit_code
from kubegraft.launch import build_launch
from kubegraft.progress import ENV_PROGRESS_FILE

IN_CLUSTER_OUTPUT = "/output"


class ManifestError(Exception):
    """A manifest that cannot run; the message names the field."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare this command's arguments."""
    parser.add_argument("manifest", help="the FineTuneJob manifest (YAML)")
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="local training processes (default: the manifest's procsPerNode)",
    )
    add_set_argument(parser, "override a field, e.g. training.epochs=2 (repeatable)")
    parser.add_argument(
        "--output", default=None, help="output directory (default: ./runs/<job-name>)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (0: off)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (log lines only)"
    )
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- the manifest


def _absolute_uri(uri: str, base: Path) -> str:
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str((base / uri).resolve())


def localize(
    doc: dict[str, Any],
    *,
    manifest_dir: Path,
    nproc: int | None,
    output: str | None,
    master_port: int,
) -> dict[str, Any]:
    """The manifest as it runs locally (see the module docstring)."""
    doc = copy.deepcopy(doc)
    spec = doc.setdefault("spec", {})
    if not isinstance(spec, dict):
        raise ManifestError("spec: must be a mapping")
    name = str((doc.get("metadata") or {}).get("name") or "job")
    dist = spec.setdefault("distributed", {})
    dist["nodes"] = 1
    if nproc is not None:
        dist["procsPerNode"] = nproc
    dist["masterPort"] = master_port
    out = spec.setdefault("output", {})
    if output is not None:
        path = output
    elif out.get("path") and out["path"] != IN_CLUSTER_OUTPUT:
        path = str(out["path"])
    else:
        path = os.path.join("runs", name)
    out["path"] = str(Path(path).expanduser().resolve())
    dataset = spec.get("dataset") or {}
    for key in ("train", "validation"):
        if isinstance(dataset.get(key), dict) and isinstance(dataset[key].get("uri"), str):
            dataset[key]["uri"] = _absolute_uri(dataset[key]["uri"], manifest_dir)
    for item in dataset.get("evalSets") or []:
        if isinstance(item, dict) and isinstance(item.get("uri"), str):
            item["uri"] = _absolute_uri(item["uri"], manifest_dir)
    model = spec.get("model") or {}
    if isinstance(model.get("checkpoint"), str):
        model["checkpoint"] = _absolute_uri(model["checkpoint"], manifest_dir)
    return doc


def load_manifest(
    path: Path, overrides: list[str], **local: Any
) -> tuple[FineTuneJob, dict[str, Any]]:
    """Read, override, localise and validate a manifest; ManifestError lists every problem."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ManifestError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError(f"{path}: expected a FineTuneJob mapping")
    for assignment in overrides:
        try:
            apply_override(doc, assignment)
        except OverrideError as exc:
            raise ManifestError(str(exc)) from exc
    doc = localize(doc, manifest_dir=path.resolve().parent, **local)
    try:
        job = FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        # describe() expands broken cross-field rules per field: the model's validators are the
        # same rules the API server enforces (kubegraft.api.rules), so nothing is checked twice.
        raise ManifestError("\n".join(describe(exc))) from exc
    return job, doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------- running


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def worker_exit_code(output: Path, launcher_code: int) -> int:
    """The trainer's own exit code from the per-rank status files (torchrun says only 1)."""
    codes = []
    for f in sorted((output / "status").glob("rank-*.json")):
        rec = read_json(f)
        if rec is not None and isinstance(rec.get("exitCode"), int):
            codes.append(int(rec["exitCode"]))
    return node_exit_code(launcher_code, codes)


class ProgressView:
    """A tqdm bar over optimizer steps, fed from the trainer's progress file."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.bar: Any = None
        self.last_step = 0

    def update(self) -> None:
        report = read_json(self.path)
        if report is None or not self.enabled:
            return
        from tqdm import tqdm

        total = report.get("totalSteps")
        if self.bar is None and total:
            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
        if self.bar is None:
            return
        step = int(report.get("step") or 0)
        if step > self.last_step:
            self.bar.update(step - self.last_step)
            self.last_step = step
        post: dict[str, str] = {"phase": str(report.get("phase", ""))}
        if report.get("trainLoss") is not None:
            post["loss"] = f"{report['trainLoss']:.4f}"
        if report.get("samplesPerSecond") is not None:
            post["samples/s"] = f"{report['samplesPerSecond']:.0f}"
        if report.get("accuracy") is not None:
            post["val_acc"] = f"{report['accuracy']:.3f}"
        self.bar.set_postfix(post, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.update()
            self.bar.close()


def print_summary(output: Path) -> None:
    metrics = read_json(output / "metrics.json")
    if metrics is None:
        return
    print(
        f"\nfinished {metrics.get('job')}: {metrics.get('step')} steps "
        f"in {metrics.get('wall_seconds')}s on {metrics.get('processes')} process(es)"
    )
    for name, m in (metrics.get("eval") or {}).items():
        shown = " ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float))
        print(f"  {name}: {shown}")
    if metrics.get("chance_accuracy") is not None:
        print(
            f"  chance (majority class): accuracy={metrics['chance_accuracy']:.4f} "
            f"over {metrics.get('num_labels')} labels"
        )
    if metrics.get("trainable_parameters") is not None:
        print(
            f"  trainable parameters: {metrics['trainable_parameters']:,} "
            f"of {metrics.get('total_parameters'):,}"
        )
    if metrics.get("model_dir"):
        print(f"  model: {metrics['model_dir']}")
    print(f"  metrics: {output / 'metrics.json'}")


def main(args: argparse.Namespace) -> int:
    manifest = Path(args.manifest)
    try:
        job, doc = load_manifest(
            manifest,
            list(args.overrides),
            nproc=args.nproc,
            output=args.output,
            master_port=free_port(),
        )
    except ManifestError as exc:
        print(f"kubegraft run: invalid manifest {manifest}:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)

    output = Path(job.spec.output.path)
    output.mkdir(parents=True, exist_ok=True)
    for stale in (output / "status").glob("rank-*.json"):
        stale.unlink()
    config_path = output / "job.yaml"
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    progress_file = output / "progress.json"
    progress_file.unlink(missing_ok=True)
    launch = build_launch(
        job.spec,
        node_rank=0,
        master_addr="127.0.0.1",
        config_path=str(config_path),
        python=args.python,
        extra_env={
            ENV_PROGRESS_FILE: str(progress_file),
            ENV_METRICS_PORT: str(args.metrics_port),
        },
    )
    env = dict(os.environ)
    env.update(launch.env)
    here = Path(__file__).resolve().parents[2]
    # Running from a source checkout: let the trainer processes import the same packages.
    if (here / "trainer" / "kubegraft_trainer").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(here), str(here / "trainer"), env.get("PYTHONPATH", "")) if p
        )
    d = job.spec.distributed
    print(
        f"kubegraft run: {job.metadata.name}: {d.procs_per_node} process(es), "
        f"strategy {d.strategy.value}; output {output}",
        file=sys.stderr,
    )
    log_file = output / "train.log"
    view = ProgressView(progress_file, enabled=not args.no_progress)
    if args.metrics_port:
        print(
            f"kubegraft run: Prometheus metrics on http://127.0.0.1:{args.metrics_port}/metrics",
            file=sys.stderr,
        )
    with open(log_file, "w") as log, StopRequests() as stops:
        proc = subprocess.Popen(
            launch.argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        echo = LogEcho(log_file) if args.no_progress else None
        try:
            stopped = supervise(
                proc,
                stops,
                grace_seconds=job.spec.run_policy.termination_grace_period_seconds,
                on_poll=view.update if echo is None else echo.update,
            )
        finally:
            view.close()
            if echo is not None:
                echo.close()
    code = worker_exit_code(output, proc.returncode)
    if code == 0:
        print_summary(output)
    elif stopped and code == int(ExitCode.PREEMPTED):
        print(
            f"kubegraft run: stopped; the checkpoint is in {output / 'checkpoints'}: the same "
            "command resumes from it",
            file=sys.stderr,
        )
    else:
        lines = log_file.read_text(errors="replace").splitlines()
        print(
            f"kubegraft run: the trainer exited with {code}"
            + (" after a stop request" if stopped else "")
            + f"; the training log is {log_file}, its last lines:",
            file=sys.stderr,
        )
        for line in failure_excerpt(lines):
            print(f"  {line}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------- stopping

# After the grace period (the trainer's preemption save had all of it), SIGTERM to every
# process of the run, then SIGKILL this much later.
KILL_AFTER_SECONDS = 10.0
POLL_SECONDS = 0.5


class StopRequests:
    """Ctrl-C (SIGINT) and SIGTERM to ``kubegraft run`` while the trainer runs: counted for
    :func:`supervise` to act on, instead of a KeyboardInterrupt raised wherever the main
    thread happens to be (in the middle of the progress bar, or of a wait)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def __enter__(self) -> StopRequests:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def supervise(
    proc: subprocess.Popen[bytes],
    stops: StopRequests,
    *,
    grace_seconds: float,
    on_poll: Callable[[], None],
) -> bool:
    """Wait for the run to end, stopping it in bounded time when asked; returns whether a
    stop was requested.

    The first request is SIGINT to the node supervisor, the path a preempted pod takes
    (supervisor -> torchrun -> every trainer, which saves a checkpoint and exits 75; sent to
    the supervisor alone, as the kubelet does, since torchrun would otherwise get it twice).
    When the run is still there after ``grace_seconds`` (the job's termination grace period,
    which torchrun's own shutdown timeout stays inside), every process of the run gets
    SIGTERM, and SIGKILL :data:`KILL_AFTER_SECONDS` later; a second request skips to SIGKILL.
    Whatever the way out, no process of the run outlives this function.
    """
    tree = ProcessTree(proc.pid)
    handled = 0
    deadline: float | None = None
    escalation = [signal.SIGTERM, signal.SIGKILL]
    while True:
        tree.refresh()
        on_poll()
        try:
            proc.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if stops.count > handled:
            if handled == 0:
                print(
                    "\nkubegraft run: stopping: the trainer saves a checkpoint and exits "
                    f"(at most {grace_seconds:.0f}s; Ctrl-C again to kill it now)",
                    file=sys.stderr,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                deadline = now + grace_seconds
            else:
                print("kubegraft run: killing the run", file=sys.stderr)
                tree.signal(signal.SIGKILL)
                escalation, deadline = [], now + KILL_AFTER_SECONDS
            handled = stops.count
        elif deadline is not None and now >= deadline and escalation:
            sig = escalation.pop(0)
            print(f"kubegraft run: the run did not stop in time: {sig.name}", file=sys.stderr)
            tree.signal(sig)
            deadline = now + KILL_AFTER_SECONDS
    # The supervisor is gone; a trainer it left behind (it was killed) goes too.
    until = time.monotonic() + KILL_AFTER_SECONDS
    while tree.alive() and time.monotonic() < until:
        tree.signal(signal.SIGKILL)
        time.sleep(0.05)
    return handled > 0


def failure_excerpt(lines: list[str], *, tail: int = 30, errors: int = 5) -> list[str]:
    """What a failed run shows of its log: the last ``tail`` lines, preceded by the last
    ``errors`` ERROR lines above them (the root cause is often earlier than the shutdown
    noise at the end)."""
    last = lines[-tail:]
    earlier = [ln for ln in lines[:-tail] if "ERROR" in ln or "configuration error" in ln]
    if not earlier[-errors:]:
        return last
    return [*earlier[-errors:], "...", *last]


class LogEcho:
    """``--no-progress``: the log file's new lines copied to stdout as they come (the trainer
    writes to the file itself, so it never blocks on, or dies with, a pipe to this process)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, errors="replace")  # noqa: SIM115 (closed by close())

    def update(self) -> None:
        chunk = self.file.read()
        if chunk:
            sys.stdout.write(chunk)
            sys.stdout.flush()

    def close(self) -> None:
        self.update()
        self.file.close()
