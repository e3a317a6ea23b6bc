"""The end-of-run report rank 0 writes next to ``metrics.json``: ``history.json``, the PNGs,
and the model card in the model directory.

The loop calls :func:`write_run_report` once, after ``metrics.json``; everything it writes is
derived from what the loop already kept (the history records, the final confusion matrices,
the summary). The pictures are a convenience: when matplotlib is missing or a figure cannot
be drawn the run still succeeds and the log says why; the history and the card never depend
on it.
"""

from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from kubegraft.api.v1alpha1 import API_VERSION, KIND, FineTuneJobSpec
from kubegraft.progress import write_atomically
from kubegraft_trainer.history import HISTORY_FILE, history_document
from kubegraft_trainer.model_card import MODEL_CARD, render_model_card

log = logging.getLogger(__name__)

CARD_PACKAGES = ("kubegraft", "torch", "transformers", "accelerate", "peft", "deepspeed")


def package_versions(names: tuple[str, ...] = CARD_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (those not installed are left out)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_run_report(
    output: Path,
    *,
    job: str,
    spec: FineTuneJobSpec,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    confusion: dict[str, list[list[int]]],
    parameter_table: str,
    model_dir: Path | None,
) -> dict[str, Any]:
    """Write the history, the pictures and (with a model directory) the model card; returns
    the history document."""
    history = history_document(
        job=job,
        records=records,
        global_step=int(summary["step"]),
        max_steps=int(summary["total_steps"]),
        epochs_done=int(summary["epochs_done"]),
        label_names=list(summary.get("label_names") or []),
        confusion=confusion,
        best_metric=summary.get("best_metric"),
        best_checkpoint=summary.get("best_checkpoint"),
        metric_for_best=str(summary.get("metric_for_best")),
    )
    write_atomically(output / HISTORY_FILE, json.dumps(history, indent=2, default=str) + "\n")
    if model_dir is not None and model_dir.is_dir():
        manifest = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": job},
            "spec": spec.to_wire(),
        }
        card = render_model_card(
            job=job,
            spec=spec,
            summary=summary,
            records=records,
            parameter_table=parameter_table,
            manifest=manifest,
            versions=package_versions(),
        )
        write_atomically(model_dir / MODEL_CARD, card)
    try:
        from kubegraft_trainer.report_plots import draw_report

        drawn = draw_report(history, output)
    except Exception as exc:  # the pictures must never fail a finished run
        log.warning("run report pictures not drawn: %s: %s", type(exc).__name__, exc)
    else:
        log.info("run report: %s", ", ".join(str(p) for p in drawn))
    return history
