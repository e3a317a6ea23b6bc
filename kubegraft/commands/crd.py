"""``kubegraft crd [--out FILE]``: print or write the CRD generated from the API model.

The checked-in ``manifests/crd/kubegraft.io_finetunejobs.yaml`` is this command's output; a unit
test fails when the model changes and the file is not regenerated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare this command's arguments."""
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the CRD to FILE instead of standard output",
    )


def main(args: argparse.Namespace) -> int:
    """Render the CRD as YAML to ``--out`` or standard output."""
    from kubegraft.crd import generate_crd, render_yaml

    text = render_yaml(generate_crd())
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)
    return 0
