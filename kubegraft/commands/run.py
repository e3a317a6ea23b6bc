"""`kubegraft run` (placeholder until its owner fills it in)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare this command's arguments."""


def main(args: argparse.Namespace) -> int:
    raise SystemExit("kubegraft run: not implemented yet")
