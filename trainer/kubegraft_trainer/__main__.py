"""``python -m kubegraft_trainer --config job.yaml``: what torchrun starts in every process."""

from __future__ import annotations

import sys

from kubegraft_trainer.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
