"""Start-up of the local control plane survives a busy API server, and says why when it fails.

``kubegraft dev cluster up`` once failed at ``kubectl wait ... crd/stages.kwok.x-k8s.io`` right
after the apply, with a traceback that hid kubectl's stderr. The commands here are real
processes: a small shell script stands in for kubectl (it answers as kubectl does when the
server is busy), so the retry loop and the error text are exercised without a control plane.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubegraft.devcluster import procs
from kubegraft.devcluster.cluster import Cluster, ClusterError, _Waiter

pytestmark = pytest.mark.unit

NOT_SERVED = "Error from server (NotFound): the server could not find the requested resource"


@pytest.mark.parametrize(
    "text",
    [
        NOT_SERVED,
        'error: resource mapping not found for name: "node-initialize" namespace: "" from '
        '"stage.yaml": no matches for kind "Stage" in version "kwok.x-k8s.io/v1alpha1"\n'
        "ensure CRDs are installed first",
        "Error from server (TooManyRequests): the server has received too many requests and "
        "has asked us to try again later",
        "The connection to the server 127.0.0.1:6443 was refused - did you specify the right "
        'host or port?\nGet "https://127.0.0.1:6443/api": dial tcp: connection refused',
        "read tcp 127.0.0.1:50000->127.0.0.1:6443: read: connection reset by peer",
        "error: timed out waiting for the condition on customresourcedefinitions/stages",
        "Error from server (ServiceUnavailable): the server is currently unable to handle the "
        "request",
        "Error from server: etcdserver: request timed out",
    ],
)
def test_busy_server_errors_are_transient(text: str) -> None:
    assert procs.is_transient(text)


@pytest.mark.parametrize(
    "text",
    [
        'error: the path "/nope/stage.yaml" does not exist',
        'Error from server (Forbidden): nodes is forbidden: User "x" cannot list resource',
        'The CustomResourceDefinition "stages.kwok.x-k8s.io" is invalid: spec.versions: '
        "Required value",
        "Error from server (BadRequest): error when creating: strict decoding error: unknown "
        'field "spec.foo"',
        "error: unknown flag: --bogus",
    ],
)
def test_real_errors_are_not_transient(text: str) -> None:
    assert not procs.is_transient(text)


def test_dropped_connections_and_command_timeouts_are_transient() -> None:
    assert procs.error_is_transient(ConnectionResetError(104, "Connection reset by peer"))
    assert procs.error_is_transient(subprocess.TimeoutExpired(["kubectl"], 5))
    assert not procs.error_is_transient(FileNotFoundError(2, "No such file or directory"))


def _cluster(tmp_path: Path, script: str) -> Cluster:
    """A Cluster whose kubectl is ``script`` (sh), run for real by Cluster.kubectl."""
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\n{script}\n")
    kubectl.chmod(0o755)
    return Cluster("c", tmp_path, tmp_path, "https://127.0.0.1:1", tmp_path / "kubeconfig")


def _flaky(tmp_path: Path, failures: int, stderr: str) -> Cluster:
    """kubectl that fails ``failures`` times with ``stderr``, then succeeds; counts calls."""
    count = tmp_path / "calls"
    count.write_text("0")
    return _cluster(
        tmp_path,
        f"n=$(($(cat {count}) + 1)); echo $n > {count}\n"
        f'if [ $n -le {failures} ]; then echo "{stderr}" >&2; exit 1; fi\n'
        'echo "customresourcedefinition.apiextensions.k8s.io/stages.kwok.x-k8s.io condition met"',
    )


def _calls(tmp_path: Path) -> int:
    return int((tmp_path / "calls").read_text())


def test_a_failed_command_shows_its_stderr(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, 'echo "Error from server (Forbidden): no way" >&2; exit 1')
    with pytest.raises(subprocess.CalledProcessError) as info:
        cluster.kubectl("get", "nodes")
    assert "Error from server (Forbidden): no way" in str(info.value)
    assert "get nodes" in str(info.value)
    assert info.value.returncode == 1


def test_start_up_wait_retries_a_crd_not_yet_served(tmp_path: Path) -> None:
    cluster = _flaky(tmp_path, failures=2, stderr=NOT_SERVED)
    _Waiter(cluster).retry(
        "CRD Established",
        lambda: cluster.kubectl("wait", "--for=condition=Established", "crd/stages.kwok.x-k8s.io"),
        timeout=60,
    )
    assert _calls(tmp_path) == 3


def test_a_real_error_fails_at_once_with_its_stderr(tmp_path: Path) -> None:
    cluster = _flaky(tmp_path, failures=100, stderr='error: the path \\"/x.yaml\\" does not exist')
    with pytest.raises(ClusterError, match="applying the CRD failed") as info:
        _Waiter(cluster).retry(
            "applying the CRD", lambda: cluster.kubectl("apply", "-f", "/x.yaml"), timeout=60
        )
    assert 'the path "/x.yaml" does not exist' in str(info.value)
    assert _calls(tmp_path) == 1


def test_transient_errors_past_the_timeout_fail_with_the_last_stderr(tmp_path: Path) -> None:
    cluster = _flaky(tmp_path, failures=10_000, stderr=NOT_SERVED)
    with pytest.raises(
        ClusterError, match=r"timed out after \d+s waiting for CRD Established"
    ) as e:
        _Waiter(cluster).retry(
            "CRD Established", lambda: cluster.kubectl("wait", "crd/x"), timeout=0.5
        )
    assert "the server could not find the requested resource" in str(e.value)
    assert _calls(tmp_path) >= 1


def test_a_polled_condition_that_keeps_failing_reports_the_last_error(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, 'echo "Unable to connect to the server: EOF" >&2; exit 1')
    with pytest.raises(ClusterError, match="waiting for nodes") as info:
        _Waiter(cluster).until(
            "nodes", lambda: bool(cluster.kubectl_json("get", "nodes")), timeout=0.3
        )
    assert "Unable to connect to the server: EOF" in str(info.value)
