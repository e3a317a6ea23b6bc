"""What it costs the operator to share its namespace with other work: start it in a namespace
that holds many pods that are not its own, then change those pods, and measure its CPU and
memory. Not a test; prints a table.

    python bench/foreign_objects.py                          # 3000 pods, 1500 updates
    python bench/foreign_objects.py --pods 1000 --updates 500
    python bench/foreign_objects.py --cluster STATE_DIR --json out.json   # an existing cluster

Pods are what the operator watches in a namespace (its worker pods; it watches no ConfigMaps
since rank 0 reports progress to its endpoint). The foreign pods carry a ~2 KB annotation and a
scheduling gate, so they stay Pending at no cost to the scheduler or kwok; an update patches
the annotation (a MODIFIED event for every watcher that receives the pod).

Two rows, same cluster, same objects, one after the other:

- ``operator``: the operator as it is (its pod watch, :mod:`kubegraft_operator.pod_watch`,
  carries a label selector, :data:`kubegraft_operator.settings.WORKER_POD_SELECTOR`, so the
  API server sends only its own worker pods);
- ``no selectors``: the same operator with an empty selector, i.e. its pod watch receives
  and decodes every pod of the namespace and drops the foreign ones (``store.job_key``: no
  job label). This is the baseline. (Before the operator watched pods itself, kopf did, and
  kept a memory of every pod it received: then the selector also saved ~15 KB per foreign
  pod; now only the traffic and the decoding.)

Columns: ``start CPU s`` from process start until its CPU stays still for 3 s (kopf's initial
lists included); ``RSS MB`` after that; ``update CPU s`` for the pod updates (sent from
16 threads) until its CPU is still again; ``peak RSS MB`` (VmHWM). With ``-A``, what one
namespace shows here applies to the whole cluster.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "operator", ROOT / "tests"):  # tests/: operator_harness
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from kubernetes import client, config  # noqa: E402
from operator_harness import OperatorProcess, wait_for  # noqa: E402
from operator_scale import control_plane, cpu_seconds, log, peak_rss_mb  # noqa: E402

PADDING = "x" * 2000  # ~2 KB per foreign pod, on top of its spec


class WithoutSelectors(OperatorProcess):
    """The operator with an empty worker-pod selector: the baseline row."""

    def argv(self) -> list[str]:
        code = (
            "import kubegraft_operator.settings as s; s.WORKER_POD_SELECTOR = ''; "
            "from kubegraft_operator.__main__ import main; "
            f"main(['--namespace', {self.namespace!r}, '--standalone', "
            f"'--liveness=http://127.0.0.1:{self.health_port}/healthz'])"
        )
        return [sys.executable, "-c", code]


def cpu_when_still(proc: psutil.Process, quiet: float = 3.0, timeout: float = 600) -> float:
    """The process's CPU seconds once they have not moved (by 20 ms) for ``quiet`` seconds:
    the operator has handled everything the API server sent it."""
    last, still_since, deadline = cpu_seconds(proc), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - still_since < quiet:
        if time.monotonic() > deadline:
            raise TimeoutError("the operator's CPU never settled")
        time.sleep(0.5)
        now = cpu_seconds(proc)
        if now - last > 0.02:
            still_since = time.monotonic()
        last = now
    return last


GATE = "kubegraft.io/bench-foreign"
"""The scheduling gate that keeps the foreign pods Pending (nothing ever removes it)."""


def fill_namespace(core: Any, ns: str, pods: int) -> None:
    """Foreign pods in a new namespace ``ns``, held Pending by a scheduling gate."""
    core.create_namespace({"metadata": {"name": ns}})

    def create(i: int) -> None:
        core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": f"other-{i}", "annotations": {"padding": PADDING}},
                "spec": {
                    "containers": [{"name": "main", "image": "busybox"}],
                    "schedulingGates": [{"name": GATE}],
                },
            },
        )

    with ThreadPoolExecutor(16) as ex:
        list(ex.map(create, range(pods)))

    def all_there() -> bool:
        return len(core.list_namespaced_pod(ns).items) >= pods

    wait_for(all_there, 600, interval=1.0, message=f"{pods} foreign pods")


def measure(row: str, op: OperatorProcess, core: Any, pods: int, updates: int) -> dict[str, Any]:
    """Start ``op``, let it settle, update the foreign pods, let it settle again."""
    assert op.namespace is not None
    op.start().wait_healthy()
    assert op.proc is not None
    proc = psutil.Process(op.proc.pid)
    try:
        start_cpu = cpu_when_still(proc)
        rss = proc.memory_info().rss / 2**20
        before = cpu_seconds(proc)
        with ThreadPoolExecutor(16) as ex:
            list(
                ex.map(
                    lambda i: core.patch_namespaced_pod(
                        f"other-{i % pods}",
                        op.namespace,
                        {"metadata": {"annotations": {"padding": f"{PADDING}{i}"}}},
                    ),
                    range(updates),
                )
            )
        update_cpu = cpu_when_still(proc) - before
        return {
            "row": row,
            "start CPU s": start_cpu,
            "RSS MB": rss,
            "update CPU s": update_cpu,
            "peak RSS MB": peak_rss_mb(proc.pid),
        }
    finally:
        op.stop()


def table(rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    lines = [" | ".join(f"{h:>13}" for h in headers)]
    for r in rows:
        lines.append(
            " | ".join(f"{v:>13.2f}" if isinstance(v, float) else f"{v:>13}" for v in r.values())
        )
    base, ours = rows
    lines.append(
        f"operator / no selectors: start CPU {ours['start CPU s'] / base['start CPU s']:.2f}x, "
        f"RSS {ours['RSS MB'] / base['RSS MB']:.2f}x, "
        f"update CPU {ours['update CPU s'] / max(base['update CPU s'], 1e-9):.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--updates", type=int, default=1500, help="pod updates")
    parser.add_argument("--cluster", default=None, help="the cluster recorded in this state dir")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    ns = f"busy-{secrets.token_hex(3)}"
    with (
        tempfile.TemporaryDirectory(prefix="kubegraft-bench-logs-") as logs,
        control_plane(args, 0) as cluster,  # the foreign pods are gated: no node needed,
    ):
        for path in sorted((ROOT / "manifests" / "crd").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))
        try:
            log(f"{args.pods} pods not the operator's in {ns}")
            fill_namespace(core, ns, args.pods)
            rows = []
            for row, cls in (("no selectors", WithoutSelectors), ("operator", OperatorProcess)):
                log(f"row: {row}")
                op = cls(cluster.kubeconfig, Path(logs) / f"{row}.log", namespace=ns)
                rows.append(measure(row, op, core, args.pods, args.updates))
        finally:
            core.delete_namespace(ns)
    print(f"{args.pods} foreign pods, {args.updates} updates")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
