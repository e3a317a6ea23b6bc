"""The least any controller must do for a FineTuneJob, as fast as Python can do it: the floor
that ``operator_scale.py --floor`` measures the real operator against.

For every FineTuneJob that appears in the namespace it creates the job's N worker pods,
exactly as the operator renders them (:func:`kubegraft_operator.render.render_pods`), from a
pool of threads through the same transport (:class:`kubegraft_operator.apply.Api`), and
nothing else: no ServiceAccount/Role/RoleBinding/ConfigMaps/Service (the pods run as the
namespace's ``default`` ServiceAccount and mount nothing of the job), no status, no Events,
no kopf. Whatever "create -> all pods" time this still shows on a machine is the control
plane's (API server, etcd, scheduler, kwok, all on the same cores), not the operator's.

    python bench/floor_controller.py --namespace NS [--threads 32]   # KUBECONFIG names the cluster
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

import urllib3  # noqa: E402
from kubernetes import config  # noqa: E402
from kubernetes.client import ApiClient, Configuration  # noqa: E402

from kubegraft.api.v1alpha1 import GROUP, PLURAL, VERSION, FineTuneJob  # noqa: E402
from kubegraft_operator.apply import Api  # noqa: E402
from kubegraft_operator.render import render_pods  # noqa: E402
from kubegraft_operator.transport import Transport  # noqa: E402

Obj = dict[str, Any]


def floor_pods(raw: Obj) -> list[Obj]:
    """The job's attempt-0 worker pods, minus what needs the per-job objects."""
    meta = raw["metadata"]
    job = FineTuneJob.model_validate(raw)
    pods = render_pods(job, namespace=meta["namespace"], uid=meta["uid"], attempt=0)
    for pod in pods:
        spec = pod["spec"]
        spec["serviceAccountName"] = "default"
        spec["automountServiceAccountToken"] = False
        spec["volumes"] = [v for v in spec.get("volumes", []) if "configMap" not in v]
        names = {v["name"] for v in spec["volumes"]}
        for c in spec["containers"]:
            c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] in names]
    return pods


def watch_events(transport: Transport, path: str, rv: str) -> Iterator[Obj]:
    """The watch events of a collection from ``rv`` on (one connection, until it ends)."""
    query = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "300"}
    timeout = urllib3.Timeout(connect=10)
    resp = transport.send("GET", path, query=query, timeout=timeout, stream=True)
    try:
        for line in resp:
            if line.strip():
                yield json.loads(line)
    finally:
        resp.release_conn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args(argv)
    config.load_kube_config()  # type: ignore[no-untyped-call]
    cfg = Configuration.get_default_copy()
    cfg.connection_pool_maxsize = args.threads + 2
    api_client = ApiClient(cfg)
    api = Api(api_client)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{args.namespace}/{PLURAL}"
    print("floor controller watching", args.namespace, flush=True)
    seen: set[str] = set()
    with ThreadPoolExecutor(args.threads) as pool:
        rv = (api.request("list_jobs", "GET", path) or {})["metadata"]["resourceVersion"]
        while True:
            for event in watch_events(api.transport, path, rv):
                raw = event["object"]
                rv = raw["metadata"]["resourceVersion"]
                if event["type"] == "ADDED" and raw["metadata"]["uid"] not in seen:
                    seen.add(raw["metadata"]["uid"])
                    for pod in floor_pods(raw):
                        pool.submit(api.create_if_absent, pod)


if __name__ == "__main__":
    sys.exit(main())
