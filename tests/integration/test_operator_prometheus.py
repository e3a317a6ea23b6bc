"""A real Prometheus (Debian's 2.42, from hack/build-binaries.sh) scrapes the real operator while
it runs jobs on the local control plane, and PromQL sees what the API server says: the jobs by
state, a gang restart by reason, the reconcile histogram (a usable quantile) and the metric
types. This is what a ServiceMonitor or a scrape config gets in a cluster."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from operator_harness import (
    Kube,
    OperatorProcess,
    job_manifest,
    state_is,
    wait_for,
)

from kubegraft.devcluster.prometheus import Prometheus

pytestmark = pytest.mark.integration
WAIT = 120
"""Seconds any wait may take on a loaded machine; waits end as soon as their condition holds."""
JOB = "kubegraft-operator"


def test_prometheus_scrapes_the_operator_during_real_jobs(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{operator.metrics_port}"
    with Prometheus({JOB: [target]}, tmp_path / "prometheus", interval_s=1.0) as prom:
        prom.wait_for_targets_up(WAIT)
        assert prom.query(f'up{{job="{JOB}"}}') == [({"__name__": "up", "instance": target,
                                                      "job": JOB}, 1.0)]  # fmt: skip

        # One job keeps running; another fails with a retryable code, restarts once as a gang
        # and then fails for good (backoffLimit 1).
        kube.create_job(namespace, job_manifest("steady", nodes=2, outcome="run"))
        kube.create_job(
            namespace,
            job_manifest(
                "flaky",
                nodes=2,
                outcome="fail",
                exit_code=137,
                delay="1s",
                run_policy={"restartBackoffSeconds": 1, "backoffLimit": 1},
            ),
        )
        wait_for(lambda: state_is(kube, namespace, "steady", "Running"), WAIT, message="Running")
        failed = wait_for(lambda: state_is(kube, namespace, "flaky", "Failed"), WAIT, message="F")
        assert failed["restarts"] == 1

        running = prom.wait_for(f'kubegraft_operator_jobs{{job="{JOB}",state="Running"}} >= 1')
        assert running[0][0]["instance"] == target
        prom.wait_for(f'kubegraft_operator_jobs{{job="{JOB}",state="Failed"}} >= 1', WAIT)
        restarts = prom.wait_for(
            'kubegraft_operator_gang_restarts_total{reason="OOMKilledOrKilled"} >= 1', WAIT
        )
        assert restarts[0][1] == operator.metric(
            "kubegraft_operator_gang_restarts_total", reason="OOMKilledOrKilled"
        )

        # The histogram's buckets make a quantile; reconciles of these tiny jobs take < 60 s.
        p99 = prom.query(
            "histogram_quantile(0.99, "
            "sum by (le) (kubegraft_operator_reconcile_duration_seconds_bucket))"
        )
        assert len(p99) == 1
        assert 0 < p99[0][1] < 60
        ok = prom.query('kubegraft_operator_reconciles_total{result="ok"}')
        assert ok
        assert ok[0][1] > 0

        # Prometheus read the types the operator declared (it scrapes OpenMetrics, where a
        # counter's family name has no _total).
        meta = {name: m[0]["type"] for name, m in prom.api("metadata").items()}
        assert meta["kubegraft_operator_jobs"] == "gauge"
        assert meta["kubegraft_operator_reconcile_duration_seconds"] == "histogram"
        assert meta["kubegraft_operator_gang_restarts"] == "counter"
        assert meta["kubegraft_operator_reconciles"] == "counter"


def test_job_state_and_queue_wait_as_prometheus_sees_them(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """One series per job for its current state (gone when the job is deleted), and one queue
    wait per job: from its creation, time held suspended included, and none for a restart."""
    target = f"127.0.0.1:{operator.metrics_port}"
    count = "kubegraft_operator_queue_wait_seconds_count"
    total = "kubegraft_operator_queue_wait_seconds_sum"
    with Prometheus({JOB: [target]}, tmp_path / "prometheus", interval_s=1.0) as prom:
        prom.wait_for_targets_up(WAIT)
        count_before, sum_before = operator.metric(count), operator.metric(total)
        # Created suspended, as a queue (Kueue) holds a job, and admitted later.
        kube.create_job(
            namespace, job_manifest("queued", nodes=2, outcome="run", run_policy={"suspend": True})
        )
        created = time.monotonic()
        wait_for(lambda: state_is(kube, namespace, "queued", "Suspended"), WAIT, message="S")
        held = time.monotonic() - created
        kube.patch_job(namespace, "queued", {"spec": {"runPolicy": {"suspend": False}}})
        wait_for(lambda: state_is(kube, namespace, "queued", "Running"), WAIT, message="Running")
        # Restarts once as a gang, then fails: one queue wait (the first gang), not two.
        kube.create_job(
            namespace,
            job_manifest(
                "doomed",
                nodes=1,
                outcome="fail",
                exit_code=137,
                delay="1s",
                run_policy={"restartBackoffSeconds": 1, "backoffLimit": 1},
            ),
        )
        failed = wait_for(lambda: state_is(kube, namespace, "doomed", "Failed"), WAIT, message="F")
        assert failed["restarts"] == 1

        def states(job: str) -> list[tuple[str, str, float]] | None:
            got = prom.query(f'kubegraft_operator_job_state{{finetunejob="{job}"}}')
            return [(s["namespace"], s["state"], v) for s, v in got] or None

        wanted = [(namespace, "Failed", 1.0)]
        wait_for(lambda: states("doomed") == wanted, WAIT, message="doomed Failed only")
        assert states("queued") == [(namespace, "Running", 1.0)]
        assert operator.metric(count) - count_before == 2
        assert operator.metric(total) - sum_before >= held
        prom.wait_for(f"{count} >= {count_before + 2}", WAIT)
        meta = {name: m[0]["type"] for name, m in prom.api("metadata").items()}
        assert meta["kubegraft_operator_job_state"] == "gauge"
        assert meta["kubegraft_operator_queue_wait_seconds"] == "histogram"

        kube.delete_job(namespace, "queued")
        prom.wait_for('absent(kubegraft_operator_job_state{finetunejob="queued"})', WAIT)
        assert states("doomed") == wanted
