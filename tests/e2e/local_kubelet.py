"""A "local kubelet" for the e2e tests: runs the pods the operator created as local processes.

There is no real kubelet and no container runtime on these machines. kwok plays the kubelet
for pod *status* (it marks scheduled pods Running); this module plays it for pod *execution*:
it watches a namespace's worker pods, and once kwok has marked a pod Running it starts the
pod's container command and environment as a local process, then reports the process's exit
back as the pod's outcome through the pod's ``status`` subresource, as a kubelet does
(``containerStatuses[].state.terminated.exitCode`` and ``phase`` Succeeded/Failed).

How a pod becomes a local process (the differences from a node are the point of this list):

- **Command**: ``spec.containers[0].command + args``; ``python`` is this interpreter (the
  image's Python). Only single-container pods are run.
- **Network**: all pods share this host's network, so every pod DNS name of the namespace
  (``<hostname>.<subdomain>.<ns>.svc``, e.g. rank 0's MASTER_ADDR) is rewritten to
  ``127.0.0.1`` in argv and env. Ports are not remapped (the test picks a free masterPort);
  ``port_env`` names env vars whose port is replaced by a free one (e.g. the metrics port).
  A pod is not started while a process with the same hostname still runs, as the old gang
  would otherwise still hold rank 0's port.
- **Volumes**: a ConfigMap or Secret volume is written (from the real object, waited for
  as a kubelet waits when the pod came first) into a per-pod dir; ``emptyDir`` with
  ``medium: Memory`` on ``/dev/shm`` is the host's ``/dev/shm``, an ``emptyDir`` on ``/tmp``
  the host's ``/tmp`` (so host paths under it, such as a test's output dir, are not
  rewritten); any other volume must be named in ``host_dirs`` (volume name -> host dir,
  e.g. one output dir shared by both ranks, which is what a ReadWriteMany PVC gives on a
  cluster). Every mountPath is rewritten to its host dir in argv and env. Files *inside* a
  volume are not rewritten, so a test whose config names a mount path (``output.path``)
  uses the host dir as that path.
- **Projected tokens** (rank 0's progress token): requested from the TokenRequest API for the
  volume's audience, bound to the pod, written into the volume's host dir.
- **ServiceAccount token**: for a pod with ``automountServiceAccountToken``, a token for its
  ServiceAccount is requested from the TokenRequest API, bound to the pod (so it dies with the
  pod, as a projected token does), and handed over as ``KUBEGRAFT_API_SERVER`` /
  ``KUBEGRAFT_API_TOKEN`` / ``KUBEGRAFT_CA_FILE`` (read by :mod:`kubegraft.progress`): RBAC on
  the API server is the real one.
- **Termination**: a pod that gets a deletionTimestamp (or disappears) has its main process
  sent SIGTERM (a runtime signals the container's PID 1 only; the node supervisor passes it
  on), then its processes SIGKILL after ``min(deletionGracePeriodSeconds, max_grace)``.
  "Its processes" is the whole tree, as a container runtime kills the whole container:
  torchrun starts its workers in sessions of their own, which a process-group signal misses
  (a SIGKILLed rank's worker used to live on and keep training with the old gang). When the
  command exits, every process it leaves behind is killed, as when a container's PID 1 exits.
- **Exit codes**: a process killed by signal N reports ``128 + N`` (SIGKILL: 137), as the
  container runtime does.

Why the status patch sticks: kwok's stock Stages only act on pods that are Pending
(pod-ready), Running *and* owned by a batch Job (pod-complete), or being deleted
(pod-delete); the operator's pods are owned by a FineTuneJob and the tests also label them
``kubegraft.io/test-outcome: run`` (a Stage that, when matched, only emits an Event and keeps
them Running). Once the kubelet has written phase Succeeded/Failed no Stage matches any more,
so kwok leaves the terminal status alone (the e2e tests assert it is still there).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

Obj = dict[str, Any]

PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
"""Host variables that stand in for the image's own ENV (where Python and the packages are)."""
PASS_ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "KUBEGRAFT_CACHE")
"""Offline switches of the model libraries, which an image would bake in too."""
SHM = "/dev/shm"
MOUNT_TIMEOUT = 120.0
"""Seconds a pod waits for a volume's ConfigMap or Secret to exist (a kubelet's mount wait)."""
LOCALHOST = "127.0.0.1"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def exit_code_of(returncode: int) -> int:
    """A Popen return code as a container exit code: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class Outcome:
    """What the kubelet reported for one pod (kept for the test's assertions)."""

    pod: str
    exit_code: int
    phase: str
    reported: bool
    """False when the pod was gone (deleted) before its exit could be written."""


@dataclass
class LocalPod:
    """One pod's local process and what the kubelet knows about it."""

    name: str
    uid: str
    hostname: str
    labels: dict[str, str]
    work_dir: Path
    grace: float
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    """The environment the container's command runs with (after the port and path rewrites)."""
    started_at: str = ""
    waiting_for: str | None = None
    """The ConfigMap or Secret a volume of the pod waits for (a kubelet's FailedMount)."""
    terminate: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "container.log"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    tree: list[psutil.Process] = field(default_factory=list)
    """The container's processes as last seen: the command and all its descendants."""

    def running(self) -> bool:
        """Whether any process of the container is alive (not only its first one)."""
        if self.proc is not None and self.proc.poll() is None:
            return True
        return any(_alive(p) for p in self.tree)

    def refresh_tree(self) -> None:
        """Record the container's processes. torchrun starts its workers in sessions of their
        own, so neither a process-group signal nor the command's exit reaches them; a
        container runtime kills them all (the cgroup, the PID namespace), so this does too."""
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            known = {p.pid for p in self.tree}
            self.tree += [p for p in [root, *root.children(recursive=True)] if p.pid not in known]

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the whole container: its process group and every process of it."""
        self.refresh_tree()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
        for p in self.tree:
            if _alive(p):
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)

    def kill_leftovers(self) -> None:
        """The command exited: like a container's PID 1, it takes every other process along."""
        for p in self.tree:
            if _alive(p):
                with contextlib.suppress(psutil.Error):
                    p.kill()


def _alive(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


class LocalKubelet:
    """Watches ``namespace``'s pods matching ``label_selector`` and runs them locally.

    Use as a context manager; ``stop()`` kills whatever still runs. Errors in its threads are
    collected in :attr:`errors` (a test asserts there are none) instead of being lost.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        work_dir: Path,
        *,
        server: str,
        ca_file: Path,
        host_dirs: Mapping[str, Path] | None = None,
        label_selector: str = "kubegraft.io/job-name",
        port_env: tuple[str, ...] = ("KUBEGRAFT_METRICS_PORT",),
        extra_pythonpath: tuple[str, ...] = (),
        max_grace: float = 10.0,
        token_seconds: int = 3600,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.work_dir = work_dir
        self.server = server
        self.ca_file = ca_file
        self.host_dirs = {k: Path(v) for k, v in (host_dirs or {}).items()}
        self.label_selector = label_selector
        self.port_env = port_env
        self.extra_pythonpath = extra_pythonpath
        self.max_grace = max_grace
        self.token_seconds = token_seconds
        self.pods: dict[str, LocalPod] = {}
        self.outcomes: list[Outcome] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalKubelet:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._watcher = threading.Thread(
            target=self._guard, args=(self._watch_loop,), name="local-kubelet-watch", daemon=True
        )
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop watching; kill every process still running (SIGKILL) and wait for the threads."""
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.signal(signal.SIGKILL)
            pod.terminate.set()
        for t in [*self._threads, *([self._watcher] if self._watcher else [])]:
            t.join(timeout=30)

    def __enter__(self) -> LocalKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test API
    def pod(self, name: str) -> LocalPod | None:
        with self._lock:
            return self.pods.get(name)

    def running(self) -> list[LocalPod]:
        """Pods whose process runs now."""
        with self._lock:
            return [p for p in self.pods.values() if p.running()]

    def outcome(self, pod: str) -> Outcome | None:
        with self._lock:
            return next((o for o in self.outcomes if o.pod == pod), None)

    def check(self) -> None:
        """Raise if a kubelet thread failed (call it from a test's wait loop to fail fast)."""
        with self._lock:
            if self.errors:
                raise RuntimeError("local kubelet failed: " + "; ".join(self.errors))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a pod's container from outside (an OOM kill, a crashed node)."""
        pod = self.pod(name)
        if pod is None or not pod.running():
            raise RuntimeError(f"pod {name} has no running process to kill")
        pod.signal(sig)

    # ------------------------------------------------------------------ watching
    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            if not self._stopped.is_set():
                with self._lock:
                    where = getattr(args[0], "name", "") if args else ""
                    self.errors.append(f"{fn.__name__}({where}): {type(e).__name__}: {e}")

    def _watch_loop(self) -> None:
        while not self._stopped.is_set():
            self._watch = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in self._watch.stream(  # type: ignore[no-untyped-call]
                    self.core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.label_selector,
                    timeout_seconds=10,
                    deserialize=False,
                ):
                    if self._stopped.is_set():
                        return
                    self._on_pod(event["type"], event["object"])
            except (ApiException, OSError) as e:  # the API server may restart: watch again
                if self._stopped.is_set():
                    return
                time.sleep(0.5)
                if isinstance(e, ApiException) and e.status not in (410, 500, 503, 504):
                    raise

    def _on_pod(self, type_: str, pod: Obj) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        name = meta["name"]
        with self._lock:
            local = self.pods.get(name)
        if type_ == "DELETED" or meta.get("deletionTimestamp"):
            # The first deletion's grace period counts: kwok's pod-delete Stage then removes
            # the pod at once (grace 0), which a real kubelet would not do before the
            # containers exit, and which must not cut the trainer's checkpoint save short.
            if local is not None and local.uid == meta.get("uid") and not local.terminate.is_set():
                grace = meta.get("deletionGracePeriodSeconds")
                local.grace = min(
                    float(grace if grace is not None else self.max_grace), self.max_grace
                )
                local.terminate.set()
            return
        if local is not None and local.uid == meta.get("uid"):
            return  # already started (or finished) this pod
        if status.get("phase") != "Running" or not spec.get("nodeName"):
            return  # kwok has not "started" it yet, or it is finished
        statuses = status.get("containerStatuses") or []
        if any((cs.get("state") or {}).get("terminated") for cs in statuses):
            return  # a terminal status was written already (by us, before a restart of ours)
        local = LocalPod(
            name=name,
            uid=meta["uid"],
            hostname=spec.get("hostname") or name,
            labels=dict(meta.get("labels") or {}),
            work_dir=self.work_dir / name,
            grace=self.max_grace,
        )
        with self._lock:
            self.pods[name] = local
        t = threading.Thread(
            target=self._guard,
            args=(self._run_pod, local, pod),
            name=f"local-kubelet-{name}",
            daemon=True,
        )
        self._threads.append(t)
        t.start()

    # ------------------------------------------------------------------ running one pod
    def _wait_for_hostname(self, local: LocalPod) -> None:
        """Same hostname = same DNS name and ports: wait until an older holder has exited."""
        while not self._stopped.is_set() and not local.terminate.is_set():
            with self._lock:
                busy = [
                    p
                    for p in self.pods.values()
                    if p is not local and p.hostname == local.hostname and p.running()
                ]
            if not busy:
                return
            time.sleep(0.1)

    def _run_pod(self, local: LocalPod, pod: Obj) -> None:
        self._wait_for_hostname(local)
        if self._stopped.is_set() or local.terminate.is_set():
            return
        argv, env = self.prepare(local, pod)
        local.env = env
        local.work_dir.mkdir(parents=True, exist_ok=True)
        (local.work_dir / "argv.txt").write_text("\n".join(argv) + "\n")
        local.started_at = _now()
        with local.log_path.open("ab") as log:
            local.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=local.work_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        while local.proc.poll() is None:
            local.refresh_tree()
            if local.terminate.wait(timeout=0.2):
                self._terminate(local)
                break
        code = exit_code_of(local.proc.wait())
        local.kill_leftovers()
        local.done.set()
        reported = self._report_exit(local, pod, code)
        with self._lock:
            self.outcomes.append(
                Outcome(local.name, code, "Succeeded" if code == 0 else "Failed", reported)
            )

    def _terminate(self, local: LocalPod) -> None:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet does on deletion.

        The SIGTERM goes to the container's main process only, as a container runtime sends
        it to PID 1 (the node supervisor, which passes it on to torchrun, which passes it to
        the workers); signalling every process as well gave torchrun two SIGTERMs, which
        made it abandon its workers' checkpoint (CI, 2026-12-01). The SIGKILL takes all."""
        assert local.proc is not None
        with contextlib.suppress(ProcessLookupError):
            local.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + local.grace
        while local.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        local.signal(signal.SIGKILL)  # whatever of the container is still alive

    def prepare(self, local: LocalPod, pod: Obj) -> tuple[list[str], dict[str, str]]:
        """The local argv and environment of the pod's (single) container."""
        meta, spec = pod["metadata"], pod["spec"]
        containers = spec.get("containers") or []
        if len(containers) != 1:
            raise ValueError(f"{local.name}: the local kubelet runs single-container pods only")
        c = containers[0]
        mounts = self._mount_volumes(local, spec, c)
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {
            k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)
        }
        if self.extra_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                [*self.extra_pythonpath, *filter(None, [env.get("PYTHONPATH")])]
            )
        for item in c.get("env") or []:
            env[item["name"]] = self._env_value(meta, item)
        for key in self.port_env:
            if env.get(key) not in (None, "", "0"):
                env[key] = str(free_port())
        if spec.get("automountServiceAccountToken", True):
            env.update(self._token_env(local, spec.get("serviceAccountName") or "default"))
        env["HOSTNAME"] = local.hostname
        rewrite = self._rewriter(meta["namespace"], mounts)
        return [rewrite(a) for a in argv], {k: rewrite(v) for k, v in env.items()}

    def _rewriter(self, namespace: str, mounts: dict[str, Path]) -> Callable[[str], str]:
        dns = re.compile(
            rf"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\."
            rf"{re.escape(namespace)}\.svc(\.cluster\.local)?\b"
        )
        # Longest mount path first, on path boundaries only (/etc/kubegraft, not /etc/kubegraftx).
        ordered = sorted(
            ((m, h) for m, h in mounts.items() if m != str(h)), key=lambda x: -len(x[0])
        )
        patterns = [
            (re.compile(rf"(?<![\w/.-]){re.escape(m)}(?=/|$|\s|:)"), str(h)) for m, h in ordered
        ]

        def rewrite(value: str) -> str:
            value = dns.sub(LOCALHOST, value)
            for pattern, host in patterns:
                value = pattern.sub(host.replace("\\", "\\\\"), value)
            return value

        return rewrite

    def _env_value(self, meta: Obj, item: Obj) -> str:
        if "value" in item:
            return str(item["value"])
        src = item.get("valueFrom") or {}
        if ref := src.get("fieldRef"):
            path = ref["fieldPath"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta.get("uid", ""),
                "status.podIP": LOCALHOST,
                "status.hostIP": LOCALHOST,
            }
            if path in fields:
                return str(fields[path])
            raise ValueError(f"env {item['name']}: fieldRef {path} is not supported locally")
        if ref := src.get("secretKeyRef"):
            import base64

            secret = self.core.read_namespaced_secret(ref["name"], meta["namespace"])
            return base64.b64decode((secret.data or {})[ref["key"]]).decode()
        if ref := src.get("configMapKeyRef"):
            cm = self.core.read_namespaced_config_map(ref["name"], meta["namespace"])
            return str((cm.data or {})[ref["key"]])
        raise ValueError(f"env {item['name']}: unsupported valueFrom {sorted(src)}")

    def _mount_volumes(self, local: LocalPod, spec: Obj, container: Obj) -> dict[str, Path]:
        """Materialise each mounted volume on the host; mountPath -> host dir."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        out: dict[str, Path] = {}
        for m in container.get("volumeMounts") or []:
            vol = volumes[m["name"]]
            path = m["mountPath"]
            if "configMap" in vol:
                host = local.work_dir / "volumes" / m["name"]
                host.mkdir(parents=True, exist_ok=True)
                cm = self._volume_source(
                    local, self.core.read_namespaced_config_map, vol["configMap"]["name"]
                )
                for key, text in (cm.data or {}).items():
                    (host / key).write_text(text)
            elif "secret" in vol:
                import base64

                host = local.work_dir / "volumes" / m["name"]
                host.mkdir(parents=True, exist_ok=True)
                secret = self._volume_source(
                    local, self.core.read_namespaced_secret, vol["secret"]["secretName"]
                )
                data = secret.data or {}
                for item in vol["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                    (host / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
            elif "projected" in vol:
                host = local.work_dir / "volumes" / m["name"]
                self._project(local, spec, vol["projected"], host)
            elif m["name"] in self.host_dirs:
                host = self.host_dirs[m["name"]]
                host.mkdir(parents=True, exist_ok=True)
            elif path == SHM and (vol.get("emptyDir") or {}).get("medium") == "Memory":
                host = Path(SHM)
            elif path == "/tmp" and "emptyDir" in vol:
                host = Path("/tmp")
            elif "emptyDir" in vol:
                host = local.work_dir / "volumes" / m["name"]
                host.mkdir(parents=True, exist_ok=True)
            else:
                raise ValueError(f"{local.name}: volume {m['name']} needs a host dir (host_dirs=)")
            out[path] = host
        return out

    def _volume_source(self, local: LocalPod, read: Callable[[str, str], Any], name: str) -> Any:
        """A volume's ConfigMap or Secret, waited for as a kubelet does.

        The operator creates a gang's config ConfigMap in the same parallel wave as its pods,
        so a pod can be seen before its ConfigMap exists; a kubelet then retries the mount
        (a FailedMount event) until it does, for up to :data:`MOUNT_TIMEOUT`. Failing the pod
        at once, as this did, failed tests when the ConfigMap's create answered a few
        milliseconds after the pod's (CI, 2026-12-01)."""
        deadline, delay = time.monotonic() + MOUNT_TIMEOUT, 0.05
        while True:
            try:
                found = read(name, self.namespace)
                local.waiting_for = None
                return found
            except ApiException as e:
                if e.status != 404 or time.monotonic() + delay > deadline:
                    raise
            local.waiting_for = name
            if local.terminate.wait(delay) or self._stopped.is_set():
                raise RuntimeError(f"{local.name}: stopped while waiting for {name}")
            delay = min(2 * delay, 1.0)

    def _project(self, local: LocalPod, spec: Obj, projected: Obj, host: Path) -> None:
        """A projected volume (the ServiceAccount admission's ``kube-api-access-*``): a
        pod-bound token, the cluster CA from the ConfigMap, the namespace from the downward API."""
        host.mkdir(parents=True, exist_ok=True)
        for source in projected.get("sources") or []:
            if sat := source.get("serviceAccountToken"):
                token = self._request_token(
                    local,
                    spec.get("serviceAccountName") or "default",
                    int(sat.get("expirationSeconds") or self.token_seconds),
                    sat.get("audience"),
                )
                (host / sat["path"]).write_text(token)
            elif ref := source.get("configMap"):
                cm = self.core.read_namespaced_config_map(ref["name"], self.namespace)
                for item in ref.get("items") or [{"key": k, "path": k} for k in cm.data or {}]:
                    (host / item["path"]).write_text((cm.data or {})[item["key"]])
            elif dapi := source.get("downwardAPI"):
                for item in dapi.get("items") or []:
                    field_path = (item.get("fieldRef") or {}).get("fieldPath")
                    values = {"metadata.namespace": self.namespace, "metadata.name": local.name}
                    if field_path in values:
                        (host / item["path"]).write_text(values[field_path])

    def _request_token(
        self, local: LocalPod, service_account: str, seconds: int, audience: str | None = None
    ) -> str:
        """TokenRequest for ``service_account``, bound to the pod (invalid once it is gone),
        for ``audience`` (a projected token's; default: the API server's)."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else None,
                expiration_seconds=seconds,
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=local.name, uid=local.uid
                ),
            )
        )
        res = self.core.create_namespaced_service_account_token(
            service_account, self.namespace, request
        )
        assert res.status is not None
        return str(res.status.token)

    def _token_env(self, local: LocalPod, service_account: str) -> dict[str, str]:
        """A pod-bound token for the pod's ServiceAccount, from the TokenRequest API."""
        token = self._request_token(local, service_account, self.token_seconds)
        return {
            "KUBEGRAFT_API_SERVER": self.server,
            "KUBEGRAFT_API_TOKEN": token,
            "KUBEGRAFT_CA_FILE": str(self.ca_file),
        }

    # ------------------------------------------------------------------ reporting
    def _report_exit(self, local: LocalPod, pod: Obj, code: int) -> bool:
        """Write the container's termination and the pod's phase; False if the pod is gone."""
        c = pod["spec"]["containers"][0]
        phase = "Succeeded" if code == 0 else "Failed"
        now = _now()
        try:
            current = self.core.read_namespaced_pod(local.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        if current.metadata is None or current.metadata.uid != local.uid:
            return False
        conditions = []
        old = current.status.conditions if current.status else None
        for cond in self.core.api_client.sanitize_for_serialization(old or []):
            if cond.get("type") in ("Ready", "ContainersReady") and cond.get("status") != "False":
                cond = {
                    **cond,
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": now,
                }
            conditions.append(cond)
        body = {
            "status": {
                "phase": phase,
                "conditions": conditions,
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "terminated": {
                                "exitCode": code,
                                "reason": "Completed" if code == 0 else "Error",
                                "startedAt": local.started_at or now,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
            }
        }
        try:
            self.core.patch_namespaced_pod_status(
                local.name,
                self.namespace,
                body,
                _content_type="application/strategic-merge-patch+json",
            )
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise
        return True


def ca_file_from_kubeconfig(kubeconfig: Path) -> Path:
    """The cluster CA file a kubeconfig names (the dev cluster's kubeconfigs use file paths)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        return Path(cluster["certificate-authority"])
    import base64

    out = kubeconfig.with_name("ca-from-kubeconfig.crt")
    out.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    return out


@contextlib.contextmanager
def repo_kubelet(
    api_client: client.ApiClient,
    server: str,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
    **options: Any,
) -> Iterator[LocalKubelet]:
    """The e2e tests' local kubelet: runs this checkout's trainer (on PYTHONPATH), maps the
    output volume to ``tmp_path/output`` (shared by the ranks), prints each pod's last log
    lines at the end and fails on any error it met. ``options`` go to :class:`LocalKubelet`."""
    root = Path(__file__).resolve().parents[2]
    with LocalKubelet(
        api_client,
        namespace,
        tmp_path / "kubelet",
        server=server,
        ca_file=ca_file_from_kubeconfig(kubeconfig),
        host_dirs={"output": tmp_path / "output"},
        extra_pythonpath=(str(root), str(root / "operator"), str(root / "trainer")),
        **options,
    ) as k:
        yield k
        for name, pod in sorted(k.pods.items()):
            print(f"----- {name} (last lines)\n{pod.logs()[-2500:]}")
    assert not k.errors, k.errors
