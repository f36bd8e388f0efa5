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


def test_the_flower_app_bundle_carries_the_code_and_not_the_tests_benchmarks_or_docs() -> None:
    """What ``flwr run .`` ships (each message's ClientApp receives the whole FAB from its
    SuperNode): every module of the app's packages and the README, nothing else."""
    import io
    import subprocess
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(REPO)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "--", *(f"{d}/*.py" for d in APP_FOLDERS)],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert tracked
    assert set(tracked) <= names
    assert {"README.md", "pyproject.toml", "bounties/artifacts/CohortStudy.json"} <= names
    assert not [n for n in names if n.split("/")[0] in ("tests", "bench", "docs", "deploy")]
    assert len(fab) < 2_000_000  # 3 MB with the tests, benchmarks and docs


APP_FOLDERS = ("aggregator", "bounties", "clients", "core", "crypto", "federation")
