"""The design card's folders ship under one namespace and resolve to their real files."""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("module", "folder"),
    [
        ("cohort", "core"),
        ("cohort.federation", "federation"),
        ("cohort.crypto", "crypto"),
        ("cohort.clients", "clients"),
        ("cohort.aggregator", "aggregator"),
        ("cohort.bounties", "bounties"),
    ],
)
def test_subpackages_resolve_to_the_repository_folders(module: str, folder: str) -> None:
    """What pytest imports is the file an editor opens (the strict editable link tree)."""
    imported = importlib.import_module(module)
    assert imported.__file__ is not None
    assert Path(imported.__file__).resolve() == REPO / folder / "__init__.py"


def test_the_distribution_installs_only_the_cohort_namespace() -> None:
    """No top-level ``crypto`` (it would clash with pycryptodome's ``Crypto`` on
    case-insensitive file systems), ``clients`` or ``aggregator``: only ``cohort``."""
    dist = importlib.metadata.distribution("cohort")
    top_level = (dist.read_text("top_level.txt") or "").split()
    assert top_level == ["cohort"]
