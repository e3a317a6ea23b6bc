"""The dev cluster's Kueue wiring without starting Kueue: its configuration, and the webhook
configurations pointed at the local port (the real start-up: tests/integration/test_kueue.py)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from kubegraft.devcluster import kueue

pytestmark = pytest.mark.unit


def _hook(name: str, group: str, path: str) -> dict[str, object]:
    return {
        "name": name,
        "clientConfig": {
            "service": {"name": "webhook-service", "namespace": "system", "path": path}
        },
        "rules": [{"apiGroups": [group], "apiVersions": ["v1"], "resources": ["x"]}],
        "failurePolicy": "Fail",
    }


def test_webhooks_point_at_the_local_port_and_only_served_ones_are_kept() -> None:
    manifests = [
        {
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "mutating-webhook-configuration"},
            "webhooks": [
                _hook("mworkload.kb.io", "kueue.x-k8s.io", "/mutate-workload"),
                _hook("mjob.kb.io", "batch", "/mutate-batch-v1-job"),
                _hook("mpod.kb.io", "", "/mutate--v1-pod"),  # pod integration: not enabled
                _hook("mjaxjob.kb.io", "kubeflow.org", "/mutate-jaxjob"),
            ],
        },
        {"kind": "Service", "metadata": {"name": "webhook-service"}},
    ]
    (out,) = kueue.webhook_configurations(manifests, port=9443, ca_bundle=b"CA")
    assert out["metadata"] == {"name": "kueue-mutating-webhook-configuration"}
    assert [h["name"] for h in out["webhooks"]] == ["mworkload.kb.io", "mjob.kb.io"]
    assert out["webhooks"][0]["clientConfig"] == {
        "url": "https://127.0.0.1:9443/mutate-workload",
        "caBundle": base64.b64encode(b"CA").decode(),
    }
    # the source is untouched
    assert "service" in manifests[0]["webhooks"][0]["clientConfig"]  # type: ignore[index]


def test_config_runs_without_leader_election_on_local_ports_with_finetunejob_external() -> None:
    cfg = kueue.render_config(webhook_port=1, cert_dir=Path("/c"), metrics_port=2, health_port=3)
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": "/c"}
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:2"
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:3"
    assert cfg["integrations"]["externalFrameworks"] == ["FineTuneJob.v1alpha1.kubegraft.io"]
    assert cfg["clientConnection"]["qps"] > 0


def test_metrics_cert_is_made_once_and_unwritable_paths_are_named(tmp_path: Path) -> None:
    kueue.ensure_metrics_cert(tmp_path / "certs")
    crt = tmp_path / "certs" / "tls.crt"
    text = subprocess.run(
        ["openssl", "x509", "-in", str(crt), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text
    before = crt.read_bytes()
    kueue.ensure_metrics_cert(tmp_path / "certs")
    assert crt.read_bytes() == before
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(kueue.ClusterError, match="metrics certificate"):
        kueue.ensure_metrics_cert(blocker / "certs")
