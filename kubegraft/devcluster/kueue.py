"""Kueue's manager in the local control plane, with its webhooks really called by the API server.

``hack/build-binaries.sh`` builds Kueue from the Go module proxy (``hack/tools/kueue``) and
copies its CRDs and webhook configurations out of the module source into ``kueue-config/``
next to the binary. :func:`start` then, on a running :class:`~.cluster.Cluster`:

1. applies the CRDs (server-side: they are too large for a client-side apply's annotation)
   and waits until each is Established;
2. writes Kueue's configuration file (:func:`render_config`): no leader election, no internal
   certificate management, the webhook server on 127.0.0.1 with a certificate the cluster CA
   signed, free metrics/health ports, the client QPS, and the integrations (the built-in
   ``batch/job``, which Kueue requires to be non-empty, and FineTuneJob as an external
   framework: the kubegraft operator drives its Workloads);
3. starts ``kueue`` as one more recorded process (``down`` stops it) and waits for /readyz;
4. registers the mutating and validating webhook configurations with ``clientConfig.url``
   pointing at the local port and ``caBundle`` the cluster CA (:func:`webhook_configurations`),
   as Kueue's own envtest integration tests do, keeping only the webhooks this configuration
   serves (an unserved path with ``failurePolicy: Fail`` would refuse every matching write);
5. proves that the API server calls them: a server-side dry run of an invalid ResourceFlavor
   must be refused by Kueue's validating webhook.

Kueue runs with the admin credentials: its own RBAC is not under test here, the operator's is.

One wart: with internal certificate management off, Kueue v0.17 reads its metrics serving
certificate from the fixed path ``/etc/kueue/metrics/certs`` (``cmd/kueue/main.go``, no flag or
setting moves it) and exits without it. :func:`ensure_metrics_cert` puts a throwaway
self-signed certificate there when none exists (nothing trusts it; nothing here scrapes Kueue's
metrics), and says so clearly when the path cannot be written.
"""

from __future__ import annotations

import base64
import copy
import functools
from pathlib import Path
from typing import Any

import yaml

from kubegraft.devcluster import procs
from kubegraft.devcluster.cluster import (
    HOST,
    Cluster,
    ClusterError,
    Log,
    _http_ok,
    _Waiter,
    free_port,
)
from kubegraft.devcluster.pki import Pki, ensure_webhook_cert, self_signed_cert

CONFIG_DIR = "kueue-config"
"""Next to the ``kueue`` binary: ``crd/*.yaml`` and ``webhook.yaml`` from the module source."""
NAMESPACE = "kueue-system"
EXTERNAL_FRAMEWORK = "FineTuneJob.v1alpha1.kubegraft.io"
FRAMEWORKS = ("batch/job",)
SERVED_GROUPS = frozenset({"kueue.x-k8s.io", "batch"})
"""API groups of the webhooks the configured integrations serve (Kueue's own objects and the
batch/job integration)."""
METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
CLIENT_QPS = 50
CLIENT_BURST = 100


def config_dir(cluster: Cluster) -> Path:
    """Where the CRDs and webhook configurations copied from Kueue's module source are."""
    path = cluster.bin_dir / CONFIG_DIR
    if not (cluster.bin_dir / "kueue").exists() or not path.is_dir():
        raise ClusterError(
            f"{cluster.bin_dir} has no kueue binary or {CONFIG_DIR}/: run hack/build-binaries.sh "
            "(without KUBEGRAFT_SKIP_KUEUE=1)"
        )
    return path


def render_config(
    *, webhook_port: int, cert_dir: Path, metrics_port: int, health_port: int
) -> dict[str, Any]:
    """Kueue's ``Configuration`` (config.kueue.x-k8s.io/v1beta2) for the local control plane."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": HOST, "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"{HOST}:{metrics_port}"},
        "health": {"healthProbeBindAddress": f"{HOST}:{health_port}"},
        "clientConnection": {"qps": CLIENT_QPS, "burst": CLIENT_BURST},
        "integrations": {
            "frameworks": list(FRAMEWORKS),
            "externalFrameworks": [EXTERNAL_FRAMEWORK],
        },
    }


def _served(webhook: dict[str, Any]) -> bool:
    groups = {g for rule in webhook.get("rules") or [] for g in rule.get("apiGroups") or []}
    return bool(groups) and groups <= SERVED_GROUPS


def webhook_configurations(
    manifests: list[dict[str, Any]], *, port: int, ca_bundle: bytes
) -> list[dict[str, Any]]:
    """Kueue's webhook configurations, pointed at ``https://127.0.0.1:<port><path>`` instead of
    its in-cluster Service, trusting ``ca_bundle``, with only the webhooks it serves here."""
    ca = base64.b64encode(ca_bundle).decode()
    out = []
    for doc in manifests:
        if doc.get("kind") not in (
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ):
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}"}
        hooks = []
        for hook in doc.get("webhooks") or []:
            if not _served(hook):
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://{HOST}:{port}{path}", "caBundle": ca}
            hooks.append(hook)
        doc["webhooks"] = hooks
        out.append(doc)
    return out


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def _crd_names(crd_dir: Path) -> list[str]:
    return [
        d["metadata"]["name"]
        for p in sorted(crd_dir.glob("*.yaml"))
        for d in _load_all(p)
        if d.get("kind") == "CustomResourceDefinition"
    ]


def _webhook_refuses(cluster: Cluster) -> bool:
    """Whether Kueue's validating webhook refuses an invalid ResourceFlavor (a dry run): proof
    that the API server reaches the webhook server and trusts its certificate."""
    bad = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "kubegraft-webhook-probe"},
        "spec": {"nodeLabels": {"bad label!": "x"}},
    }
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    if proc.returncode == 0:
        raise ClusterError("Kueue's webhook accepted an invalid ResourceFlavor: not called?")
    if 'admission webhook "vresourceflavor.kb.io" denied' in proc.stderr:
        return True
    if procs.is_transient(proc.stderr) or "failed calling webhook" in proc.stderr:
        return False
    raise ClusterError(f"probing Kueue's webhook: {proc.stderr.strip()}")


def ensure_metrics_cert(directory: Path = METRICS_CERT_DIR) -> None:
    """A self-signed ``tls.crt``/``tls.key`` in ``directory`` unless both exist (module
    docstring: Kueue insists on this path)."""
    if (directory / "tls.crt").exists() and (directory / "tls.key").exists():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        self_signed_cert(directory / "tls.crt", directory / "tls.key", "kueue-metrics")
    except (OSError, RuntimeError) as exc:
        raise ClusterError(
            f"Kueue needs a metrics certificate in {directory} (a fixed path in Kueue v0.17 "
            f"when internalCertManagement is off) and it cannot be written here: {exc}"
        ) from exc


def start(cluster: Cluster, pki: Pki, *, log: Log = print, timeout: float = 120) -> None:
    """Install Kueue's CRDs, start its manager and register its webhooks (module docstring)."""
    cfg_dir = config_dir(cluster)
    wait = _Waiter(cluster)
    crd_dir = cfg_dir / "crd"
    log("installing Kueue's CRDs")
    wait.retry(
        "applying Kueue's CRDs",
        lambda: cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(crd_dir), timeout=timeout
        ),
        timeout,
    )
    for name in _crd_names(crd_dir):
        wait.retry(
            f"CRD {name} Established",
            functools.partial(
                cluster.kubectl,
                "wait",
                "--for=condition=Established",
                "--timeout=10s",
                f"crd/{name}",
            ),
            timeout,
        )
    wait.retry(
        f"namespace {NAMESPACE}",
        lambda: cluster.apply(
            [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
        ),
        timeout,
    )

    state = cluster.state_dir / "kueue"
    cert_dir = state / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    crt, key = ensure_webhook_cert(pki, "kueue-webhook")
    # controller-runtime's webhook server reads tls.crt/tls.key from certDir.
    (cert_dir / "tls.crt").write_bytes(crt.read_bytes())
    (cert_dir / "tls.key").write_bytes(key.read_bytes())
    (cert_dir / "tls.key").chmod(0o600)
    ports = {f"kueue-{k}": free_port() for k in ("webhook", "metrics", "health")}
    cluster.ports.update(ports)
    config = state / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            render_config(
                webhook_port=ports["kueue-webhook"],
                cert_dir=cert_dir,
                metrics_port=ports["kueue-metrics"],
                health_port=ports["kueue-health"],
            )
        )
    )
    ensure_metrics_cert()
    log("starting kueue")
    record = procs.start(
        "kueue",
        [
            str(cluster.bin_dir / "kueue"),
            f"--config={config}",
            f"--kubeconfig={cluster.kubeconfig}",
            # The on-demand visibility API server would need an APIService and a fixed port.
            "--feature-gates=VisibilityOnDemand=false",
            "--zap-log-level=2",
        ],
        cluster.state_dir / "logs" / "kueue.log",
        die_with_parent=cluster.tie_to_caller,
    )
    cluster.processes.append(record)
    cluster.save()
    readyz = f"http://{HOST}:{ports['kueue-health']}/readyz"
    wait.until("kueue /readyz", lambda: _http_ok(readyz), timeout)

    log("registering Kueue's webhooks (clientConfig.url to 127.0.0.1)")
    hooks = webhook_configurations(
        _load_all(cfg_dir / "webhook.yaml"),
        port=ports["kueue-webhook"],
        ca_bundle=pki.ca_cert.read_bytes(),
    )
    wait.retry("registering Kueue's webhooks", lambda: cluster.apply(hooks), timeout)
    wait.until(
        "Kueue's webhook called by the API server", lambda: _webhook_refuses(cluster), timeout
    )
