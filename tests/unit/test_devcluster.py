"""The local control plane's building blocks, without starting a control plane.

Node and Stage builders, kubeconfig rendering, certificates (openssl), and the pid bookkeeping
that lets ``down`` stop exactly what ``up`` started (only tiny ``sh`` processes are started).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubegraft.devcluster import manifests, procs
from kubegraft.devcluster.cluster import Cluster, ClusterError, _Waiter, free_port
from kubegraft.devcluster.kubeconfig import render_kubeconfig
from kubegraft.devcluster.pki import ensure_pki

pytestmark = pytest.mark.unit


def test_fake_gpu_node_is_managed_by_kwok_and_advertises_gpus() -> None:
    node = manifests.fake_gpu_node("n0", gpus=8)
    assert node["metadata"]["annotations"][manifests.FAKE_NODE_ANNOTATION] == "fake"
    for key in ("capacity", "allocatable"):
        assert node["status"][key][manifests.GPU_RESOURCE] == "8"
        assert {"cpu", "memory", "pods"} <= set(node["status"][key])
    assert "taints" not in node.get("spec", {})  # every pod may land on it, as on a GPU pool


def test_outcome_stages_select_by_label_and_beat_the_stock_stages() -> None:
    stages = {s["metadata"]["name"]: s["spec"] for s in manifests.outcome_stages()}
    assert set(stages) == {f"kubegraft-test-{o}" for o in manifests.OUTCOMES}
    for outcome in manifests.OUTCOMES:
        spec = stages[f"kubegraft-test-{outcome}"]
        assert spec["selector"]["matchLabels"] == {manifests.OUTCOME_LABEL: outcome}
        assert spec["weight"] > 0  # the stock Stages have weight 0: they never win against it
        assert manifests.DELAY_ANNOTATION in spec["delay"]["durationFrom"]["expressionFrom"]
    fail = stages["kubegraft-test-fail"]["next"]["statusTemplate"]
    assert manifests.EXIT_CODE_ANNOTATION in fail
    assert "phase: Failed" in fail
    assert "phase: Succeeded" in stages["kubegraft-test-succeed"]["next"]["statusTemplate"]
    assert "statusTemplate" not in stages["kubegraft-test-run"]["next"]
    pull = stages["kubegraft-test-image-pull-error"]
    assert {"key": ".status.phase", "operator": "In", "values": ["Pending"]} in (
        pull["selector"]["matchExpressions"]
    )
    assert "reason: ImagePullBackOff" in pull["next"]["statusTemplate"]
    assert "Now" not in pull["next"]["statusTemplate"]  # no timestamps: re-applying is a no-op


def test_kubeconfig_points_at_the_server_with_client_certificates(tmp_path: Path) -> None:
    config = render_kubeconfig(
        name="c",
        server="https://127.0.0.1:6443",
        ca_cert=tmp_path / "ca.crt",
        client_cert=tmp_path / "a.crt",
        client_key=tmp_path / "a.key",
    )
    assert config["current-context"] == "c"
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"]["client-key"] == str(tmp_path / "a.key")


def _openssl_text(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_pki_makes_an_admin_in_system_masters_and_a_serving_cert_for_localhost(
    tmp_path: Path,
) -> None:
    pki = ensure_pki(tmp_path / "pki")
    admin = _openssl_text(pki.admin_cert)
    assert "O=system:masters" in admin or "O = system:masters" in admin
    assert "TLS Web Client Authentication" in admin
    serving = _openssl_text(pki.serving_cert)
    assert "IP Address:127.0.0.1" in serving
    assert "DNS:kubernetes.default.svc" in serving
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), str(pki.admin_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    before = pki.ca_cert.read_bytes()
    assert ensure_pki(tmp_path / "pki").ca_cert.read_bytes() == before  # made once, then kept


def test_stop_ends_a_started_process_and_it_is_reaped(tmp_path: Path) -> None:
    record = procs.start("sleeper", ["sh", "-c", "echo started; exec sleep 60"], tmp_path / "s.log")
    assert procs.is_alive(record)
    assert procs.stop(record, timeout=5)
    assert not procs.is_alive(record)
    assert procs.start_ticks(record.pid) is None  # reaped, not a zombie


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    record = procs.start("sleeper", ["sh", "-c", "exec sleep 60"], tmp_path / "s.log")
    try:
        impostor = procs.ProcessRecord(
            "other", record.pid, record.start_ticks + 1, record.log, record.argv
        )
        assert not procs.is_alive(impostor)
        assert procs.stop(impostor)  # nothing to do: it is not the process we started
        assert procs.is_alive(record)
    finally:
        procs.stop(record, timeout=5)


def test_a_process_dying_at_start_up_fails_fast_with_its_log(tmp_path: Path) -> None:
    cluster = Cluster("c", tmp_path, tmp_path, "https://127.0.0.1:1", tmp_path / "kubeconfig")
    cluster.processes.append(
        procs.start(
            "crasher",
            ["sh", "-c", "echo 'bind: address in use' >&2; exit 3"],
            tmp_path / "crasher.log",
        )
    )
    with pytest.raises(ClusterError, match="crasher") as info:
        _Waiter(cluster).until("never", lambda: False, timeout=30)
    assert "bind: address in use" in str(info.value)


def test_waiting_times_out_with_a_clear_message(tmp_path: Path) -> None:
    cluster = Cluster("c", tmp_path, tmp_path, "https://127.0.0.1:1", tmp_path / "kubeconfig")
    with pytest.raises(ClusterError, match="timed out after 0s waiting for the moon"):
        _Waiter(cluster).until("the moon", lambda: False, timeout=0.2)


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536
