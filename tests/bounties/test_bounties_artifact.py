"""The committed CohortStudy artifact is exactly what the pinned compiler makes of the source."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cohort.bounties.study import ERROR_KINDS, load_artifact

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "bounties/contracts/CohortStudy.sol"
ARTIFACT = ROOT / "bounties/artifacts/CohortStudy.json"
COMPILER = ROOT / "bounties/compile.mjs"
SOLC_VERSION = "0.8.28"


def _node_with_solc() -> str:
    """Path of `node`, failing with the fix when the toolchain is not installed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node 20, then run `npm ci`")
    package = ROOT / "node_modules/solc/package.json"
    if not package.is_file():
        pytest.fail("node_modules/solc is missing: run `npm ci` in the repository root")
    installed = json.loads(package.read_text())["version"]
    if installed != SOLC_VERSION:
        pytest.fail(f"node_modules has solc {installed}, not {SOLC_VERSION}: run `npm ci`")
    return node


def test_artifact_records_source_hash_and_settings() -> None:
    artifact = json.loads(ARTIFACT.read_text())
    assert artifact["sourceSha256"] == hashlib.sha256(SOURCE.read_bytes()).hexdigest(), (
        "CohortStudy.sol changed without recompiling: run `node bounties/compile.mjs`"
    )
    assert artifact["sourcePath"] == "bounties/contracts/CohortStudy.sol"
    assert artifact["compiler"]["version"].startswith(f"{SOLC_VERSION}+commit.")
    assert artifact["settings"]["evmVersion"] == "cancun"
    assert artifact["settings"]["optimizer"] == {"enabled": True, "runs": 200}
    for field in ("bytecode", "deployedBytecode"):
        code = artifact[field]
        assert re.fullmatch(r"0x(?:[0-9a-f]{2})+", code), field
        # solc's CBOR metadata trailer: {"ipfs": <34 bytes>, "solc": 0.8.28}, 0x0033 long.
        assert code.endswith("64736f6c634300081c0033"), field
        assert "a264697066735822" in code[-110:], field
    assert ARTIFACT.read_text().endswith("}\n")


def test_packaged_artifact_is_the_committed_one() -> None:
    assert dict(load_artifact()) == json.loads(ARTIFACT.read_text())


def test_compile_check_reproduces_committed_artifact() -> None:
    node = _node_with_solc()
    done = subprocess.run(
        [node, str(COMPILER), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (
        "bounties/artifacts/CohortStudy.json is stale: run `npm ci && node bounties/compile.mjs`"
        f"\n{done.stdout}{done.stderr}"
    )


def test_compile_check_detects_a_stale_artifact(tmp_path: Path) -> None:
    node = _node_with_solc()
    (tmp_path / "bounties").mkdir()
    shutil.copy(COMPILER, tmp_path / "bounties/compile.mjs")
    shutil.copytree(SOURCE.parent, tmp_path / "bounties/contracts")
    shutil.copytree(ARTIFACT.parent, tmp_path / "bounties/artifacts")
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules")
    stale = tmp_path / "bounties/artifacts/CohortStudy.json"
    stale.write_text(stale.read_text().replace('"runs": 200', '"runs": 201', 1))
    done = subprocess.run(
        [node, "bounties/compile.mjs", "--check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1
    assert "differs from a fresh compile" in done.stderr


def test_package_json_pins_the_toolchain() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    dev = package["devDependencies"]
    assert dev["solc"] == SOLC_VERSION
    anvil = dev["@foundry-rs/anvil"]
    assert anvil[0].isdigit(), f"@foundry-rs/anvil must be pinned exactly, not {anvil!r}"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/solc"]["version"] == SOLC_VERSION
    assert lock["packages"]["node_modules/@foundry-rs/anvil"]["version"] == anvil


def test_every_custom_error_has_a_cohort_error_kind() -> None:
    declared = {e["name"] for e in load_artifact()["abi"] if e["type"] == "error"}
    assert declared == set(ERROR_KINDS)
