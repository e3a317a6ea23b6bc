"""How the operator scales: create N FineTuneJobs of 4 nodes each on the kwok control plane and
measure how fast their pods appear and their status says Running. Not a test; prints a table.

    python bench/operator_scale.py                      # 100, 500 and 1000 jobs
    python bench/operator_scale.py --jobs 100,500       # some sizes only
    python bench/operator_scale.py --quick              # 10 jobs (tests/e2e/test_bench_smoke.py)

Setup: a fresh local control plane (:func:`kubegraft.devcluster.cluster.up`) in a temp state dir
with enough fake nodes for every pod of every round (kwok nodes are cheap; 110 pods each, as a
kubelet allows), or an existing one (``--cluster STATE_DIR``). The jobs ask for no GPUs
(``gpusPerNode: 0``) so that capacity is counted in pods, and carry the test label that makes
kwok keep their pods Running. Each round runs in its own namespace with a fresh operator
subprocess watching only that namespace (``python -m kubegraft_operator``, authenticated as its
ServiceAccount, so manifests/rbac/ applies); jobs are created from a thread pool as fast as the
API server takes them.

Measured per round:

- per job, from just before its create request: all 4 pods created (pod watch) and
  ``status.state == Running`` (FineTuneJob watch), p50/p99/max; the decomposition behind them
  (operator pick-up = first status write, first pod, last pod, pods Running per kwok, status);
- the operator's CPU seconds during the round and its peak RSS (VmHWM);
- API requests per job: ``apiserver_request_total`` from the API server's /metrics, before and
  after, over all clients (operator, scheduler, kwok, controller-manager, this script), and the
  operator's own share from API Priority and Fairness: its requests are the only ones matched
  by the ``service-accounts`` FlowSchema (the controllers' ServiceAccounts live in kube-system
  and match ``kube-system-service-accounts``; kwok and this script are system:masters);
- the operator's reconcile count and mean duration (its own /metrics).

Targets (issue 4): p99 < 1 s from create to all pods at 1000 jobs, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "operator", ROOT / "tests"):  # tests/: operator_harness
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from kubernetes import client, watch  # noqa: E402
from operator_harness import OperatorProcess, operator_kubeconfig  # noqa: E402

from kubegraft.devcluster import cluster as devcluster  # noqa: E402
from kubegraft.devcluster.manifests import OUTCOME_LABEL  # noqa: E402

NODES_PER_JOB = 4
PODS_PER_FAKE_NODE = 110
OPERATOR_FLOW_SCHEMA = "service-accounts"
GROUP, VERSION, PLURAL = "kubegraft.io", "v1alpha1", "finetunejobs"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Dist:
    p50: float
    p99: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Dist:
        return cls(
            percentile(values, 50),
            percentile(values, 99),
            max(values, default=math.nan),
            len(values),
        )

    def fmt(self) -> str:
        return f"{self.p50:6.2f} {self.p99:6.2f} {self.max:6.2f}"


@dataclass
class RoundResult:
    jobs: int
    namespace: str
    submit_seconds: float
    all_pods: Dist
    running: Dist
    pickup: Dist
    first_pod: Dist
    pods_span: Dist
    pods_running: Dist
    status_lag: Dist
    jobs_running: int
    operator_cpu_seconds: float
    operator_peak_rss_mb: float
    operator_idle_rss_mb: float
    """VmRSS after start-up, before the first job (imports, watches, caches of nodes)."""
    api_requests_per_job: float
    operator_requests_per_job: float
    reconciles_per_job: float
    reconcile_mean_ms: float
    floor: bool = False
    """A round of the floor controller (pods only), not of the operator."""

    @property
    def complete(self) -> bool:
        """Every job got its pods and (operator rounds) reached Running."""
        return self.all_pods.n == self.jobs and (self.floor or self.jobs_running == self.jobs)

    top_requests: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: list[tuple[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- metrics
def _ssl_context(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    doc = yaml.safe_load(kubeconfig.read_text())
    c = doc["clusters"][0]["cluster"]
    u = doc["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=c["certificate-authority"])
    ctx.load_cert_chain(u["client-certificate"], u["client-key"])
    return c["server"], ctx


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(
    url: str, context: ssl.SSLContext | None = None
) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) samples."""
    with urllib.request.urlopen(url, context=context, timeout=30) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m["name"], dict(_LABEL.findall(m["labels"] or "")), float(m["value"])))
    return out


@dataclass
class ApiCounts:
    """Cumulative API server counters: requests and their summed latency by verb + resource,
    and the operator's requests (its APF FlowSchema)."""

    by_kind: Counter[str]
    seconds_by_kind: dict[str, float]
    total: float
    operator: float

    @classmethod
    def read(cls, server: str, context: ssl.SSLContext) -> ApiCounts:
        by_kind: Counter[str] = Counter()
        seconds: dict[str, float] = defaultdict(float)
        operator = 0.0
        for name, labels, value in scrape(f"{server}/metrics", context):
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            kind = f"{labels.get('verb', '?')} {labels.get('resource', '')}{sub}"
            if name == "apiserver_request_total":
                by_kind[kind] += int(value)
            elif name == "apiserver_request_duration_seconds_sum":
                seconds[kind] += value
            elif (
                name == "apiserver_flowcontrol_dispatched_requests_total"
                and labels.get("flow_schema") == OPERATOR_FLOW_SCHEMA
            ):
                operator += value
        return cls(by_kind, seconds, sum(by_kind.values()), operator)

    def minus(self, before: ApiCounts) -> ApiCounts:
        diff = Counter({k: v - before.by_kind.get(k, 0) for k, v in self.by_kind.items()})
        secs = {k: v - before.seconds_by_kind.get(k, 0.0) for k, v in self.seconds_by_kind.items()}
        return ApiCounts(+diff, secs, self.total - before.total, self.operator - before.operator)

    def mean_ms(self, kind: str) -> float:
        """Mean server-side latency of one kind of request (WATCH excluded: long-running)."""
        n = self.by_kind.get(kind, 0)
        return 1000 * self.seconds_by_kind.get(kind, 0.0) / n if n else math.nan


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return math.nan


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int) -> float:
    """VmRSS: the process's resident set size now."""
    return _status_mb(pid, "VmRSS")


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


# ----------------------------------------------------------------------------- watching
class Recorder:
    """Watches a namespace's pods and FineTuneJobs and stamps when each milestone was seen."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.pod_seen: dict[str, float] = {}
        self.pod_running: dict[str, float] = {}
        self.pods_of: dict[str, set[str]] = defaultdict(set)
        self.job_first_status: dict[str, float] = {}
        self.job_running: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.watches: list[watch.Watch] = []

    def start(self) -> None:
        pod_list = self.core.list_namespaced_pod(self.namespace, limit=1)
        pods_rv = pod_list.metadata.resource_version if pod_list.metadata else None
        jobs: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, limit=1
        )
        jobs_rv = jobs["metadata"]["resourceVersion"]
        pods = (self.core.list_namespaced_pod, (self.namespace,), self._on_pod, pods_rv)
        ftjs = (
            self.custom.list_namespaced_custom_object,
            (GROUP, VERSION, self.namespace, PLURAL),
            self._on_job,
            jobs_rv,
        )
        for func, args, handler, rv in (pods, ftjs):
            t = threading.Thread(target=self._loop, args=(func, args, handler, rv), daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for w in self.watches:
            w.stop()  # type: ignore[no-untyped-call]

    def _loop(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        handler: Callable[[str, dict[str, Any]], None],
        rv: str | None,
    ) -> None:
        while not self.stop.is_set():
            w = watch.Watch()  # type: ignore[no-untyped-call]
            self.watches.append(w)
            try:
                for event in w.stream(  # type: ignore[no-untyped-call]
                    func,
                    *args,
                    resource_version=rv,
                    timeout_seconds=60,
                    allow_watch_bookmarks=True,
                    deserialize=False,
                ):
                    obj = event["object"]
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        handler(event["type"], obj)
                    if self.stop.is_set():
                        return
            except Exception as e:
                if self.stop.is_set():
                    return
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.5)

    def _on_pod(self, type_: str, pod: dict[str, Any]) -> None:
        now = time.monotonic()
        meta = pod["metadata"]
        name, job = meta["name"], (meta.get("labels") or {}).get("kubegraft.io/job-name")
        if not job:
            return
        with self.lock:
            self.pod_seen.setdefault(name, now)
            self.pods_of[job].add(name)
            if (pod.get("status") or {}).get("phase") == "Running":
                self.pod_running.setdefault(name, now)

    def _on_job(self, type_: str, job: dict[str, Any]) -> None:
        now = time.monotonic()
        name = job["metadata"]["name"]
        state = (job.get("status") or {}).get("state")
        with self.lock:
            if state:
                self.job_first_status.setdefault(name, now)
            if state == "Running":
                self.job_running.setdefault(name, now)

    def all_pods_at(self, job: str) -> float | None:
        with self.lock:
            pods = self.pods_of.get(job, set())
            if len(pods) < NODES_PER_JOB:
                return None
            return max(self.pod_seen[p] for p in pods)

    def first_pod_at(self, job: str) -> float | None:
        with self.lock:
            pods = self.pods_of.get(job, set())
            return min((self.pod_seen[p] for p in pods), default=None)

    def pods_running_at(self, job: str) -> float | None:
        with self.lock:
            pods = self.pods_of.get(job, set())
            if len(pods) < NODES_PER_JOB or any(p not in self.pod_running for p in pods):
                return None
            return max(self.pod_running[p] for p in pods)


# ----------------------------------------------------------------------------- profiling
class Profiler:
    """``py-spy record`` on the operator for the round (``--profile DIR``; py-spy must be
    installed). Sampling sees every thread, which cProfile (main thread only) would not. Only
    samples of the thread holding the GIL are kept (``--gil``): the question is where the
    operator's CPU goes, and a thread blocked in a socket read holds no GIL."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        argv = [exe, "record", "--pid", str(pid), "--rate", "100", "--threads", "--nonblocking"]
        argv += ["--gil"]
        argv += ["--format", "raw", "--output", str(out)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)

    def summary(self, top: int = 25) -> str:
        """Inclusive share of samples per function, over non-idle samples of all threads."""
        inclusive: Counter[str] = Counter()
        total = 0
        if not self.out.exists():
            return "(no profile written)"
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if _idle(frames[-1]):
                continue
            total += int(count)
            for frame in set(frames[1:]):  # frames[0] is the thread
                inclusive[frame] += int(count)
        return "\n".join(
            f"  {100 * c / max(total, 1):5.1f}%  {f[:150]}" for f, c in inclusive.most_common(top)
        )


def _idle(frame: str) -> bool:
    """Leaf frames where a thread waits rather than works."""
    return any(
        w in frame for w in ("select (", "poll (", "wait (", "_wait_for_tstate_lock", "sleep")
    )


# ----------------------------------------------------------------------------- one round
def job_manifest(name: str) -> dict[str, Any]:
    """A 4-node job whose pods kwok keeps Running; no GPUs, so capacity is counted in pods."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"checkpoint": "/models/base", "task": "sequence-classification"},
            "dataset": {"train": {"uri": "/data/train.jsonl"}, "validationSplit": 0.1},
            "training": {"maxSteps": 1000},
            "distributed": {"nodes": NODES_PER_JOB, "procsPerNode": 1, "gpusPerNode": 0},
            "output": {"ephemeral": True},  # kwok's pods write nothing
            "pod": {"labels": {OUTCOME_LABEL: "run"}},
            "runPolicy": {"startupTimeoutSeconds": 3600, "stallTimeoutSeconds": 36000},
        },
    }


def submit_jobs(
    kubeconfig: str, namespace: str, names: list[str], workers: int
) -> dict[str, float]:
    """Create the jobs from ``workers`` threads; when each create request was sent
    (``time.monotonic()``, the system-wide CLOCK_MONOTONIC on Linux, so the parent process's
    watch stamps compare with it)."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    api.configuration.connection_pool_maxsize = max(workers, 8) + 4
    api = client.ApiClient(api.configuration)
    custom = client.CustomObjectsApi(api)
    created: dict[str, float] = {}

    def create(name: str) -> None:
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, job_manifest(name)
        )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    api.close()  # type: ignore[no-untyped-call]
    return created


def run_round(
    cluster: devcluster.Cluster,
    op_kubeconfig: Path,
    n: int,
    *,
    workers: int,
    timeout: float,
    work_dir: Path,
    operator_env: dict[str, str],
    profile_dir: Path | None = None,
    floor: bool = False,
) -> RoundResult:
    ns = f"bench-{n}-{secrets.token_hex(2)}"
    cluster.kubectl("create", "namespace", ns)
    server, ctx = _ssl_context(cluster.kubeconfig)
    api_tmp = cluster.api_client()
    cfg = api_tmp.configuration
    cfg.connection_pool_maxsize = max(workers, 8) + 4
    api = client.ApiClient(cfg)
    op: OperatorProcess | None = None
    floor_proc: subprocess.Popen[str] | None = None
    if floor:
        # The floor: only the pods, from a bare controller with the operator's credentials
        # (same RBAC and API Priority and Fairness flow as the operator).
        floor_proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "floor_controller.py"), "--namespace", ns],
            env={**os.environ, "KUBECONFIG": str(op_kubeconfig)},
            stdout=subprocess.PIPE,
            stderr=(work_dir / f"floor-{n}.log").open("w"),
            text=True,
        )
        assert floor_proc.stdout is not None
        floor_proc.stdout.readline()  # "floor controller watching NS": its watch is open
        proc = psutil.Process(floor_proc.pid)
    else:
        op = OperatorProcess(
            op_kubeconfig, work_dir / f"operator-{n}.log", namespace=ns, env=operator_env
        )
        op.start().wait_healthy(120)
        proc = psutil.Process(op.proc.pid)  # type: ignore[union-attr]
    rec = Recorder(api, ns)
    rec.start()
    spy = Profiler(proc.pid, profile_dir / f"operator-{n}.txt") if profile_dir else None
    try:
        time.sleep(1.0)  # let the operator's watches settle (its start-up is not measured)
        rss_idle = rss_mb(proc.pid)
        before = ApiCounts.read(server, ctx)
        cpu0 = cpu_seconds(proc)
        names = [f"job-{i:05d}" for i in range(n)]
        # The creates come from another process: in this one, 16 threads of TLS and JSON held
        # the GIL so long that the watches stamped milestones seconds late. (spawn, not fork:
        # this process has watch threads running.)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as sender:
            sender.submit(time.monotonic).result()  # started and warm before the clock runs
            t0 = time.monotonic()
            created = sender.submit(
                submit_jobs, str(cluster.kubeconfig), ns, names, workers
            ).result()
        submit = time.monotonic() - t0
        log(f"{n} jobs: created in {submit:.1f}s; waiting for " + ("pods" if floor else "Running"))
        deadline = time.monotonic() + timeout
        last_note = 0.0

        def finished() -> int:
            if floor:
                return sum(1 for j in names if rec.all_pods_at(j) is not None)
            return len(rec.job_running)

        while finished() < n and time.monotonic() < deadline:
            time.sleep(0.25)
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                pods, up = len(rec.pod_seen), len(rec.job_running)
                log(f"  {pods}/{n * NODES_PER_JOB} pods, {up}/{n} Running")
        time.sleep(1.0)  # let the last status writes land in the counters
        cpu = cpu_seconds(proc) - cpu0
        if spy is not None:
            spy.stop()
            log(f"py-spy profile of the operator ({spy.out}):\n{spy.summary()}")
        rss = peak_rss_mb(proc.pid)
        diff = ApiCounts.read(server, ctx).minus(before)
        reconciles = reconcile_sum = math.nan
        if op is not None:
            reconciles = op.metric("kubegraft_operator_reconcile_duration_seconds_count")
            reconcile_sum = op.metric("kubegraft_operator_reconcile_duration_seconds_sum")
    finally:
        if spy is not None:
            spy.stop()
        rec.close()
        if op is not None:
            op.stop()
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait(30)
        api.close()  # type: ignore[no-untyped-call]
        api_tmp.close()  # type: ignore[no-untyped-call]
    if rec.errors:
        log(f"watch errors: {rec.errors[:3]}")

    def since(at: Callable[[str], float | None]) -> list[float]:
        return [t - created[j] for j in names if (t := at(j)) is not None]

    def between(a: Callable[[str], float | None], b: Callable[[str], float | None]) -> list[float]:
        return [tb - ta for j in names if (ta := a(j)) is not None and (tb := b(j)) is not None]

    first_status = rec.job_first_status.get
    running = rec.job_running.get
    return RoundResult(
        jobs=n,
        namespace=ns,
        submit_seconds=submit,
        all_pods=Dist.of(since(rec.all_pods_at)),
        running=Dist.of(since(running)),
        pickup=Dist.of(since(first_status)),
        first_pod=Dist.of(since(rec.first_pod_at)),
        pods_span=Dist.of(between(rec.first_pod_at, rec.all_pods_at)),
        pods_running=Dist.of(between(rec.all_pods_at, rec.pods_running_at)),
        status_lag=Dist.of(between(rec.pods_running_at, running)),
        jobs_running=len(rec.job_running),
        operator_cpu_seconds=cpu,
        operator_peak_rss_mb=rss,
        operator_idle_rss_mb=rss_idle,
        api_requests_per_job=diff.total / n,
        operator_requests_per_job=diff.operator / n,
        reconciles_per_job=reconciles / n,
        reconcile_mean_ms=1000 * reconcile_sum / reconciles if reconciles else math.nan,
        floor=floor,
        top_requests=[(k, v / n) for k, v in diff.by_kind.most_common(12)],
        latency_ms=[
            (k, diff.mean_ms(k))
            for k, _ in diff.by_kind.most_common(12)
            if not k.startswith("WATCH") and not math.isnan(diff.mean_ms(k))
        ],
    )


# ----------------------------------------------------------------------------- report
COLUMNS = (
    ("run", 8),
    ("jobs", 5),
    ("pods p50", 8),
    ("pods p99", 8),
    ("pods max", 8),
    ("Run p50", 8),
    ("Run p99", 8),
    ("Run max", 8),
    ("running", 7),
    ("op CPU s", 8),
    ("op RSS MB", 9),
    ("idle RSS", 8),
    ("API req/job", 11),
    ("op req/job", 10),
    ("submit s", 8),
)


def table(results: list[RoundResult]) -> str:
    """One row per round; "pods" = create -> all 4 pods created, "Run" = create -> status
    Running, in seconds."""
    head = " | ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = (
            "floor" if r.floor else "operator",
            f"{r.jobs}",
            f"{r.all_pods.p50:.2f}",
            f"{r.all_pods.p99:.2f}",
            f"{r.all_pods.max:.2f}",
            f"{r.running.p50:.2f}",
            f"{r.running.p99:.2f}",
            f"{r.running.max:.2f}",
            f"{r.jobs_running}",
            f"{r.operator_cpu_seconds:.1f}",
            f"{r.operator_peak_rss_mb:.0f}",
            f"{r.operator_idle_rss_mb:.0f}",
            f"{r.api_requests_per_job:.1f}",
            f"{r.operator_requests_per_job:.1f}",
            f"{r.submit_seconds:.1f}",
        )
        lines.append(" | ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return "\n".join(lines)


def where_the_time_goes(results: list[RoundResult]) -> str:
    """The create -> Running path split into its legs, and what the operator spent."""
    lines = []
    for r in results:
        legs = (
            ("create -> operator's first status write", r.pickup),
            ("create -> first pod created", r.first_pod),
            ("first -> 4th pod created (operator)", r.pods_span),
            ("4th pod -> all 4 Running (scheduler, kwok)", r.pods_running),
            ("all 4 Running -> status Running (operator)", r.status_lag),
        )
        who = "floor controller" if r.floor else "operator"
        lines.append(f"where the time goes at {r.jobs} jobs, {who} (p50 / p99 seconds per job):")
        lines += [f"  {label:<44} {d.p50:6.2f} / {d.p99:6.2f}" for label, d in legs]
        cpu_ms = r.operator_cpu_seconds / r.jobs * 1000
        lines.append(
            f"  {who}: {cpu_ms:.0f} ms CPU per job;"
            f" {r.reconciles_per_job:.1f} reconciles per job,"
            f" {r.reconcile_mean_ms:.0f} ms each on average"
        )
        top = ", ".join(f"{k} {v:.1f}" for k, v in r.top_requests)
        lines.append(f"  API requests per job, all clients: {top}")
        lat = ", ".join(f"{k} {v:.0f}" for k, v in r.latency_ms)
        lines.append(f"  API server mean latency, ms: {lat}")
    return "\n".join(lines)


@contextlib.contextmanager
def control_plane(args: argparse.Namespace, total_pods: int) -> Iterator[devcluster.Cluster]:
    """An existing cluster (--cluster), or a fresh one in a temp dir with enough nodes."""
    if args.cluster:
        found = devcluster.load(Path(args.cluster).resolve())
        if found is None:
            raise SystemExit(f"--cluster {args.cluster}: no cluster recorded there")
        yield found
        return
    nodes = max(4, math.ceil(total_pods * 1.1 / PODS_PER_FAKE_NODE))
    with tempfile.TemporaryDirectory(prefix="kubegraft-bench-") as tmp:
        state = Path(tmp) / "cluster"
        log(f"starting a control plane with {nodes} fake nodes in {state}")
        started = devcluster.up(
            state, name="kubegraft-bench", nodes=nodes, log=lambda m: log(f"  {m}")
        )
        try:
            yield started
        finally:
            devcluster.down(state, log=lambda m: None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", default="100,500,1000", help="comma-separated round sizes (default: %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one round of 10 jobs (the smoke test)"
    )
    parser.add_argument(
        "--cluster", default=None, help="use the running cluster recorded in this state dir"
    )
    parser.add_argument(
        "--workers", type=int, default=16, help="threads creating jobs (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds to wait per round (default: %(default)s)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="record the operator with py-spy (raw stacks in DIR) and print the top frames",
    )
    parser.add_argument(
        "--logs", default=None, metavar="DIR", help="keep the operator's logs in DIR"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="after each operator round, the same jobs for bench/floor_controller.py (pods only)",
    )
    parser.add_argument(
        "--reconcile-threads",
        type=int,
        default=None,
        metavar="N",
        help="the operator's reconcile thread pool (KUBEGRAFT_OPERATOR_RECONCILE_THREADS)",
    )
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the operator (settings experiments)",
    )
    args = parser.parse_args(argv)
    sizes = [10] if args.quick else [int(x) for x in args.jobs.split(",") if x.strip()]
    operator_env = dict(kv.split("=", 1) for kv in args.operator_env)
    results: list[RoundResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="kubegraft-bench-work-") as work,
        control_plane(args, sum(sizes) * NODES_PER_JOB * (2 if args.floor else 1)) as cluster,
    ):
        work_dir = Path(args.logs or work)
        work_dir.mkdir(parents=True, exist_ok=True)
        if args.reconcile_threads:
            operator_env["KUBEGRAFT_OPERATOR_RECONCILE_THREADS"] = str(args.reconcile_threads)
        for path in sorted((ROOT / "manifests" / "crd").glob("*.yaml")):
            cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubegraft.io"
        )
        op_kubeconfig = operator_kubeconfig(
            cluster.kubectl, cluster.kubeconfig, work_dir / "operator.kubeconfig"
        )
        for n in sizes:
            for floor in (False, True) if args.floor else (False,):
                who = "the floor controller (pods only)" if floor else "the operator"
                log(f"round: {n} jobs x {NODES_PER_JOB} nodes, {who}")
                r = run_round(
                    cluster,
                    op_kubeconfig,
                    n,
                    workers=args.workers,
                    timeout=args.timeout,
                    work_dir=work_dir,
                    operator_env=operator_env,
                    profile_dir=Path(args.profile) if args.profile else None,
                    floor=floor,
                )
                results.append(r)
                if args.cluster:  # someone else's cluster: leave it as it was
                    cluster.kubectl("delete", "namespace", r.namespace, "--wait=false", check=False)
                print(table([r]), flush=True)
                if not r.complete:
                    log(
                        f"round incomplete ({r.jobs_running}/{n} Running, {r.all_pods.n} with pods)"
                    )
                    if not floor:
                        log(
                            "operator log tail:\n"
                            + (work_dir / f"operator-{n}.log").read_text(errors="replace")[-3000:]
                        )
    print()
    print(table(results))
    print()
    print(where_the_time_goes(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
