"""The checked-in CRD is exactly what the API model generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubegraft.crd import CRD_FILE, REGENERATE_COMMAND, generate_crd, render_yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_crd_matches_the_model() -> None:
    checked_in = (ROOT / CRD_FILE).read_text(encoding="utf-8")
    assert checked_in == render_yaml(generate_crd()), (
        f"{CRD_FILE} is out of date with kubegraft/api/v1alpha1.py; regenerate it with "
        f"`{REGENERATE_COMMAND}`"
    )
