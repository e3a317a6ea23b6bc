"""`kubegraft dev cluster up|down|env|status`: the local control plane for tests and development.

A thin shell over :mod:`kubegraft.devcluster`: ``up`` starts etcd, kube-apiserver (RBAC on),
kube-controller-manager, kube-scheduler and kwok with fake GPU nodes on 127.0.0.1 and writes an
admin kubeconfig (with ``--kueue`` also Kueue's manager and webhooks, see docs/kueue.md);
``down`` stops exactly those processes by pid; ``env`` prints the
``export KUBECONFIG=...`` line to ``eval``; ``status`` says what runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``dev cluster ACTION`` and its options."""
    sub = parser.add_subparsers(dest="dev_command", required=True, metavar="TOOL")
    cluster = sub.add_parser(
        "cluster", help="Manage the local control plane (etcd, apiserver, kwok...)."
    )
    cluster.add_argument("action", choices=["up", "down", "env", "status"])
    cluster.add_argument("--name", default="kubegraft", help="cluster name (default: kubegraft)")
    cluster.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where pids, logs, certificates and the kubeconfig live "
        "(default: ~/.cache/kubegraft/cluster/NAME)",
    )
    cluster.add_argument(
        "--bin-dir",
        type=Path,
        default=None,
        help="prebuilt binaries (default: $KUBEGRAFT_BIN_DIR or hack/build-binaries.sh)",
    )
    cluster.add_argument("--nodes", type=int, default=4, help="fake GPU nodes (default: 4)")
    cluster.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node (default: 8)")
    cluster.add_argument(
        "--kueue",
        action="store_true",
        help="also start Kueue (CRDs, manager, webhooks; FineTuneJob as an external framework)",
    )


def _progress(message: str) -> None:
    print(f"[kubegraft dev] {message}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run the chosen action; exit code 0 on success, 1 with a message otherwise."""
    from kubegraft.devcluster import ClusterError, default_state_dir, down, status, up
    from kubegraft.devcluster.binaries import BinariesError
    from kubegraft.devcluster.cluster import KUBECONFIG_FILE

    state_dir: Path = (args.state_dir or default_state_dir(args.name)).resolve()
    try:
        if args.action == "up":
            up(
                state_dir,
                name=args.name,
                bin_dir=args.bin_dir,
                nodes=args.nodes,
                gpus_per_node=args.gpus,
                log=_progress,
                kueue=args.kueue,
            )
        elif args.action == "down":
            down(state_dir, log=_progress)
        elif args.action == "env":
            kubeconfig = state_dir / KUBECONFIG_FILE
            if not kubeconfig.exists():
                _progress(f"no kubeconfig in {state_dir}: run `kubegraft dev cluster up` first")
                return 1
            print(f"export KUBECONFIG={kubeconfig}")
        else:
            cluster = status(state_dir)
            if cluster is None:
                print(f"not running (nothing recorded in {state_dir})")
                return 1
            alive = cluster.alive()
            for proc in cluster.processes:
                state = "running" if alive[proc.name] else "DEAD"
                print(f"{proc.name:<24} pid {proc.pid:<8} {state:<8} log {proc.log}")
            print(f"server {cluster.server}\nkubeconfig {cluster.kubeconfig}")
            return 0 if all(alive.values()) else 1
    except (ClusterError, BinariesError) as exc:
        _progress(f"error: {exc}")
        return 1
    return 0
