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


def test_the_flower_app_bundle_carries_no_code() -> None:
    """What ``flwr run .`` ships (each message's ClientApp receives the whole FAB from its
    SuperNode): Flower's pyproject.toml and a note, no module (federation/FAB.md); every
    party imports the Cohort its operator installed."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(REPO)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert names == {"pyproject.toml", "federation/FAB.md", ".info/CONTENT"}
    assert len(fab) < 16_000  # 1.4 MB with the app's sources
    shipped = zipfile.ZipFile(io.BytesIO(fab)).read("pyproject.toml").decode()
    assert 'clientapp = "cohort.federation.client_app:app"' in shipped
