"""Training progress reports: how rank 0 tells the operator (and the local CLI) how far it got.

The trainer's rank 0 calls :func:`publish` every few steps. Where the report goes is chosen by
the environment the launcher set, so the trainer does not know whether it runs under the
operator or ``kubegraft run``:

- ``KUBEGRAFT_PROGRESS_FILE``: the report is written atomically to that file (JSON).
- ``KUBEGRAFT_PROGRESS_CONFIGMAP`` (``namespace/name``): the report is patched into that
  ConfigMap's ``data["progress.json"]`` with the pod's ServiceAccount token. The per-job Role
  lets that token get/patch only that one ConfigMap (``resourceNames``), so a compromised
  trainer can do nothing else; the operator watches the ConfigMap and folds it into status.

This module is in the light core: no torch, no kubernetes client (plain HTTPS with urllib).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ENV_PROGRESS_FILE = "KUBEGRAFT_PROGRESS_FILE"
ENV_PROGRESS_CONFIGMAP = "KUBEGRAFT_PROGRESS_CONFIGMAP"
CONFIGMAP_KEY = "progress.json"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ProgressReport(BaseModel):
    """One progress report from rank 0 (all fields optional except step)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: str = "training"
    """loading, training, evaluating, saving or done."""
    step: int = Field(default=0, ge=0)
    total_steps: int | None = None
    epoch: float | None = None
    samples_per_second: float | None = None
    eta_seconds: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    eval_sets: dict[str, dict[str, float]] | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    latest_checkpoint: str | None = None
    latest_checkpoint_step: int | None = None
    best_checkpoint: str | None = None
    best_metric: float | None = None
    time: str | None = None
    """When the report was made (RFC 3339, UTC)."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


def write_atomically(path: Path, text: str) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _patch_configmap(ref: str, body: str, api: str | None = None, token: str | None = None) -> None:
    namespace, name = ref.split("/", 1)
    host = api or "https://{}:{}".format(
        os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc"),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    token = token or (SA_DIR / "token").read_text().strip()
    ctx = ssl.create_default_context(
        cafile=os.environ.get("KUBEGRAFT_CA_FILE", str(SA_DIR / "ca.crt"))
    )
    patch = json.dumps({"data": {CONFIGMAP_KEY: body}}).encode()
    req = urllib.request.Request(
        f"{host}/api/v1/namespaces/{namespace}/configmaps/{name}",
        data=patch,
        method="PATCH",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/merge-patch+json",
        },
    )
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        resp.read()


def publish(report: ProgressReport) -> None:
    """Send a report to every sink the environment names; never raises (progress is advisory)."""
    body = report.to_json()
    if path := os.environ.get(ENV_PROGRESS_FILE):
        with contextlib.suppress(OSError):
            write_atomically(Path(path), body)
    if ref := os.environ.get(ENV_PROGRESS_CONFIGMAP):
        # A failed report must never stop training: the next one carries the same facts.
        with contextlib.suppress(Exception):
            _patch_configmap(
                ref,
                body,
                api=os.environ.get("KUBEGRAFT_API_SERVER"),
                token=os.environ.get("KUBEGRAFT_API_TOKEN"),
            )
