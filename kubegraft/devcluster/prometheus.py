"""A real Prometheus server for tests and local checks: scrapes given targets, answers PromQL.

The binary is Debian's prometheus package, which ``hack/build-binaries.sh`` unpacks next to
the control plane's binaries (CONTROL-PLANE.md). Tests use it to prove that what the operator
and the trainer export is scrapeable by Prometheus itself, not only parseable by a client
library: the text format, the metric names and types, and the values a query sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from kubegraft.devcluster.binaries import ENV_BIN_DIR, find_bin_dir
from kubegraft.devcluster.cluster import free_port


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or answered a query with an error."""


def find_prometheus() -> Path:
    """``prometheus`` from the binaries directory (``$KUBEGRAFT_BIN_DIR`` or a build), else
    from PATH."""
    try:
        candidate = find_bin_dir() / "prometheus"
        if candidate.exists():
            return candidate
    except RuntimeError:
        pass
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusError(f"no prometheus: run hack/build-binaries.sh or set {ENV_BIN_DIR}")
    return Path(found)


def scrape_config(
    targets: dict[str, list[str]], interval_s: float, rule_files: Sequence[Path] = ()
) -> dict[str, Any]:
    """The prometheus.yml for static ``targets`` (job name -> ["host:port", ...]), evaluating
    the rule files (``groups:`` documents) at the scrape interval."""
    every = f"{max(1, round(interval_s * 1000))}ms"
    config: dict[str, Any] = {
        "global": {"scrape_interval": every, "evaluation_interval": every},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    return config


class Prometheus:
    """``prometheus`` in a subprocess with its own data dir and a free port; a context manager.

    >>> with Prometheus({"kubegraft-operator": ["127.0.0.1:9300"]}, work_dir) as prom:
    ...     prom.wait_for_targets_up()
    ...     prom.query('kubegraft_operator_jobs{state="Running"}')
    """

    def __init__(
        self,
        targets: dict[str, list[str]],
        work_dir: Path,
        *,
        interval_s: float = 1.0,
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.targets = targets
        self.rule_files = tuple(rule_files)
        self.work_dir = work_dir
        self.interval_s = interval_s
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(scrape_config(self.targets, self.interval_s, self.rule_files))
        )
        argv = [
            str(find_prometheus()),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.work_dir / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._wait(self._ready, 60, "Prometheus /-/ready")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def logs(self) -> str:
        path = self.work_dir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ API
    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant PromQL query: (labels, value) per series."""
        data = self.api("query", query=expr)
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def targets_health(self) -> dict[str, str]:
        """scrape URL -> "up" / "down" / "unknown" for every active target."""
        data = self.api("targets", state="active")
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}

    def wait_for_targets_up(self, timeout: float = 60) -> None:
        """Wait until every target has been scraped successfully."""

        def all_up() -> bool:
            health = self.targets_health()
            want = sum(len(h) for h in self.targets.values())
            return len(health) == want and all(h == "up" for h in health.values())

        self._wait(all_up, timeout, "every target up")

    def wait_for(self, expr: str, timeout: float = 60) -> list[tuple[dict[str, str], float]]:
        """Wait until ``expr`` returns at least one series (e.g. ``metric > 0``); its result."""
        result: list[tuple[dict[str, str], float]] = []

        def some() -> bool:
            nonlocal result
            result = self.query(expr)
            return bool(result)

        self._wait(some, timeout, f"PromQL {expr!r} to return a series")
        return result

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``predicate`` (a wait on a condition) until true; fail with the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.logs()[-3000:]}")
            if predicate():
                return
            time.sleep(0.25)
        raise PrometheusError(f"timed out waiting for {what}:\n{self.logs()[-3000:]}")
