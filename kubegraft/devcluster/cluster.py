"""Bring the local control plane up and down: etcd -> kube-apiserver -> controller-manager +
scheduler -> kwok, then the Stages and fake GPU nodes.

Called by ``kubegraft dev cluster up|down|status`` and by the session-scoped pytest fixture.
Each step waits on a condition (an HTTP health endpoint, a Ready node, a ServiceAccount), never
on a fixed sleep, and checks that every started process is still alive while it waits: a
process that dies at start-up fails ``up`` at once with the tail of its log, and ``up`` then
stops what it had started. Commands that create objects (the Stage CRD and Stages, the nodes)
are retried on transient errors (a CRD not yet served, a 429, a reset connection; see
:func:`~kubegraft.devcluster.procs.is_transient`) within the same timeout, and every failure
shows the command's stderr. Everything is recorded in ``<state>/state.json`` (pids included)
as it starts, so ``down`` stops exactly those processes even after a crashed ``up``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubegraft.devcluster import manifests, procs
from kubegraft.devcluster.binaries import check_bin_dir, find_bin_dir
from kubegraft.devcluster.kubeconfig import render_kubeconfig, write_kubeconfig
from kubegraft.devcluster.pki import Pki, ensure_pki

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

HOST = "127.0.0.1"
STATE_FILE = "state.json"
KUBECONFIG_FILE = "kubeconfig"
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
PORT_ATTEMPTS = 3
PORT_IN_USE = "address already in use"

Log = Callable[[str], None]


class ClusterError(RuntimeError):
    """The control plane could not be started (or stopped); the message says which part and why."""


def default_state_dir(name: str = "kubegraft") -> Path:
    """``$KUBEGRAFT_CACHE/cluster/<name>`` (default ``~/.cache/kubegraft/cluster/<name>``)."""
    cache = os.environ.get("KUBEGRAFT_CACHE") or str(Path.home() / ".cache" / "kubegraft")
    return Path(cache) / "cluster" / name


@dataclass
class Cluster:
    """A running control plane: where it listens and how to talk to it.

    ``kubectl`` runs the real, freshly built kubectl against the admin kubeconfig;
    ``api_client`` returns an official ``kubernetes`` client configured the same way.
    """

    name: str
    state_dir: Path
    bin_dir: Path
    server: str
    kubeconfig: Path
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[procs.ProcessRecord] = field(default_factory=list)
    tie_to_caller: bool = field(default=False, repr=False, compare=False)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS`` (text mode, output captured); raise on failure if ``check``."""
        argv = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise procs.CommandError(proc.returncode, argv, output=proc.stdout, stderr=proc.stderr)
        return proc

    def kubectl_json(self, *args: str) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        """``kubectl apply`` a list of objects."""
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def api_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` for the admin user (imports ``kubernetes`` lazily)."""
        from kubernetes import config

        client: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        return client

    def env(self) -> dict[str, str]:
        """Environment for child processes that should talk to this cluster."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state_dir": str(self.state_dir),
            "bin_dir": str(self.bin_dir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ports": self.ports,
            "processes": [p.to_json() for p in self.processes],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        return cls(
            name=data["name"],
            state_dir=Path(data["state_dir"]),
            bin_dir=Path(data["bin_dir"]),
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            ports=dict(data["ports"]),
            processes=[procs.ProcessRecord.from_json(p) for p in data["processes"]],
        )

    def save(self) -> None:
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)

    def restart(self, name: str) -> procs.ProcessRecord:
        """Stop one component (e.g. ``"kube-apiserver"``) and start it again with the same
        flags, keeping the pid records current so that ``down`` still stops everything.
        The caller waits for it to serve again (e.g. ``kubectl get --raw /readyz``)."""
        index, record = next((i, p) for i, p in enumerate(self.processes) if p.name == name)
        if not procs.stop(record):
            raise ClusterError(f"{name} (pid {record.pid}) did not stop")
        fresh = procs.start(
            record.name, record.argv, Path(record.log), die_with_parent=self.tie_to_caller
        )
        self.processes[index] = fresh
        self.save()
        return fresh

    def alive(self) -> dict[str, bool]:
        """Each recorded process's name -> whether it still runs."""
        return {p.name: procs.is_alive(p) for p in self.processes}


def load(state_dir: Path) -> Cluster | None:
    """The cluster recorded in ``state_dir``, or None if nothing was started there."""
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return Cluster.from_json(json.loads(path.read_text()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class _Waiter:
    """Polls a condition while checking that the cluster's processes are alive."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def check_processes(self) -> None:
        for record in self.cluster.processes:
            if not procs.is_alive(record):
                raise ClusterError(
                    f"{record.name} (pid {record.pid}) exited during start-up; "
                    f"last lines of {record.log}:\n{procs.tail(record.log)}"
                )

    def _timed_out(self, what: str, timeout: float, last: BaseException | None) -> ClusterError:
        logs = "\n".join(
            f"--- {p.name} ({p.log}):\n{procs.tail(p.log, 15)}" for p in self.cluster.processes
        )
        cause = f"; last error: {last}" if last is not None else ""
        return ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{cause}\n{logs}")

    def until(self, what: str, condition: Callable[[], bool], timeout: float) -> None:
        """Poll ``condition`` until it is true; errors while polling count as "not yet" (the
        last one is reported if the time runs out)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        last: BaseException | None = None
        while True:
            self.check_processes()
            try:
                if condition():
                    return
            except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise self._timed_out(what, timeout, last)
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def retry(self, what: str, action: Callable[[], object], timeout: float) -> None:
        """Run ``action`` until it succeeds, retrying transient failures
        (:func:`procs.error_is_transient`) within ``timeout``; any other failure is raised at
        once, and so is the last transient one when the time runs out, stderr included."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            self.check_processes()
            try:
                action()
                return
            except (OSError, subprocess.SubprocessError) as exc:
                if not procs.error_is_transient(exc):
                    raise ClusterError(f"{what} failed: {exc}") from exc
                if time.monotonic() > deadline:
                    raise self._timed_out(what, timeout, exc) from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _https_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def _admin_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return context


def _insecure_context() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz on self-signed certificates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _etcd_healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as resp:
        return bool(json.loads(resp.read()).get("health") == "true")


def _nodes_ready(cluster: Cluster, names: Sequence[str], gpus: int) -> bool:
    items = cluster.kubectl_json("get", "nodes", *names)
    items = items.get("items", [items])
    for node in items:
        conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
        gpus_seen = node["status"].get("allocatable", {}).get(manifests.GPU_RESOURCE)
        if conditions.get("Ready") != "True" or gpus_seen != str(gpus):
            return False
    return len(items) == len(names)


def _start(cluster: Cluster, name: str, argv: list[str], log: Log) -> None:
    log(f"starting {name}")
    log_file = cluster.state_dir / "logs" / f"{name}.log"
    record = procs.start(name, argv, log_file, die_with_parent=cluster.tie_to_caller)
    cluster.processes.append(record)
    cluster.save()


def _prepare(state_dir: Path, name: str, bin_dir: Path, pki: Pki, tie_to_caller: bool) -> Cluster:
    """Fresh etcd data and logs, new ports, the admin kubeconfig; recorded in state.json."""
    for sub in ("etcd", "logs"):
        shutil.rmtree(state_dir / sub, ignore_errors=True)
    ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")}
    server = f"https://{HOST}:{ports['apiserver']}"
    kubeconfig = write_kubeconfig(
        state_dir / KUBECONFIG_FILE,
        render_kubeconfig(
            name=name,
            server=server,
            ca_cert=pki.ca_cert,
            client_cert=pki.admin_cert,
            client_key=pki.admin_key,
        ),
    )
    cluster = Cluster(name, state_dir, bin_dir, server, kubeconfig, ports)
    cluster.tie_to_caller = tie_to_caller
    cluster.save()
    return cluster


def up(
    state_dir: Path | None = None,
    *,
    name: str = "kubegraft",
    bin_dir: Path | None = None,
    nodes: int = 4,
    gpus_per_node: int = 8,
    pods_per_node: int = 110,
    log: Log = print,
    timeout: float = 120,
    tie_to_caller: bool = False,
    kueue: bool = False,
) -> Cluster:
    """Start the control plane under ``state_dir`` and return it once nodes are Ready.

    With ``tie_to_caller`` (the pytest fixture) the processes are killed when the calling
    process dies, even by SIGKILL, so a killed test run leaks nothing; without it (the CLI)
    they outlive the ``up`` command. Raises :class:`ClusterError` if a cluster already runs
    there, or if any step fails (in which case whatever had been started is stopped again).
    With ``kueue`` it also starts Kueue's manager with its CRDs and webhooks
    (:mod:`.kueue`).
    """
    state_dir = (state_dir or default_state_dir(name)).resolve()
    previous = load(state_dir)
    if previous is not None:
        if any(previous.alive().values()):
            raise ClusterError(
                f"a cluster is already running in {state_dir}; run `kubegraft dev cluster down`"
            )
        (state_dir / STATE_FILE).unlink()
    started = time.monotonic()
    bin_dir = check_bin_dir(bin_dir) if bin_dir else find_bin_dir()
    state_dir.mkdir(parents=True, exist_ok=True)
    log(f"state dir {state_dir}; binaries {bin_dir}")
    pki = ensure_pki(state_dir / "pki")
    for attempt in range(1, PORT_ATTEMPTS + 1):
        cluster = _prepare(state_dir, name, bin_dir, pki, tie_to_caller)
        try:
            _bring_up(cluster, pki, nodes, gpus_per_node, pods_per_node, log, timeout)
            if kueue:
                from kubegraft.devcluster import kueue as kueue_manager

                kueue_manager.start(cluster, pki, log=log, timeout=timeout)
            break
        except BaseException as exc:
            log("start-up failed; stopping what was started")
            down(state_dir, log=log)
            # A free port can be taken by another process between our pick and the bind.
            if not (isinstance(exc, ClusterError) and PORT_IN_USE in str(exc)):
                raise
            if attempt == PORT_ATTEMPTS:
                raise
            log(f"a port was taken meanwhile; retrying with new ports ({attempt})")
    log(f"control plane ready in {time.monotonic() - started:.1f}s: {cluster.server}")
    log(f"export KUBECONFIG={cluster.kubeconfig}")
    return cluster


def _bring_up(
    cluster: Cluster, pki: Pki, nodes: int, gpus: int, pods: int, log: Log, timeout: float
) -> None:
    b, s, ports = cluster.bin_dir, cluster.state_dir, cluster.ports
    wait = _Waiter(cluster)
    etcd_url = f"http://{HOST}:{ports['etcd']}"
    peer_url = f"http://{HOST}:{ports['etcd-peer']}"
    _start(cluster, "etcd", [
        str(b / "etcd"), "--name=default", f"--data-dir={s / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
    ], log)  # fmt: skip
    wait.until("etcd /health", lambda: _etcd_healthy(ports["etcd"]), timeout)

    _start(cluster, "kube-apiserver", [
        str(b / "kube-apiserver"), f"--etcd-servers={etcd_url}",
        f"--bind-address={HOST}", f"--advertise-address={HOST}",
        f"--secure-port={ports['apiserver']}", "--endpoint-reconciler-type=none",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC", "--allow-privileged=true",
        f"--cert-dir={s / 'apiserver-certs'}", "--profiling=false",
    ], log)  # fmt: skip
    context = _admin_context(pki)
    readyz = f"{cluster.server}/readyz"
    wait.until("kube-apiserver /readyz", lambda: _https_ok(readyz, context), timeout)

    kc = str(cluster.kubeconfig)
    _start(cluster, "kube-controller-manager", [
        str(b / "kube-controller-manager"), f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        f"--bind-address={HOST}", f"--secure-port={ports['kcm']}", f"--cert-dir={s / 'kcm-certs'}",
        "--leader-elect=false", "--use-service-account-credentials=true", "--controllers=*",
        f"--root-ca-file={pki.ca_cert}", f"--service-account-private-key-file={pki.sa_key}",
        f"--cluster-signing-cert-file={pki.ca_cert}", f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--allocate-node-cidrs=false",
        "--profiling=false",
    ], log)  # fmt: skip
    _start(cluster, "kube-scheduler", [
        str(b / "kube-scheduler"), f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
        f"--bind-address={HOST}", f"--secure-port={ports['scheduler']}",
        "--leader-elect=false", "--profiling=false",
    ], log)  # fmt: skip
    insecure = _insecure_context()
    for comp, port in (("kube-controller-manager", "kcm"), ("kube-scheduler", "scheduler")):
        url = f"https://{HOST}:{ports[port]}/healthz"
        wait.until(f"{comp} /healthz", functools.partial(_https_ok, url, insecure), timeout)

    # kwok reads Stages from the API (--enable-crds=Stage): install the CRD and Stages first.
    log("installing kwok's Stage CRD and Stages")
    kustomize = b / "kwok-kustomize"
    crd = str(kustomize / manifests.STAGE_CRD_FILE)
    wait.retry("applying kwok's Stage CRD", lambda: cluster.kubectl("apply", "-f", crd), timeout)
    # Short waits in a loop: a busy server may not serve the new CRD at once ("the server
    # could not find the requested resource"), which a single long wait does not survive.
    wait.retry(
        "CRD stages.kwok.x-k8s.io Established",
        lambda: cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=10s", "crd/stages.kwok.x-k8s.io"
        ),
        timeout,
    )
    for rel in manifests.STOCK_STAGE_FILES:
        stage = str(kustomize / rel)
        wait.retry(
            f"applying {rel}", functools.partial(cluster.kubectl, "apply", "-f", stage), timeout
        )
    wait.retry(
        "applying the outcome Stages", lambda: cluster.apply(manifests.outcome_stages()), timeout
    )

    _start(cluster, "kwok", [
        str(b / "kwok"), f"--kubeconfig={kc}", "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={manifests.FAKE_NODE_ANNOTATION}=fake",
        f"--node-ip={HOST}", f"--cidr={POD_CIDR}", "--enable-crds=Stage",
        f"--server-address={HOST}:{ports['kwok']}",
        # The stock heartbeat Stage (node-heartbeat-with-lease) refreshes node status only
        # every ~10 minutes and relies on kwok renewing Node Leases; without leases the
        # node-lifecycle controller marks every node NotReady after ~40 s.
        "--node-lease-duration-seconds=40",
    ], log)  # fmt: skip
    kwok_url = f"http://{HOST}:{ports['kwok']}/healthz"
    wait.until("kwok /healthz", lambda: _http_ok(kwok_url), timeout)

    names = [f"gpu-node-{i}" for i in range(nodes)]
    log(f"creating {nodes} fake GPU nodes x {gpus} nvidia.com/gpu, {pods} pods each")
    fake_nodes = [manifests.fake_gpu_node(n, gpus=gpus, pods=str(pods)) for n in names]
    wait.retry("creating the fake GPU nodes", lambda: cluster.apply(fake_nodes), timeout)
    wait.until("fake GPU nodes Ready", lambda: _nodes_ready(cluster, names, gpus), timeout)
    # The controller-manager is serving once it has made the default namespace's ServiceAccount.
    wait.until("ServiceAccount default/default", lambda: _has_default_sa(cluster), timeout)


def _has_default_sa(cluster: Cluster) -> bool:
    return cluster.kubectl("get", "serviceaccount", "default", check=False).returncode == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


def down(state_dir: Path | None = None, *, name: str = "kubegraft", log: Log = print) -> None:
    """Stop every process recorded in ``state_dir`` (newest first) and verify none is left.

    Raises :class:`ClusterError` if a process survives SIGKILL.
    """
    state_dir = (state_dir or default_state_dir(name)).resolve()
    cluster = load(state_dir)
    if cluster is None:
        log(f"nothing recorded in {state_dir}")
        return
    survivors = []
    for record in reversed(cluster.processes):
        if not procs.is_alive(record):
            continue
        log(f"stopping {record.name} (pid {record.pid})")
        if not procs.stop(record):
            survivors.append(f"{record.name} (pid {record.pid})")
    left = [p for p in cluster.processes if procs.is_alive(p)]
    if survivors or left:
        names = survivors or [f"{p.name} (pid {p.pid})" for p in left]
        raise ClusterError(f"still running after down: {', '.join(names)}")
    (state_dir / STATE_FILE).unlink()
    log(f"stopped; no process of {state_dir} is left")


def status(state_dir: Path | None = None, *, name: str = "kubegraft") -> Cluster | None:
    """The recorded cluster (check :meth:`Cluster.alive`), or None if none was started."""
    return load((state_dir or default_state_dir(name)).resolve())
