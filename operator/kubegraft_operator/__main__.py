"""``python -m kubegraft_operator [kopf run options]``: run the operator with kopf.

Equivalent to ``kopf run -m kubegraft_operator.main [options]``; without options it watches
all namespaces (``-A``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Hand over to kopf's CLI with our module pre-selected."""
    import kopf.cli

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(
        a in ("-A", "--all-namespaces") or a.startswith(("-n", "--namespace")) for a in args
    ):
        args.append("--all-namespaces")
    kopf.cli.main(
        args=["run", "-m", "kubegraft_operator.main", *args], prog_name="kubegraft-operator"
    )


if __name__ == "__main__":
    main()
