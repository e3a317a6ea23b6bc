"""The ``kubegraft`` command line: a thin dispatcher over ``kubegraft.commands.*``.

Each sub-command lives in its own module, imported only when it runs, so ``kubegraft --help``
and ``kubegraft crd`` start fast and never import torch or kopf.

    kubegraft run JOB.yaml [--nproc N] [--set key=value ...]   run a FineTuneJob locally
    kubegraft compare JOB.yaml --policies feature-extraction,top-k:2,lora,full
                                                               short trials: which policy?
    kubegraft validate JOB.yaml                                check a manifest, field by field
    kubegraft crd [--out FILE]                                 print/write the generated CRD
    kubegraft dev cluster up|down|env|status                   the local control plane for tests
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# sub-command name -> module under kubegraft.commands with add_arguments(parser) and main(args)
COMMANDS: dict[str, str] = {
    "run": "Run a FineTuneJob manifest locally (CPU or local GPUs), with a progress bar.",
    "compare": "Compare freezing policies on a manifest: short trials, table, plot, verdict.",
    "validate": "Validate a FineTuneJob manifest and report every bad field.",
    "crd": "Print or write the CustomResourceDefinition generated from the API model.",
    "dev": "Developer tools: the local Kubernetes control plane (etcd, apiserver, kwok...).",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubegraft", description="Fine-tune pretrained models on Kubernetes or locally."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"kubegraft.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args._module.main(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
