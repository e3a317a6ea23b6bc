"""``kubegraft validate JOB.yaml``: check a FineTuneJob manifest locally, field by field.

Runs the same pydantic model (bounds, enums, unknown fields, and the Python twins of the CRD's
CEL rules) that ``kubegraft run`` and the trainer use, and prints every problem as
``spec.freeze.topK: <problem>``, the way the API server names fields. Exit code 0 when every
FineTuneJob in the file is valid, 78 (``ExitCode.CONFIG_ERROR``) otherwise. Rules that need the
old object (immutability) are only checked by the API server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kubegraft.exitcodes import ExitCode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare this command's arguments."""
    parser.add_argument(
        "manifests", nargs="+", type=Path, metavar="JOB.yaml", help="manifest(s) to check"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the errors")


def check_document(doc: Any) -> list[str]:
    """The problems of one parsed YAML document (empty when it is a valid FineTuneJob)."""
    from pydantic import ValidationError

    from kubegraft.api.errors import describe
    from kubegraft.api.v1alpha1 import FineTuneJob

    if not isinstance(doc, dict):
        return ["<root>: a FineTuneJob manifest must be a mapping"]
    try:
        FineTuneJob.model_validate(doc)
    except ValidationError as exc:
        return describe(exc)
    return []


def check_file(path: Path) -> list[str]:
    """The problems of every document in ``path``, each prefixed with its location."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: {exc}"]
    if not docs:
        return [f"{path}: no YAML document"]
    problems: list[str] = []
    for index, doc in enumerate(docs):
        where = f"{path}" if len(docs) == 1 else f"{path}[{index}]"
        problems.extend(f"{where}: {line}" for line in check_document(doc))
    return problems


def main(args: argparse.Namespace) -> int:
    """Validate each manifest; print every problem; 78 if there was any."""
    failed = False
    for path in args.manifests:
        problems = check_file(path)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            failed = True
        elif not args.quiet:
            print(f"{path}: valid")
    return int(ExitCode.CONFIG_ERROR) if failed else int(ExitCode.SUCCESS)
