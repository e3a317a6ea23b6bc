"""``kubectl graft``: the kubectl plugin for FineTuneJobs (installed with the package as the
``kubectl-graft`` console script, so ``kubectl graft ...`` finds it on PATH).

    kubectl graft status [JOB] [-n NS | -A]   progress bar, ETA, latest metrics, restarts,
                                              the failure reason (all jobs: one line each)
    kubectl graft logs JOB [--rank N] [-f]    the trainer log of node rank N (default 0) of
                                              the job's current attempt
    kubectl graft suspend JOB / resume JOB    set spec.runPolicy.suspend (the operator stops
                                              or restarts the gang; checkpoints are kept)

It drives ``kubectl`` itself (``$KUBECTL``, else ``kubectl`` on PATH), so the user's
kubeconfig, context and credentials apply unchanged and nothing beyond the base package is
needed. The formatting functions are pure and take the job as the API returns it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from kubegraft.constants import LABEL_ATTEMPT, LABEL_COMPONENT, LABEL_JOB_NAME, LABEL_NODE_RANK

RESOURCE = "finetunejobs.kubegraft.io"
CONTAINER = "trainer"
"""The worker pods' container (kubegraft_operator.render.CONTAINER_NAME)."""
WORKER = "worker"
BAR_WIDTH = 30
Obj = dict[str, Any]


class PluginError(Exception):
    """A user-facing error: printed without a traceback, exit code 1."""


# ------------------------------------------------------------------------------ formatting
def progress_bar(percent: float | None, width: int = BAR_WIDTH) -> str:
    """``[#########.....................]  30%``; unknown progress is an empty bar with ``?``."""
    if percent is None:
        return "[" + " " * width + "]    ?"
    p = max(0.0, min(100.0, float(percent)))
    filled = round(width * p / 100)
    return "[" + "#" * filled + "." * (width - filled) + f"] {p:3.0f}%"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def metrics_line(metrics: Obj | None) -> str:
    """The latest metrics, in a fixed order (``-`` when none were reported yet)."""
    if not metrics:
        return "-"
    order = ("trainLoss", "evalLoss", "accuracy", "precision", "recall", "f1")
    parts = [f"{k}={_fmt(metrics[k])}" for k in order if metrics.get(k) is not None]
    for name, values in sorted((metrics.get("evalSets") or {}).items()):
        parts += [f"{name}.{k}={_fmt(v)}" for k, v in sorted(values.items())]
    return " ".join(parts) or "-"


def failure_reason(status: Obj) -> str | None:
    """Why the job failed (``reason: message``), or None unless it failed."""
    if status.get("state") != "Failed":
        return None
    reason, message = status.get("reason") or "Failed", status.get("message") or ""
    return f"{reason}: {message}" if message else reason


def status_report(job: Obj) -> str:
    """The detailed status of one job, as ``kubectl graft status JOB`` prints it."""
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    progress = status.get("progress") or {}
    lines = [
        f"{meta.get('namespace', '')}/{meta.get('name', '')}: {status.get('state') or 'Pending'}"
    ]
    step, total = progress.get("step"), progress.get("totalSteps")
    where = f"step {step}/{total}" if total else (f"step {step}" if step is not None else "")
    if progress.get("epoch") is not None:
        where += f", epoch {progress['epoch']:.2f}"
    lines.append(f"  progress  {progress_bar(progress.get('percent'))}  {where}".rstrip())
    eta = progress.get("eta") or ("-" if status.get("state") != "Succeeded" else "done")
    speed = progress.get("samplesPerSecond")
    lines.append(f"  eta       {eta}" + (f"  ({speed:.1f} samples/s)" if speed else ""))
    lines.append(f"  metrics   {metrics_line(status.get('metrics'))}")
    restarts = f"  restarts  {status.get('restarts', 0)}"
    if status.get("lastRestartReason"):
        restarts += f" (last: {status['lastRestartReason']})"
    lines.append(restarts)
    if status.get("nodesReady"):
        lines.append(
            f"  nodes     {status['nodesReady']} ready, attempt {status.get('attempt', 0)}"
        )
    latest = (status.get("checkpoints") or {}).get("latest")
    if latest:
        lines.append(f"  checkpoint {latest}")
    failed = failure_reason(status)
    if failed:
        lines.append(f"  failed    {failed}")
    elif status.get("message"):
        lines.append(f"  message   {status['message']}")
    return "\n".join(lines)


def status_table(jobs: Sequence[Obj], *, all_namespaces: bool = False) -> str:
    """One line per job: the list view of ``kubectl graft status``."""
    head = ["NAME", "STATE", "PROGRESS", "ETA", "METRICS", "RESTARTS", "REASON"]
    if all_namespaces:
        head.insert(0, "NAMESPACE")
    rows = [head]
    for job in jobs:
        meta, status = job.get("metadata") or {}, job.get("status") or {}
        progress = status.get("progress") or {}
        row = [
            meta.get("name", ""),
            status.get("state") or "Pending",
            progress_bar(progress.get("percent"), width=10),
            progress.get("eta") or "-",
            metrics_line(status.get("metrics")),
            str(status.get("restarts", 0)),
            (status.get("reason") or "-") if status.get("state") == "Failed" else "-",
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def pick_pod(pods: Sequence[Obj], rank: int) -> Obj:
    """The worker pod of node rank ``rank`` in the newest attempt that has one."""
    mine = [
        p for p in pods if (p["metadata"].get("labels") or {}).get(LABEL_NODE_RANK) == str(rank)
    ]
    if not mine:
        ranks = sorted(
            {(p["metadata"].get("labels") or {}).get(LABEL_NODE_RANK, "?") for p in pods}
        )
        raise PluginError(
            f"no pod of node rank {rank}"
            + (f" (ranks with pods: {', '.join(ranks)})" if pods else " (the job has no pods now)")
        )

    def attempt(p: Obj) -> int:
        try:
            return int((p["metadata"].get("labels") or {}).get(LABEL_ATTEMPT, "0"))
        except ValueError:
            return 0

    return max(mine, key=lambda p: (attempt(p), p["metadata"].get("creationTimestamp", "")))


# --------------------------------------------------------------------------------- kubectl
def _kubectl() -> str:
    return os.environ.get("KUBECTL", "kubectl")


def _scope(args: argparse.Namespace) -> list[str]:
    out = []
    if getattr(args, "context", None):
        out.append(f"--context={args.context}")
    if getattr(args, "all_namespaces", False):
        out.append("--all-namespaces")
    elif args.namespace:
        out.append(f"--namespace={args.namespace}")
    return out


def _run(argv: list[str]) -> str:
    res = subprocess.run([_kubectl(), *argv], capture_output=True, text=True, check=False)
    if res.returncode:
        raise PluginError(res.stderr.strip() or f"kubectl {' '.join(argv)} failed")
    return res.stdout


def _get_json(argv: list[str]) -> Obj:
    out: Obj = json.loads(_run(["get", *argv, "-o", "json"]))
    return out


def cmd_status(args: argparse.Namespace) -> int:
    if args.job:
        print(status_report(_get_json([RESOURCE, args.job, *_scope(args)])))
    else:
        jobs = _get_json([RESOURCE, *_scope(args)]).get("items", [])
        if not jobs:
            print("no FineTuneJobs found")
            return 0
        print(status_table(jobs, all_namespaces=args.all_namespaces))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    _get_json([RESOURCE, args.job, *_scope(args)])  # a clear error when the job is unknown
    selector = f"{LABEL_JOB_NAME}={args.job},{LABEL_COMPONENT}={WORKER}"
    pods = _get_json(["pods", "-l", selector, *_scope(args)]).get("items", [])
    pod = pick_pod(pods, args.rank)
    name = pod["metadata"]["name"]
    attempt = (pod["metadata"].get("labels") or {}).get(LABEL_ATTEMPT, "0")
    print(f"# {args.job}: node rank {args.rank} is pod {name} (attempt {attempt})", file=sys.stderr)
    argv = [_kubectl(), "logs", name, "-c", CONTAINER, *_scope(args)]
    if args.follow:
        argv.append("--follow")
    if args.tail is not None:
        argv.append(f"--tail={args.tail}")
    return subprocess.call(argv)


def _set_suspend(args: argparse.Namespace, value: bool) -> int:
    patch = json.dumps({"spec": {"runPolicy": {"suspend": value}}})
    _run(["patch", RESOURCE, args.job, *_scope(args), "--type=merge", "-p", patch])
    verb = "suspended" if value else "resumed"
    print(
        f"finetunejob {args.job} {verb} (the operator "
        + ("stops the pods; checkpoints are kept)" if value else "starts a new gang)")
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl graft", description="Inspect and control kubegraft FineTuneJobs."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument("--context", help="kubeconfig context")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", parents=[common], help="progress, ETA, metrics, restarts")
    st.add_argument("job", nargs="?", help="one job (default: every job, one line each)")
    st.add_argument("-A", "--all-namespaces", action="store_true")
    st.set_defaults(func=cmd_status)
    lg = sub.add_parser("logs", parents=[common], help="a node rank's trainer log")
    lg.add_argument("job")
    lg.add_argument("--rank", type=int, default=0, help="node rank (default 0)")
    lg.add_argument("-f", "--follow", action="store_true", help="stream the log")
    lg.add_argument("--tail", type=int, help="only the last N lines")
    lg.set_defaults(func=cmd_logs)
    for name, value in (("suspend", True), ("resume", False)):
        p = sub.add_parser(name, parents=[common], help=f"{name} a job")
        p.add_argument("job")
        p.set_defaults(func=lambda a, v=value: _set_suspend(a, v))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "all_namespaces"):
        args.all_namespaces = False
    try:
        rc: int = args.func(args)
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
