"""The chart's dashboards and alerts against a real Prometheus (Debian's 2.42) that scrapes a
real 2-process training run on CPU and the real operator, with the chart's rules loaded.

The run is the e2e quickstart (tests/e2e/test_local_gang.py): the operator creates the pods on
the real control plane, and local processes stand in for a kubelet (:mod:`local_kubelet`), so
rank 0's /metrics is a real trainer's. Beside it, two kwok-played jobs give the operator's
series something to show: one fails with a retryable code, restarts its gang once and fails
for good (a gang restart by reason, a Failed job, the KubegraftJobFailed alert pending); one
names a PriorityClass that does not exist, so the API server refuses its pods (an API error).

What cannot run here, said plainly:
- **NVIDIA's DCGM exporter** needs a GPU: a small HTTP endpoint in this test serves synthetic
  DCGM series (its metric names and its ``namespace``/``pod``/``gpu`` labels) for the
  trainer's pods and for one pod of another job, which the dashboard's join must leave out.
- **Grafana** cannot run here (REAL-PARTS.md): every query of both dashboards is sent to
  Prometheus as Grafana would send it (variables substituted, ``$__rate_interval`` computed)
  and must return data; hack/dashboard_preview.py draws the answers as PNGs
  (``KUBEGRAFT_WRITE_PREVIEWS=docs/img`` writes the ones docs/observability.md shows).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hack_scripts import load
from local_kubelet import LocalKubelet, LocalPod, ca_file_from_kubeconfig
from operator_harness import Kube, OperatorProcess, job_manifest, repo_root, state_is, wait_for
from test_local_gang import finished, quickstart_job

from kubegraft.constants import ENV_METRICS_FINAL_SCRAPE, ENV_METRICS_PORT, LABEL_JOB_NAME
from kubegraft.devcluster.cluster import Cluster, free_port
from kubegraft.devcluster.prometheus import Prometheus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = repo_root()
SCRAPE = 0.5
"""Seconds between scrapes and rule evaluations: a tiny run gives many samples."""
RUN_TIMEOUT = 420.0
JOB = "obs"


dashboards = load("dashboards")
preview = load("dashboard_preview")


# ------------------------------------------------------------------------ synthetic DCGM
DCGM = {
    "DCGM_FI_DEV_GPU_UTIL": ("gauge", lambda t, i: 70 + 20 * math.sin(t / 7 + i)),
    "DCGM_FI_DEV_FB_USED": ("gauge", lambda t, i: 30000 + 2000 * i + 500 * math.sin(t / 5)),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("gauge", lambda t, i: 0.4 + 0.2 * math.sin(t / 9 + i)),
}


def dcgm_text(namespace: str, pods: list[str], now: float) -> str:
    """The exposition text of a DCGM exporter with one GPU per pod (its label set)."""
    lines = []
    for name, (kind, value) in DCGM.items():
        lines += [f"# HELP {name} synthetic (no GPU here)", f"# TYPE {name} {kind}"]
        for i, pod in enumerate(pods):
            labels = (
                f'gpu="{i}",UUID="GPU-synthetic-{i}",device="nvidia{i}",'
                f'modelName="NVIDIA H100 80GB HBM3",Hostname="node-{i}",'
                f'namespace="{namespace}",pod="{pod}",container="trainer"'
            )
            lines.append(f"{name}{{{labels}}} {value(now, i):.3f}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def dcgm(namespace: str) -> Iterator[str]:
    """A synthetic DCGM exporter for the job's two pods and one pod of another job."""
    pods = [f"{JOB}-worker-0-a0", f"{JOB}-worker-1-a0", "other-worker-0-a0"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = dcgm_text(namespace, pods, time.time()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # a scrape that timed out under load
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------ the parts
@pytest.fixture
def kubelet(cluster: Cluster, kube: Kube, namespace: str, tmp_path: Path) -> Iterator[LocalKubelet]:
    """Runs the training job's pods only (kwok plays the other jobs' pods)."""
    with LocalKubelet(
        kube.api_client,  # type: ignore[arg-type]
        namespace,
        tmp_path / "kubelet",
        server=cluster.server,
        ca_file=ca_file_from_kubeconfig(cluster.kubeconfig),
        host_dirs={"output": tmp_path / "output"},
        label_selector=f"{LABEL_JOB_NAME}={JOB}",
        extra_pythonpath=(str(ROOT), str(ROOT / "operator"), str(ROOT / "trainer")),
    ) as k:
        yield k
        for name, pod in sorted(k.pods.items()):
            print(f"----- {name} (last lines)\n{pod.logs()[-2500:]}")
    assert not k.errors, k.errors


def rules_file(path: Path) -> Path:
    """The chart's rule groups (what its PrometheusRule carries) as a Prometheus rule file."""
    groups = [
        g for f in sorted((ROOT / "charts/kubegraft/rules").glob("*.yaml"))
        for g in yaml.safe_load(f.read_text())
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def last(prom: Prometheus, expr: str) -> float:
    """The last scraped value of one series (the target may be gone: stale markers are
    skipped by range selectors)."""
    result = prom.query(f"last_over_time({expr}[15m])")
    assert len(result) == 1, (expr, result)
    return result[0][1]


def test_every_dashboard_query_returns_data_and_the_rules_evaluate(
    kube: Kube,
    namespace: str,
    operator: OperatorProcess,
    kubelet: LocalKubelet,
    dcgm: str,
    tmp_path: Path,
) -> None:
    output = tmp_path / "output"
    steps = 40
    # features not cached: the trainer sees token ids, so tokens/s has data
    job = quickstart_job(JOB, output, max_steps=steps, cache_features=False, checkpoint_every=10)
    job["spec"]["training"]["evalEverySteps"] = 10
    # rank 0 waits (up to a minute) for a scrape of its final values before it exits
    job["spec"]["pod"]["env"] = [{"name": ENV_METRICS_FINAL_SCRAPE, "value": "60"}]
    kube.create_job(namespace, job)
    flaky = job_manifest(
        "flaky", nodes=2, outcome="fail", exit_code=137, delay="1s",
        run_policy={"restartBackoffSeconds": 1, "backoffLimit": 1},
    )  # fmt: skip
    kube.create_job(namespace, flaky)
    refused = job_manifest("refused", nodes=1, outcome="run")
    refused["spec"]["pod"]["priorityClassName"] = "no-such-priority-class"
    kube.create_job(namespace, refused)

    # rank 0's metrics port: the local kubelet gave the pod's KUBEGRAFT_METRICS_PORT a free one
    def rank0_started() -> LocalPod | None:
        kubelet.check()
        pod = kubelet.pod(f"{JOB}-worker-0-a0")
        return pod if pod is not None and pod.env else None

    rank0 = wait_for(rank0_started, RUN_TIMEOUT, message="rank 0 started")
    targets = {
        "kubegraft-trainer": [f"127.0.0.1:{rank0.env[ENV_METRICS_PORT]}"],
        "kubegraft-operator": [f"127.0.0.1:{operator.metrics_port}"],
        "dcgm-exporter": [dcgm],
    }
    rules = rules_file(tmp_path / "kubegraft-rules.yaml")
    with Prometheus(
        targets, tmp_path / "prometheus", interval_s=SCRAPE, rule_files=[rules]
    ) as prom:
        start = time.time()
        selector = f'namespace="{namespace}", finetunejob="{JOB}"'
        done = wait_for(
            lambda: finished(kube, namespace, JOB, kubelet), RUN_TIMEOUT, interval=1.0,
            message=f"{JOB} finished",
        )  # fmt: skip
        assert done["state"] == "Succeeded", done
        wait_for(lambda: state_is(kube, namespace, "flaky", "Failed"), 120, message="flaky")
        summary = json.loads((output / "metrics.json").read_text())
        # the trainer was scraped through to its end: the final step and evaluation
        prom.wait_for(f"last_over_time(kubegraft_trainer_progress_ratio{{{selector}}}[15m]) == 1")
        prom.wait_for('kubegraft_operator_gang_restarts_total{reason!=""} >= 1', 60)
        prom.wait_for('kubegraft_operator_api_errors_total{code="403"} >= 1', 60)
        prom.wait_for('ALERTS{alertname="KubegraftJobFailed", finetunejob="flaky"}', 60)
        end = time.time()

        # ---- every query of both dashboards returns data, as Grafana would send it
        variables = {"namespace": [namespace], "finetunejob": [JOB], "job": ["kubegraft-operator"]}
        answers = {}
        for name in ("training", "operator"):
            model = json.loads((dashboards.OUT_DIR / f"{name}.json").read_text())
            panels = preview.fetch(prom.url, model, variables, start=start, end=end,
                                   step=1.0, scrape_interval=SCRAPE)  # fmt: skip
            empty = [(p.title, ref, q) for p in panels for ref, q in p.queries
                     if ref in p.empty_targets()]  # fmt: skip
            assert not empty, f"{name} dashboard queries without data: {empty}"
            answers[name] = (model, panels)
        # the GPU join kept the job's pods and left the other job's out
        gpu = next(p for p in answers["training"][1] if p.title == "GPU utilization")
        assert sorted(s.legend for s in gpu.series) == [f"{JOB}-worker-0-a0", f"{JOB}-worker-1-a0"]

        # ---- the values agree with the run's metrics.json
        assert last(prom, f"kubegraft_trainer_planned_steps{{{selector}}}") == steps
        assert summary["step"] == steps
        done_steps = last(prom, f"kubegraft_trainer_progress_ratio{{{selector}}}") * steps
        assert round(done_steps) == summary["step"]
        assert last(prom, f"kubegraft_trainer_steps_total{{{selector}}}") == summary["step"]
        assert last(prom, f"kubegraft_trainer_loss{{{selector}}}") == pytest.approx(
            summary["train_loss"], rel=1e-6
        )
        accuracy = last(prom, f'kubegraft_trainer_eval_accuracy{{{selector}, set="validation"}}')
        assert accuracy == pytest.approx(summary["accuracy"], abs=1e-9)
        eval_loss = last(prom, f'kubegraft_trainer_eval_loss{{{selector}, set="validation"}}')
        assert eval_loss == pytest.approx(summary["loss"], rel=1e-6)

        # ---- the chart's rules evaluate without errors on these series
        groups = prom.api("rules")["groups"]
        evaluated = {r["name"]: r for g in groups for r in g["rules"]}
        assert set(evaluated) == {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"]
                                  for r in g["rules"]}  # fmt: skip
        for name, r in evaluated.items():
            assert r["health"] == "ok", (name, r.get("lastError"))
        failed = [a for a in evaluated["KubegraftJobFailed"]["alerts"]
                  if a["labels"]["finetunejob"] == "flaky"]  # fmt: skip
        assert [a["state"] for a in failed] == ["pending"]  # `for: 5m` has not passed
        assert not evaluated["KubegraftOperatorDown"]["alerts"]

    # ---- the previews: each dashboard drawn from those answers
    out_dir = Path(os.environ.get("KUBEGRAFT_WRITE_PREVIEWS") or tmp_path / "previews")
    for name, (model, panels) in answers.items():
        png = preview.render(model, panels, out_dir / f"dashboard-{name}.png")
        assert png.stat().st_size > 10_000
