"""Run the real operator as a subprocess against a cluster: for integration tests, e2e tests
and benchmarks (like ``kopf.testing.KopfRunner``, but a separate process, so a test can kill
it with SIGKILL half-way and start it again, or run two replicas with peering).

Nothing here is a mock: the process is ``python -m kubegraft_operator`` with a kubeconfig,
usually one holding the operator ServiceAccount's token (:func:`operator_kubeconfig`), so
the RBAC in ``manifests/rbac/`` is what it runs with. With ``exit_after_creates`` it is the
same operator started through :mod:`operator_faults` (test code, like this module: the
packages users run have no fault-injection seams).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

import kubegraft
import kubegraft_operator

HERE = Path(__file__).resolve().parent
T = TypeVar("T")
OPERATOR_NAMESPACE = "kubegraft-system"
OPERATOR_SERVICE_ACCOUNT = "kubegraft-operator"


def repo_root() -> Path:
    """The source tree's root (manifests/ lives there)."""
    return Path(kubegraft.__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.25,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``
    seconds (with ``message`` and the last value). Polling is a wait on a condition, never a
    blind sleep: the test goes on as soon as it holds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


def operator_kubeconfig(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    admin_kubeconfig: Path,
    out: Path,
    *,
    duration: str = "3h",
) -> Path:
    """Install the operator's RBAC (manifests/rbac/) and write a kubeconfig that authenticates
    as its ServiceAccount with a TokenRequest token, so the operator runs with exactly the
    permissions the manifests grant."""
    for path in sorted((repo_root() / "manifests" / "rbac").glob("*.yaml")):
        kubectl("apply", "-f", str(path))
    token = kubectl(
        "create",
        "token",
        OPERATOR_SERVICE_ACCOUNT,
        "-n",
        OPERATOR_NAMESPACE,
        f"--duration={duration}",
    ).stdout.strip()
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": OPERATOR_SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "op", "context": {"cluster": "c", "user": OPERATOR_SERVICE_ACCOUNT}}],
        "current-context": "op",
    }
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


class OperatorProcess:
    """``python -m kubegraft_operator`` in a subprocess, with its metrics and health ports."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        namespace: str | None = None,
        peering: str | None = None,
        priority: int | None = None,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
        exit_after_creates: int | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespace = namespace
        self.peering = peering
        self.priority = priority
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.exit_after_creates = exit_after_creates
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.progress_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        if self.exit_after_creates is None:
            args = [sys.executable, "-m", "kubegraft_operator"]
        else:
            args = [sys.executable, "-m", "operator_faults", str(self.exit_after_creates)]
        args += ["--namespace", self.namespace] if self.namespace else ["--all-namespaces"]
        args += [f"--peering={self.peering}"] if self.peering else ["--standalone"]
        args += [f"--liveness=http://127.0.0.1:{self.health_port}/healthz", *self.extra_args]
        return args

    def start(self) -> OperatorProcess:
        pythonpath = [
            str(Path(kubegraft_operator.__file__).resolve().parents[1]),
            str(Path(kubegraft.__file__).resolve().parents[1]),
        ]
        if self.exit_after_creates is not None:
            pythonpath.append(str(HERE))  # operator_faults
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "KUBEGRAFT_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # The progress endpoint (progress_server.py) on 127.0.0.1, with the test CA.
            "KUBEGRAFT_PROGRESS_TLS_DIR": str(progress_tls_dir()),
            "KUBEGRAFT_PROGRESS_PORT": str(self.progress_port),
            "KUBEGRAFT_OPERATOR_PROGRESS_URL": f"https://127.0.0.1:{self.progress_port}",
            **self.env,
        }
        if self.priority is not None:
            env["KUBEGRAFT_PEERING_PRIORITY"] = str(self.priority)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 180) -> OperatorProcess:
        def ok() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"operator exited with {self.proc.returncode}:\n{self.logs()[-3000:]}"
                )
            return self.healthy()

        wait_for(ok, timeout, message="operator /healthz")
        return self

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value from /metrics (0.0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` and wait for the process to end; its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        """Graceful stop (SIGTERM: kopf stops daemons and leaves the peering)."""
        return self.kill(signal.SIGTERM)

    def __enter__(self) -> OperatorProcess:
        return self.start().wait_healthy()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------- manifests and reading
def job_manifest(
    name: str,
    *,
    nodes: int = 2,
    procs_per_node: int = 1,
    gpus_per_node: int | None = None,
    outcome: str = "succeed",
    delay: str = "2s",
    exit_code: int | None = None,
    run_policy: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A small FineTuneJob whose (kwok-played) pods choose their fate: ``outcome`` is
    succeed, fail (with ``exit_code``) or run, after ``delay`` (see kubegraft.devcluster).
    Its output is ``ephemeral`` unless ``output`` says otherwise: kwok's pods write nothing,
    and no PersistentVolumeClaim is needed for them."""
    from kubegraft.devcluster.manifests import DELAY_ANNOTATION, EXIT_CODE_ANNOTATION, OUTCOME_LABEL

    annotations = {DELAY_ANNOTATION: delay}
    if exit_code is not None:
        annotations[EXIT_CODE_ANNOTATION] = str(exit_code)
    distributed: dict[str, Any] = {"nodes": nodes, "procsPerNode": procs_per_node}
    if gpus_per_node is not None:
        distributed["gpusPerNode"] = gpus_per_node
    return {
        "apiVersion": "kubegraft.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"checkpoint": "/models/base", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "training": {"maxSteps": 200},
            "distributed": distributed,
            "output": output if output is not None else {"ephemeral": True},
            "pod": {"labels": {OUTCOME_LABEL: outcome}, "annotations": annotations},
            "runPolicy": {
                "restartBackoffSeconds": 1,
                "startupTimeoutSeconds": 60,
                **(run_policy or {}),
            },
        },
    }


class Kube:
    """The reads and writes tests make, over the official client (admin credentials)."""

    def __init__(self, api_client: object) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.api_client = api_client

    def _plain(self, obj: object) -> dict[str, Any]:
        out: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)  # type: ignore[attr-defined]
        return out

    def create_job(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        res = self.custom.create_namespaced_custom_object(
            "kubegraft.io", "v1alpha1", namespace, "finetunejobs", manifest
        )
        return cast(dict[str, Any], res)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return cast(
                dict[str, Any],
                self.custom.get_namespaced_custom_object(
                    "kubegraft.io", "v1alpha1", namespace, "finetunejobs", name
                ),
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.job(namespace, name) or {}
        return dict(job.get("status") or {})

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "kubegraft.io",
            "v1alpha1",
            namespace,
            "finetunejobs",
            name,
            patch,
            _content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            "kubegraft.io", "v1alpha1", namespace, "finetunejobs", name
        )

    def pods(self, namespace: str, job: str | None = None) -> list[dict[str, Any]]:
        selector = f"kubegraft.io/job-name={job}" if job else "kubegraft.io/job-name"
        items = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [self._plain(p) for p in items]

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(type, reason) of the Events on the FineTuneJob, oldest first."""
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=FineTuneJob"
        ).items
        items = sorted(
            items,
            key=lambda e: str(e.first_timestamp or e.event_time or e.metadata.creation_timestamp),
        )
        return [(str(e.type), str(e.reason)) for e in items]


def state_is(kube: Kube, ns: str, name: str, *states: str) -> dict[str, Any] | None:
    """The job's status when its state is one of ``states`` (a ``wait_for`` predicate)."""
    st = kube.status(ns, name)
    return st if st.get("state") in states else None


_TLS_DIR: list[Path] = []


def progress_tls_dir() -> Path:
    """A CA and a certificate for 127.0.0.1 signed by it (``ca.crt``, ``tls.crt``, ``tls.key``)
    for the operator's progress endpoint, made once per test process with openssl, as the Helm
    chart makes one per installation; removed when the process exits (it holds a CA key)."""
    if _TLS_DIR:
        return _TLS_DIR[0]
    d = Path(tempfile.mkdtemp(prefix="kubegraft-progress-tls-"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3",
        "-subj", "/CN=kubegraft-progress-ca")  # fmt: skip
    run("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "3", "-extfile", "san.ext")  # fmt: skip
    _TLS_DIR.append(d)
    return d


def progress_token(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    pod: dict[str, Any],
    *,
    audience: str | None = None,
    service_account: str = "default",
) -> str:
    """A token bound to ``pod`` for the progress audience, from the TokenRequest API: what the
    kubelet projects into rank 0's pod (``audience=""``: the API server's own audience)."""
    from kubegraft.progress import PROGRESS_AUDIENCE

    meta = pod["metadata"]
    aud = PROGRESS_AUDIENCE if audience is None else audience
    return str(
        kubectl(
            "create", "token", service_account, "-n", meta["namespace"], "--duration=10m",
            *([f"--audience={aud}"] if aud else []),
            "--bound-object-kind=Pod", f"--bound-object-name={meta['name']}",
            f"--bound-object-uid={meta['uid']}",
        ).stdout.strip()
    )  # fmt: skip


def post_progress(url: str, body: str, token: str, ca: str | None = None) -> None:
    """One progress report POSTed to the operator's endpoint ``url``, as rank 0's sink sends
    it (raises urllib's HTTPError on a refusal): for tests that play rank 0. ``ca``: the PEM
    rank 0 trusts (default: the test CA)."""
    from kubegraft.progress import OperatorSink

    with tempfile.NamedTemporaryFile("w", suffix=".token") as f:
        f.write(token)
        f.flush()
        pem = ca or (progress_tls_dir() / "ca.crt").read_text()
        sink = OperatorSink(url, token_file=f.name, ca=pem)
        try:
            sink.send(body)
        finally:
            sink.close()
