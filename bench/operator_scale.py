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
import calendar
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
PODS_PER_FAKE_NODE = 1000
"""Fewer, larger fake nodes than a real cluster's 110 pods each: kwok renews every node's
lease and status, and with 281 nodes of 110 (a 1000-job run with every row's pods resident)
it fell behind at load 5-9 and the node-lifecycle controller evicted live gangs (NodeLost);
the benchmark measures the controllers, not kwok's heartbeats."""
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
    controller: str = "operator"
    """The row: operator, floor, kubeflow (the peer's defaults) or kubeflow-tuned."""
    load_average: float = math.nan
    """The machine's 1-minute load average at the end of the round."""

    @property
    def complete(self) -> bool:
        """Every job got its pods and (operator rounds) reached Running."""
        return self.all_pods.n == self.jobs and (self.floor or self.jobs_running == self.jobs)

    top_requests: list[tuple[str, float]] = field(default_factory=list)
    latency_ms: list[tuple[str, float]] = field(default_factory=list)
    steady: SteadyResult | None = None
    """The steady phase after the burst (``--steady``), when there was one."""
    quiet: QuietResult | None = None
    """The quiet window after the burst (``--quiet``), when there was one."""
    restarted: int = 0
    """Jobs of the burst whose gang was restarted (more pods seen than one gang has: a fake
    node lost under load, say); non-zero means the round did more than the burst's work."""
    pod_watch_lag: Dist = field(default_factory=lambda: Dist.of([]))
    """When the benchmark's own pod watch saw each pod, less the pod's creationTimestamp
    (server clock, whole seconds: each value is up to 1 s too large). Every pod milestone is
    stamped by that watch, so a lag here is in every pod figure above, for every controller."""


@dataclass
class QuietResult:
    """The burst's jobs resident (Running) with nothing arriving: what keeping them costs."""

    seconds: float
    resident: int
    cpu_ms_per_second: float
    """The controller's CPU over the window, in ms per second (10 = 1 % of a core)."""
    reconciles_per_second: float
    own_requests_per_second: float
    requests_per_second: float
    """All clients' requests (kwok's heartbeats, the controllers' leases): how quiet it was."""


@dataclass
class SteadyResult:
    """Jobs arriving at a steady rate while the burst's jobs stay resident (Running)."""

    rate: float
    """Jobs per second asked for."""
    achieved_rate: float
    """Jobs per second the sender achieved (creates sent over the phase's wall time)."""
    jobs: int
    resident: int
    all_pods: Dist
    running: Dist
    cpu_ms_per_job: float
    own_requests_per_job: float
    peak_rss_mb: float = math.nan
    """The controller's peak resident set at the end of the phase: burst and steady jobs
    resident together."""
    restarted: int = 0
    """Steady jobs whose gang was restarted (more pods seen than one gang has)."""


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
@dataclass(frozen=True)
class JobKind:
    """What a controller's jobs are: their API, the pod label naming the job, and when a job
    counts as having a status and as Running."""

    group: str
    version: str
    plural: str
    pod_job_label: str
    has_status: Callable[[dict[str, Any]], bool]
    is_running: Callable[[dict[str, Any]], bool]


def _condition_true(job: dict[str, Any], type_: str) -> bool:
    conds = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conds)


FINETUNEJOB = JobKind(
    GROUP,
    VERSION,
    PLURAL,
    "kubegraft.io/job-name",
    lambda j: bool((j.get("status") or {}).get("state")),
    lambda j: (j.get("status") or {}).get("state") == "Running",
)
PYTORCHJOB = JobKind(
    "kubeflow.org",
    "v1",
    "pytorchjobs",
    "training.kubeflow.org/job-name",
    lambda j: bool((j.get("status") or {}).get("conditions")),
    lambda j: _condition_true(j, "Running"),  # the peer's Running: the master pod runs
)


def _epoch(rfc3339: str) -> float:
    """``2026-12-03T19:10:00Z`` as seconds since the epoch."""
    return float(calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ")))


class Recorder:
    """Watches a namespace's pods and jobs and stamps when each milestone was seen."""

    def __init__(
        self, api: client.ApiClient, namespaces: list[str], kind: JobKind = FINETUNEJOB
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespaces = set(namespaces)
        """One: namespaced watches; several (shards): cluster-wide ones, filtered to them."""
        self.kind = kind
        self.pod_seen: dict[str, float] = {}
        self.pod_running: dict[str, float] = {}
        self.pod_lag: list[float] = []
        self.pods_of: dict[str, set[str]] = defaultdict(set)
        self.job_first_status: dict[str, float] = {}
        self.job_running: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads: list[threading.Thread] = []
        self.watches: list[watch.Watch] = []

    def start(self) -> None:
        k = self.kind
        if len(self.namespaces) == 1:
            (ns,) = self.namespaces
            list_pods: Callable[..., Any] = self.core.list_namespaced_pod
            list_jobs: Callable[..., Any] = self.custom.list_namespaced_custom_object
            pod_args: tuple[Any, ...] = (ns,)
            job_args: tuple[Any, ...] = (k.group, k.version, ns, k.plural)
        else:
            list_pods = self.core.list_pod_for_all_namespaces
            list_jobs = self.custom.list_cluster_custom_object
            pod_args, job_args = (), (k.group, k.version, k.plural)
        pod_list = list_pods(*pod_args, limit=1)
        pods_rv = pod_list.metadata.resource_version if pod_list.metadata else None
        jobs_rv = list_jobs(*job_args, limit=1)["metadata"]["resourceVersion"]
        pods = (list_pods, pod_args, self._on_pod, pods_rv)
        ftjs = (list_jobs, job_args, self._on_job, jobs_rv)
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
                    ours = obj.get("metadata", {}).get("namespace") in self.namespaces
                    if ours and event["type"] in ("ADDED", "MODIFIED"):
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
        name, job = meta["name"], (meta.get("labels") or {}).get(self.kind.pod_job_label)
        if not job:
            return
        with self.lock:
            if name not in self.pod_seen and (born := meta.get("creationTimestamp")):
                self.pod_lag.append(time.time() - _epoch(born))
            self.pod_seen.setdefault(name, now)
            self.pods_of[job].add(name)
            if (pod.get("status") or {}).get("phase") == "Running":
                self.pod_running.setdefault(name, now)

    def _on_job(self, type_: str, job: dict[str, Any]) -> None:
        now = time.monotonic()
        name = job["metadata"]["name"]
        has_status, running = self.kind.has_status(job), self.kind.is_running(job)
        with self.lock:
            if has_status:
                self.job_first_status.setdefault(name, now)
            if running:
                self.job_running.setdefault(name, now)

    def _first_gang(self, job: str) -> list[str]:
        """The job's first NODES_PER_JOB pods by the time they were seen: its first gang. A
        gang restarted later (a node lost under load) must not move the job's milestones."""
        pods = sorted(self.pods_of.get(job, set()), key=self.pod_seen.__getitem__)
        return pods[:NODES_PER_JOB]

    def restarted(self, jobs: list[str]) -> int:
        """How many of ``jobs`` had more pods than one gang: their gang was restarted."""
        with self.lock:
            return sum(1 for j in jobs if len(self.pods_of.get(j, ())) > NODES_PER_JOB)

    def all_pods_at(self, job: str) -> float | None:
        with self.lock:
            pods = self._first_gang(job)
            if len(pods) < NODES_PER_JOB:
                return None
            return max(self.pod_seen[p] for p in pods)

    def first_pod_at(self, job: str) -> float | None:
        with self.lock:
            pods = self.pods_of.get(job, set())
            return min((self.pod_seen[p] for p in pods), default=None)

    def pods_running_at(self, job: str) -> float | None:
        with self.lock:
            pods = self._first_gang(job)
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


# ----------------------------------------------------------------------------- controllers
@dataclass(frozen=True)
class Controller:
    """One row kind of the table: who turns the burst of jobs into pods."""

    name: str
    kind: str
    """``kubegraft`` (the operator), ``floor`` (bench/floor_controller.py) or ``kubeflow``
    (Kubeflow's training-operator, PyTorchJobs)."""
    threads: int | None = None
    qps: float | None = None
    burst: int | None = None
    shards: int = 1
    """Operator processes, each watching a namespace of its own with half the jobs."""

    @property
    def job_kind(self) -> JobKind:
        return PYTORCHJOB if self.kind == "kubeflow" else FINETUNEJOB

    @property
    def waits_for_running(self) -> bool:
        return self.kind != "floor"


OPERATOR = Controller("operator", "kubegraft")
OPERATOR_2_SHARDS = Controller("operator-2shards", "kubegraft", shards=2)
"""Two operator processes, one per namespace (a namespace set each), the burst split evenly."""
FLOOR = Controller("floor", "floor")
KUBEFLOW_DEFAULTS = Controller("kubeflow", "kubeflow", threads=1)
"""The peer as users get it: one reconcile thread, controller-runtime's client QPS 20 / 30."""
KUBEFLOW_TUNED = Controller("kubeflow-tuned", "kubeflow", threads=8, qps=500, burst=1000)
"""The peer with threads and client QPS raised (a main of our own: v1.8.1 has no QPS flag)."""

WORK = {
    "operator": "FineTuneJob: 4 pods, one headless Service, one config ConfigMap, status"
    " writes (pod counters coalesced), Events, no finalizer; Running = all 4 pods Running",
    "operator-2shards": "the same, by two operator processes: each watches one of two"
    " namespaces and gets half the burst; CPU and RSS are the two processes' sums",
    "floor": "the same 4 pods only (no Service, status or Events); no Running",
    "kubeflow": "PyTorchJob 1 master + 3 workers: 4 pods (workers with an init container),"
    " one Service per pod, status and Events; Running = the master pod runs",
}
WORK["kubeflow-tuned"] = WORK["kubeflow"]

PEER_NAMESPACE = "kubeflow-bench"
PEER_SERVICE_ACCOUNT = "training-operator"
PEER_IMAGE = "kubegraft/trainer:bench"


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


def pytorchjob_manifest(name: str) -> dict[str, Any]:
    """The same gang as a PyTorchJob: 1 master + 3 workers, the same kwok outcome label."""

    def replicas(n: int) -> dict[str, Any]:
        container = {"name": "pytorch", "image": PEER_IMAGE, "command": ["python", "-m", "x"]}
        return {
            "replicas": n,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": {OUTCOME_LABEL: "run"}},
                "spec": {"containers": [container]},
            },
        }

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": replicas(1),
                "Worker": replicas(NODES_PER_JOB - 1),
            }
        },
    }


def submit_jobs(
    kubeconfig: str, namespace: str, names: list[str], workers: int, kind: str = "kubegraft"
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
    jk = PYTORCHJOB if kind == "kubeflow" else FINETUNEJOB
    manifest = pytorchjob_manifest if kind == "kubeflow" else job_manifest

    def create(name: str) -> None:
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            jk.group, jk.version, namespace, jk.plural, manifest(name)
        )

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, names))
    api.close()  # type: ignore[no-untyped-call]
    return created


def submit_paced(
    kubeconfig: str, namespace: str, names: list[str], rate: float, kind: str = "kubegraft"
) -> dict[str, float]:
    """Create the jobs at ``rate`` per second: job i is sent at t0 + i / rate (8 threads, so a
    slow create does not hold the next one back); when each create request was sent."""
    from kubernetes import config

    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    api.configuration.connection_pool_maxsize = 12
    api = client.ApiClient(api.configuration)
    custom = client.CustomObjectsApi(api)
    jk = PYTORCHJOB if kind == "kubeflow" else FINETUNEJOB
    manifest = pytorchjob_manifest if kind == "kubeflow" else job_manifest
    created: dict[str, float] = {}
    t0 = time.monotonic() + 0.5

    def create(i_name: tuple[int, str]) -> None:
        i, name = i_name
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the pacing itself, not a wait for a condition
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(
            jk.group, jk.version, namespace, jk.plural, manifest(name)
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, enumerate(names)))
    api.close()  # type: ignore[no-untyped-call]
    return created


def wait_until(what: str, ready: Callable[[], bool], timeout: float, step: float = 0.25) -> None:
    """Wait for a condition (checked every ``step`` seconds), or fail saying what."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(step)


def wait_quiet(proc: psutil.Process, timeout: float = 60.0) -> None:
    """Wait until a freshly started controller is done starting: its CPU time grows by less
    than 20 ms over half a second (its lists, caches and imports are behind it)."""
    last = [cpu_seconds(proc)]

    def quiet() -> bool:
        now = cpu_seconds(proc)
        done = now - last[0] < 0.02
        last[0] = now
        return done

    with contextlib.suppress(TimeoutError):
        wait_until("controller start-up", quiet, timeout, step=0.5)


def settled_counts(server: str, ctx: ssl.SSLContext, timeout: float = 30.0) -> ApiCounts:
    """The API server's counters once the controller's own requests stopped moving (one
    second without a new one): its last status writes land in the figures."""
    last = [ApiCounts.read(server, ctx)]

    def settled() -> bool:
        now = ApiCounts.read(server, ctx)
        done = now.operator == last[0].operator
        last[0] = now
        return done

    with contextlib.suppress(TimeoutError):
        wait_until("API counters settled", settled, timeout, step=1.0)
    return last[0]


def peer_dir() -> Path:
    """Build (cached) Kubeflow's training-operator: hack/build-training-operator.sh."""
    out = subprocess.run(
        [str(ROOT / "hack" / "build-training-operator.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def install_peer(cluster: devcluster.Cluster, work_dir: Path) -> tuple[Path, Path]:
    """The peer's binary, CRD and RBAC (its own manifests from the module), and a kubeconfig
    for its ServiceAccount (so API Priority and Fairness counts its requests as the
    operator's are counted)."""
    built = peer_dir()
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(built / "kubeflow.org_pytorchjobs.yaml"),
    )
    established = '{.status.conditions[?(@.type=="Established")].status}'
    wait_until(
        "the PyTorchJob CRD Established",
        lambda: (
            cluster.kubectl(
                "get",
                "crd",
                "pytorchjobs.kubeflow.org",
                "-o",
                f"jsonpath={established}",
                check=False,
            ).stdout.strip()
            == "True"
        ),
        60,
    )
    cluster.kubectl("create", "namespace", PEER_NAMESPACE, check=False)
    cluster.kubectl(
        "create", "serviceaccount", PEER_SERVICE_ACCOUNT, "-n", PEER_NAMESPACE, check=False
    )
    cluster.kubectl("apply", "-f", str(built / "rbac" / "role.yaml"))
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        "training-operator-bench",
        "--clusterrole=training-operator",
        f"--serviceaccount={PEER_NAMESPACE}:{PEER_SERVICE_ACCOUNT}",
        check=False,
    )
    token = cluster.kubectl(
        "create", "token", PEER_SERVICE_ACCOUNT, "-n", PEER_NAMESPACE, "--duration=3h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "peer", "user": {"token": token}}],
        "contexts": [{"name": "peer", "context": {"cluster": "c", "user": "peer"}}],
        "current-context": "peer",
    }
    path = work_dir / "peer.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return built / "training-operator", path


class PeerProcess:
    """Kubeflow's training-operator (our main of v1.8.1) watching one namespace."""

    def __init__(
        self, binary: Path, kubeconfig: Path, namespace: str, c: Controller, log_path: Path
    ) -> None:
        argv = [str(binary), f"--namespace={namespace}", f"--controller-threads={c.threads or 1}"]
        if c.qps:
            argv.append(f"--kube-api-qps={c.qps:g}")
        if c.burst:
            argv.append(f"--kube-api-burst={c.burst}")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=subprocess.DEVNULL,
            stderr=log_path.open("w"),
        )

    def wait_started(self, timeout: float = 120.0) -> None:
        """Its PyTorchJob controller logs "Starting workers" once its caches synced."""

        def started() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"training-operator exited: {self.log_path.read_text()[-2000:]}")
            return "Starting workers" in self.log_path.read_text(errors="replace")

        wait_until("training-operator start", started, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def has_steady(controller: Controller) -> bool:
    """Whether ``--steady`` applies to the controller's rounds: the operator's (one process)
    and the floor's; not the peer's, whose default row alone would take many minutes."""
    return controller.shards == 1 and controller.kind in ("kubegraft", "floor")


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
    controller: Controller = OPERATOR,
    peer: tuple[Path, Path] | None = None,
    clean_up: bool = False,
    steady: tuple[float, float] | None = None,
    quiet: float = 0.0,
) -> RoundResult:
    """One burst of ``n`` jobs for one controller; with ``quiet`` seconds, then a window with
    the burst's jobs resident and nothing arriving (what their upkeep costs); with ``steady``
    (rate, seconds), then jobs at that rate for that long while the burst's jobs stay
    resident."""
    ns = f"bench-{n}-{secrets.token_hex(2)}"
    spaces = [ns] if controller.shards == 1 else [f"{ns}-{i}" for i in range(controller.shards)]
    for space in spaces:
        cluster.kubectl("create", "namespace", space)
    server, ctx = _ssl_context(cluster.kubeconfig)
    api_tmp = cluster.api_client()
    cfg = api_tmp.configuration
    cfg.connection_pool_maxsize = max(workers, 8) + 4
    api = client.ApiClient(cfg)
    ops: list[OperatorProcess] = []
    floor_proc: subprocess.Popen[str] | None = None
    peer_proc: PeerProcess | None = None
    floor = controller.kind == "floor"
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
    elif controller.kind == "kubeflow":
        assert peer is not None
        peer_proc = PeerProcess(
            peer[0], peer[1], ns, controller, work_dir / f"{controller.name}-{n}.log"
        )
        peer_proc.wait_started()
        proc = psutil.Process(peer_proc.proc.pid)
    else:
        for i, space in enumerate(spaces):
            shard = "" if len(spaces) == 1 else f"-shard{i}"
            ops.append(
                OperatorProcess(
                    op_kubeconfig,
                    work_dir / f"operator-{n}{shard}.log",
                    namespace=space,
                    env=operator_env,
                )
            )
            ops[-1].start().wait_healthy(120)
        proc = psutil.Process(ops[0].proc.pid)  # type: ignore[union-attr]
    procs = [proc] + [psutil.Process(o.proc.pid) for o in ops[1:]]  # type: ignore[union-attr]
    rec = Recorder(api, spaces, controller.job_kind)
    rec.start()  # its watches start at the LIST's resourceVersion: nothing after it is missed
    spy = (
        Profiler(proc.pid, profile_dir / f"{controller.name}-{n}.txt")
        if profile_dir and ops
        else None
    )

    def cpu_now() -> float:
        return sum(cpu_seconds(p) for p in procs)

    def peak_rss_now() -> float:
        return sum(peak_rss_mb(p.pid) for p in procs)

    senders = contextlib.ExitStack()
    try:
        for p in procs:
            wait_quiet(p)  # its start-up is not measured
        rss_idle = sum(rss_mb(p.pid) for p in procs)
        before = ApiCounts.read(server, ctx)
        cpu0 = cpu_now()
        names = [f"job-{i:05d}" for i in range(n)]
        # The creates come from another process: in this one, 16 threads of TLS and JSON held
        # the GIL so long that the watches stamped milestones seconds late. (spawn, not fork:
        # this process has watch threads running.)
        sender = senders.enter_context(
            ProcessPoolExecutor(len(spaces), mp_context=multiprocessing.get_context("spawn"))
        )
        for warm in [sender.submit(time.monotonic) for _ in spaces]:
            warm.result()  # started and warm before the clock runs
        t0 = time.monotonic()
        shares = [  # shards: each namespace gets every k-th job, all sent at once
            sender.submit(
                submit_jobs,
                str(cluster.kubeconfig),
                space,
                names[i :: len(spaces)],
                max(1, workers // len(spaces)),
                controller.kind,
            )
            for i, space in enumerate(spaces)
        ]
        created = {k: v for share in shares for k, v in share.result().items()}
        submit = time.monotonic() - t0
        log(f"{n} jobs: created in {submit:.1f}s; waiting for " + ("pods" if floor else "Running"))

        def done(of: list[str]) -> int:
            if not controller.waits_for_running:
                return sum(1 for j in of if rec.all_pods_at(j) is not None)
            return sum(1 for j in of if j in rec.job_running)

        def wait_done(of: list[str], deadline: float) -> None:
            last_note = 0.0
            while done(of) < len(of) and time.monotonic() < deadline:
                time.sleep(0.25)
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    pods, up = len(rec.pod_seen), len(rec.job_running)
                    log(f"  {pods} pods, {up} Running; {done(of)}/{len(of)} of this phase done")

        wait_done(names, time.monotonic() + timeout)
        after = settled_counts(server, ctx)  # its last status writes land in the counters
        cpu = cpu_now() - cpu0
        reconciles = reconcile_sum = math.nan
        if ops:
            reconciles = sum(
                o.metric("kubegraft_operator_reconcile_duration_seconds_count") for o in ops
            )
            reconcile_sum = sum(
                o.metric("kubegraft_operator_reconcile_duration_seconds_sum") for o in ops
            )
        burst_running = done(names) if controller.waits_for_running else 0
        rss = peak_rss_now()  # the burst's peak, before any steady jobs
        mark = after  # the counters where the next phase starts
        quiet_result: QuietResult | None = None
        if quiet > 0 and done(names) == n:
            log(f"quiet: {n} jobs resident, nothing arriving, for {quiet:g}s")
            cpu_q, t_q = cpu_now(), time.monotonic()
            # A window of fixed length is the measurement itself (a resync period of the
            # resident jobs), not a stand-in for waiting on a condition.
            time.sleep(quiet)
            elapsed = time.monotonic() - t_q
            cpu_q = cpu_now() - cpu_q
            passes = (
                sum(o.metric("kubegraft_operator_reconcile_duration_seconds_count") for o in ops)
                if ops
                else math.nan
            )
            mark = settled_counts(server, ctx)
            quiet_result = QuietResult(
                seconds=elapsed,
                resident=n,
                cpu_ms_per_second=1000 * cpu_q / elapsed,
                reconciles_per_second=(passes - reconciles) / elapsed,
                own_requests_per_second=mark.minus(after).operator / elapsed,
                requests_per_second=mark.minus(after).total / elapsed,
            )
        steady_result: SteadyResult | None = None
        if steady is not None and has_steady(controller) and done(names) == n:
            rate, seconds = steady
            more = [f"steady-{i:05d}" for i in range(round(rate * seconds))]
            log(f"steady: {len(more)} jobs at {rate:g}/s with {n} resident")
            cpu1 = cpu_now()
            t1 = time.monotonic()
            created.update(
                sender.submit(
                    submit_paced, str(cluster.kubeconfig), ns, more, rate, controller.kind
                ).result()
            )
            sent_for = time.monotonic() - t1
            wait_done(more, time.monotonic() + timeout)
            after_steady = settled_counts(server, ctx)
            steady_result = SteadyResult(
                rate=rate,
                achieved_rate=len(more) / sent_for,
                jobs=len(more),
                resident=n,
                all_pods=Dist.of([t - created[j] for j in more if (t := rec.all_pods_at(j))]),
                running=Dist.of(
                    [t - created[j] for j in more if (t := rec.job_running.get(j)) is not None]
                ),
                cpu_ms_per_job=1000 * (cpu_now() - cpu1) / len(more),
                own_requests_per_job=after_steady.minus(mark).operator / len(more),
                peak_rss_mb=peak_rss_now(),
                restarted=rec.restarted(more),
            )

        if spy is not None:
            spy.stop()
            log(f"py-spy profile of the operator ({spy.out}):\n{spy.summary()}")
        diff = after.minus(before)
        if clean_up:
            # Someone else's cluster: delete the round's jobs while their controller still
            # runs (a peer's finalizers are released, nothing stays Terminating into the next
            # round); then the namespaces.
            jk = controller.job_kind
            for space in spaces:
                cluster.kubectl(
                    "delete",
                    f"{jk.plural}.{jk.group}",
                    "--all",
                    "-n",
                    space,
                    "--timeout=600s",
                    check=False,
                )
    finally:
        senders.close()
        if spy is not None:
            spy.stop()
        rec.close()
        for o in ops:
            o.stop()
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait(30)
        if peer_proc is not None:
            peer_proc.stop()
        api.close()  # type: ignore[no-untyped-call]
        api_tmp.close()  # type: ignore[no-untyped-call]
        if clean_up:
            for space in spaces:
                cluster.kubectl("delete", "namespace", space, "--wait=false", check=False)
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
        pod_watch_lag=Dist.of(rec.pod_lag),
        jobs_running=burst_running,
        operator_cpu_seconds=cpu,
        operator_peak_rss_mb=rss,
        operator_idle_rss_mb=rss_idle,
        api_requests_per_job=diff.total / n,
        operator_requests_per_job=diff.operator / n,
        reconciles_per_job=reconciles / n,
        reconcile_mean_ms=1000 * reconcile_sum / reconciles if reconciles else math.nan,
        floor=floor,
        controller=controller.name,
        load_average=os.getloadavg()[0],
        top_requests=[(k, v / n) for k, v in diff.by_kind.most_common(12)],
        latency_ms=[
            (k, diff.mean_ms(k))
            for k, _ in diff.by_kind.most_common(12)
            if not k.startswith("WATCH") and not math.isnan(diff.mean_ms(k))
        ],
        steady=steady_result,
        quiet=quiet_result,
        restarted=rec.restarted(names),
    )


def steady_report(results: list[RoundResult]) -> str:
    """The steady phases: create -> all pods and -> Running while the burst stays resident."""
    lines = []
    for r in results:
        if (st := r.steady) is None:
            continue
        lines.append(
            f"  {r.controller}: {st.jobs} jobs at {st.rate:g}/s (sent at {st.achieved_rate:.1f}/s)"
            f" with {st.resident} resident: pods p50 / p99 / max {st.all_pods.p50:.2f} /"
            f" {st.all_pods.p99:.2f} / {st.all_pods.max:.2f} s, Running p50 / p99"
            f" {st.running.p50:.2f} / {st.running.p99:.2f} s; CPU {st.cpu_ms_per_job:.1f} ms/job,"
            f" own requests {st.own_requests_per_job:.1f}/job; peak RSS {st.peak_rss_mb:.0f} MB;"
            f" gangs restarted {st.restarted}"
        )
    return "steady load:\n" + "\n".join(lines) if lines else ""


def quiet_report(results: list[RoundResult]) -> str:
    """The quiet windows: what the resident jobs cost while nothing happens to them."""
    lines = [
        f"  {r.controller}: {q.resident} jobs resident for {q.seconds:.0f} s: CPU"
        f" {q.cpu_ms_per_second:.1f} ms/s ({q.cpu_ms_per_second / 10:.1f} % of a core),"
        f" {q.reconciles_per_second:.1f} reconciles/s, own requests"
        f" {q.own_requests_per_second:.2f}/s (all clients {q.requests_per_second:.1f}/s)"
        for r in results
        if (q := r.quiet) is not None
    ]
    return "resident, nothing arriving:\n" + "\n".join(lines) if lines else ""


# ----------------------------------------------------------------------------- report
COLUMNS = (
    ("run", 14),
    ("jobs", 5),
    ("pods p50", 8),
    ("pods p99", 8),
    ("pods max", 8),
    ("Run p50", 8),
    ("Run p99", 8),
    ("Run max", 8),
    ("running", 7),
    ("CPU ms/job", 10),
    ("RSS MB", 6),
    ("idle RSS", 8),
    ("API req/job", 11),
    ("own req/job", 11),
    ("submit s", 8),
    ("load", 5),
)


def table(results: list[RoundResult]) -> str:
    """One row per round; "pods" = create -> all 4 pods created, "Run" = create -> status
    Running, in seconds; "own req/job" = the controller's own requests; "load" = the 1-min
    load average at the end of the round."""
    head = " | ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = (
            r.controller,
            f"{r.jobs}",
            f"{r.all_pods.p50:.2f}",
            f"{r.all_pods.p99:.2f}",
            f"{r.all_pods.max:.2f}",
            f"{r.running.p50:.2f}",
            f"{r.running.p99:.2f}",
            f"{r.running.max:.2f}",
            f"{r.jobs_running}",
            f"{1000 * r.operator_cpu_seconds / r.jobs:.1f}",
            f"{r.operator_peak_rss_mb:.0f}",
            f"{r.operator_idle_rss_mb:.0f}",
            f"{r.api_requests_per_job:.1f}",
            f"{r.operator_requests_per_job:.1f}",
            f"{r.submit_seconds:.1f}",
            f"{r.load_average:.1f}",
        )
        lines.append(" | ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    lines.append("")
    lines += [
        f"  {name}: {work}"
        for name, work in WORK.items()
        if any(r.controller == name for r in results)
    ]
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def ratios(results: list[RoundResult]) -> str:
    """The operator's figures over each baseline's of the same size (below 1: the operator
    is faster or cheaper)."""
    lines = []
    ours = {c.name for c in (OPERATOR, OPERATOR_2_SHARDS)}
    for r in results:
        if r.controller not in ours:
            continue
        for base in results:
            if base.jobs != r.jobs or base.controller in ours:
                continue
            cpu = (r.operator_cpu_seconds / r.jobs, base.operator_cpu_seconds / base.jobs)
            lines.append(
                f"  {r.jobs} jobs, {r.controller} / {base.controller}: pods p99"
                f" {_ratio(r.all_pods.p99, base.all_pods.p99)}, Running p99"
                f" {_ratio(r.running.p99, base.running.p99)}, CPU per job {_ratio(*cpu)},"
                f" own requests per job"
                f" {_ratio(r.operator_requests_per_job, base.operator_requests_per_job)}"
            )
    return "ratios:\n" + "\n".join(lines) if lines else ""


def where_the_time_goes(results: list[RoundResult]) -> str:
    """The create -> Running path split into its legs, and what the controller spent."""
    lines = []
    for r in results:
        legs = (
            ("create -> controller's first status write", r.pickup),
            ("create -> first pod created", r.first_pod),
            ("first -> 4th pod created (controller)", r.pods_span),
            ("4th pod -> all 4 Running (scheduler, kwok)", r.pods_running),
            ("all 4 Running -> status Running (controller)", r.status_lag),
        )
        who = r.controller
        lines.append(f"where the time goes at {r.jobs} jobs, {who} (p50 / p99 seconds per job):")
        if r.restarted:
            lines.append(f"  ({r.restarted} jobs had their gang restarted; their first counts)")
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
        lag = r.pod_watch_lag
        lines.append(
            f"  the benchmark's pod watch: seen - creationTimestamp p50 / p99 {lag.p50:.2f} /"
            f" {lag.p99:.2f} s (whole-second timestamps: up to 1 s too large)"
        )
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
            state,
            name="kubegraft-bench",
            nodes=nodes,
            pods_per_node=PODS_PER_FAKE_NODE,
            log=lambda m: log(f"  {m}"),
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
        "--peer",
        choices=["kubeflow", "kubeflow-tuned"],
        default=None,
        help="after each operator round, the same burst as PyTorchJobs for Kubeflow's"
        " training-operator v1.8.1: with its defaults and with threads/QPS raised"
        " (kubeflow-tuned: the raised row only)",
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
    parser.add_argument(
        "--shards",
        action="store_true",
        help="after each operator round, the same burst for two operator processes, one per"
        " namespace (the row operator-2shards)",
    )
    parser.add_argument(
        "--steady",
        default=None,
        metavar="RATE,SECONDS",
        help="after the operator's and the floor's bursts, RATE jobs/s for SECONDS more while"
        " the burst stays resident",
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after each burst (before --steady), a window of SECONDS with the burst resident"
        " and nothing arriving: the controller's CPU, reconciles and requests for its upkeep",
    )
    args = parser.parse_args(argv)
    sizes = [10] if args.quick else [int(x) for x in args.jobs.split(",") if x.strip()]
    steady: tuple[float, float] | None = None
    if args.steady:
        rate_s, seconds_s = args.steady.split(",")
        steady = (float(rate_s), float(seconds_s))
    steady_jobs = round(steady[0] * steady[1]) if steady else 0
    operator_env = dict(kv.split("=", 1) for kv in args.operator_env)
    controllers = [OPERATOR]
    if args.shards:
        controllers.append(OPERATOR_2_SHARDS)
    if args.floor:
        controllers.append(FLOOR)
    if args.peer == "kubeflow":
        controllers.append(KUBEFLOW_DEFAULTS)
    if args.peer:
        controllers.append(KUBEFLOW_TUNED)
    results: list[RoundResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="kubegraft-bench-work-") as work,
        control_plane(
            args,
            NODES_PER_JOB
            * sum(n + steady_jobs * has_steady(c) for n in sizes for c in controllers),
        ) as cluster,
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
        peer = install_peer(cluster, work_dir) if args.peer else None
        for n in sizes:
            for c in controllers:
                log(f"round: {n} jobs x {NODES_PER_JOB} nodes, {c.name}")
                r = run_round(
                    cluster,
                    op_kubeconfig,
                    n,
                    workers=args.workers,
                    timeout=args.timeout,
                    work_dir=work_dir,
                    operator_env=operator_env,
                    profile_dir=Path(args.profile) if args.profile else None,
                    controller=c,
                    peer=peer,
                    clean_up=bool(args.cluster),  # someone else's cluster: leave it as it was
                    steady=steady,
                    quiet=args.quiet,
                )
                results.append(r)
                print(table([r]), flush=True)
                if not r.complete:
                    log(
                        f"round incomplete ({r.jobs_running}/{n} Running, {r.all_pods.n} with pods)"
                    )
                    if c.kind == "kubegraft":
                        log(
                            "operator log tail:\n"
                            + (work_dir / f"operator-{n}.log").read_text(errors="replace")[-3000:]
                        )
    print()
    print(table(results))
    print()
    print(ratios(results))
    print()
    print(where_the_time_goes(results))
    print()
    print(quiet_report(results))
    print(steady_report(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2, default=str))
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
