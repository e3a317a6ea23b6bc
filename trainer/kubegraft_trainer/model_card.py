"""The model card: ``<output>/model/README.md``, written by rank 0 with the exported model.

A fine-tuned model without its provenance is a file nobody can trust: which checkpoint it
started from, which data, what was frozen, how well it does. The card follows the ones
Hugging Face's Trainer and axolotl write: YAML front matter the Hub reads (``base_model``,
``tags``, ``metrics``, ``model-index`` with one result per evaluation set), then the base
checkpoint, the data, the freezing policy with the parameter table, the hyperparameters, the
results per evaluation and the manifest that produced the model, embedded whole, so that the
run can be repeated from the card alone. Pure: everything it shows comes in as arguments.
"""

from __future__ import annotations

from typing import Any

import yaml

from kubegraft.api.v1alpha1 import FineTuneJobSpec, Task
from kubegraft_trainer.history import evaluation_records, training_records
from kubegraft_trainer.uris import HF_SCHEME, is_hub_uri

MODEL_CARD = "README.md"
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")
# The Hub's pipeline names for the tasks (model-index ``task.type``).
HUB_TASK = {
    Task.SEQUENCE_CLASSIFICATION: "text-classification",
    Task.IMAGE_CLASSIFICATION: "image-classification",
    Task.CAUSAL_LM: "text-generation",
}


def _metric_names(task: Task) -> list[str]:
    return ["loss", "perplexity"] if task == Task.CAUSAL_LM else ["loss", *CLASSIFICATION_METRICS]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def front_matter(
    *, job: str, spec: FineTuneJobSpec, results: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The card's YAML header (the Hub's model-card metadata)."""
    task = spec.model.task
    checkpoint = spec.model.checkpoint
    names = _metric_names(task)
    meta: dict[str, Any] = {"library_name": "kubegraft"}
    if is_hub_uri(checkpoint):
        meta["base_model"] = checkpoint.removeprefix(HF_SCHEME)
    meta["tags"] = ["kubegraft", "generated_from_trainer", HUB_TASK[task], spec.freeze.preset.value]
    meta["pipeline_tag"] = HUB_TASK[task]
    meta["metrics"] = [m for m in names if m != "loss"] or ["loss"]
    meta["model-index"] = [
        {
            "name": job,
            "results": [
                {
                    "task": {"type": HUB_TASK[task], "name": HUB_TASK[task]},
                    "dataset": {"name": name, "type": _dataset_uri(spec, name)},
                    "metrics": [
                        {"type": m, "name": m, "value": float(metrics[m])}
                        for m in names
                        if isinstance(metrics.get(m), (int, float))
                    ],
                }
                for name, metrics in results.items()
            ],
        }
    ]
    return meta


def _dataset_uri(spec: FineTuneJobSpec, name: str) -> str:
    d = spec.dataset
    if name == "validation":
        return d.validation.uri if d.validation is not None else d.train.uri
    return next((e.uri for e in d.eval_sets or [] if e.name == name), d.train.uri)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_model_card(
    *,
    job: str,
    spec: FineTuneJobSpec,
    summary: dict[str, Any],
    records: list[dict[str, Any]],
    parameter_table: str,
    manifest: dict[str, Any],
    versions: dict[str, str],
) -> str:
    """The card's Markdown. ``summary`` is what ``metrics.json`` holds, ``records`` the
    history's, ``manifest`` the FineTuneJob as it ran, ``versions`` package -> version."""
    t, d, m = spec.training, spec.dataset, spec.model
    results: dict[str, dict[str, Any]] = summary.get("eval") or {}
    names = _metric_names(m.task)
    base = m.checkpoint
    base_link = (
        f"[{base.removeprefix(HF_SCHEME)}](https://huggingface.co/{base.removeprefix(HF_SCHEME)})"
        if is_hub_uri(base)
        else f"`{base}`"
    )
    trainable, total = summary.get("trainable_parameters"), summary.get("total_parameters")
    share = f"{100.0 * trainable / total:.2f} %" if trainable is not None and total else "-"
    lines = [
        "---",
        yaml.safe_dump(
            front_matter(job=job, spec=spec, results=results), sort_keys=False, allow_unicode=True
        ).rstrip(),
        "---",
        "",
        f"# {job}",
        "",
        f"This model is a fine-tuned version of {base_link}"
        + (f" (architecture `{m.architecture}`)" if m.architecture else "")
        + (f" at revision `{m.revision}`" if m.revision else "")
        + f" for {m.task.value}, trained with [kubegraft](https://github.com/kubegraft/kubegraft)"
        + f" on `{d.train.uri}`.",
    ]
    if results:
        main = results.get("validation") or next(iter(results.values()))
        lines += ["", "It achieves the following results on the evaluation set:"]
        lines += [f"- {k.capitalize()}: {_fmt(main[k])}" for k in names if k in main]
    lines += [
        "",
        "## Base checkpoint",
        "",
        f"- checkpoint: {base_link}",
        f"- format: {m.format.value if m.format else 'inferred'}",
    ]
    if m.architecture:
        lines.append(f"- architecture: `{m.architecture}`")
    if m.revision:
        lines.append(f"- revision: `{m.revision}`")
    lines += [
        "",
        "## Training and evaluation data",
        "",
        f"- train: `{d.train.uri}` ({summary.get('train_examples', '-')} examples used)",
    ]
    if d.validation is not None:
        lines.append(f"- validation: `{d.validation.uri}`")
    elif d.validation_split is not None:
        lines.append(f"- validation: {d.validation_split:.0%} of train, held out (seeded)")
    lines += [f"- evaluation set `{e.name}`: `{e.uri}`" for e in d.eval_sets or []]
    if summary.get("label_names"):
        labels = ", ".join(f"`{n}`" for n in summary["label_names"])
        lines.append(f"- labels ({summary.get('num_labels')}): {labels}")
    if summary.get("chance_accuracy") is not None:
        lines.append(
            f"- majority-class accuracy (the bar to beat): {summary['chance_accuracy']:.4f}"
        )
    lines += [
        "",
        "## Freezing policy",
        "",
        f"- preset: `{spec.freeze.preset.value}`"
        + (f" (top {spec.freeze.top_k} blocks)" if spec.freeze.top_k else ""),
        f"- trainable parameters: {_fmt(trainable)} of {_fmt(total)} ({share})",
        f"- frozen-feature cache: {'used' if summary.get('feature_cache') else 'not used'}",
        "",
        "```",
        parameter_table,
        "```",
        "",
        "## Training procedure",
        "",
        "### Training hyperparameters",
        "",
        f"- learning_rate: {t.learning_rate}",
        f"- per_device_batch_size: {t.per_device_batch_size}",
        f"- gradient_accumulation_steps: {t.gradient_accumulation_steps}",
        f"- processes: {summary.get('processes')}",
        "- total_train_batch_size: "
        + str(
            t.per_device_batch_size
            * t.gradient_accumulation_steps
            * int(summary.get("processes") or 1)
        ),
        f"- optimizer: AdamW (weight_decay {t.weight_decay})",
        f"- lr_scheduler_type: {t.scheduler.value}",
        f"- steps: {summary.get('step')} of {summary.get('total_steps')}"
        + (f" ({t.epochs} epochs)" if t.epochs else ""),
        f"- precision: {t.precision.value}",
        f"- strategy: {summary.get('strategy')}",
        f"- seed: {t.seed}",
        "",
        "### Training results",
        "",
    ]
    lines += _results_table(records, names)
    for name, metrics in results.items():
        lines += ["", f"### Final evaluation: {name}", ""]
        lines += _table(["metric", "value"], [[k, _fmt(metrics[k])] for k in names if k in metrics])
    lines += ["", "## Framework versions", ""]
    lines += [f"- {pkg} {version}" for pkg, version in versions.items()]
    lines += [
        "",
        "## Manifest",
        "",
        "The FineTuneJob that produced this model (`kubegraft run` or the operator):",
        "",
        "```yaml",
        yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _results_table(records: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Hugging Face's "Training results" table: one row per evaluation, with the training
    loss of the last logging step at or before it."""
    train = training_records(records)
    rows = []
    for r in evaluation_records(records):
        before = [x["loss"] for x in train if x["step"] <= r["step"]]
        rows.append(
            [
                _fmt(before[-1] if before else None),
                _fmt(r["epoch"]),
                str(r["step"]),
                r["set"],
                *(_fmt(r["metrics"].get(k)) for k in names),
            ]
        )
    if not rows:
        return ["No evaluation was recorded."]
    header = ["Training loss", "Epoch", "Step", "Set", *(f"Eval {k}" for k in names)]
    return _table(header, rows)
