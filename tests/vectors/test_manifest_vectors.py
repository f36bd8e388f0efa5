"""Check the manifest reader against the checked-in vectors (passing and failing)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from vectorkit import load_generator

from cohort.errors import BadInputError, ConfigError, VerificationError
from cohort.federation.manifest import SignedManifest

HERE = Path(__file__).parent
VECTORS: dict[str, Any] = json.loads((HERE / "manifest_vectors.json").read_text())
ERRORS = {
    "BadInputError": BadInputError,
    "ConfigError": ConfigError,
    "VerificationError": VerificationError,
}


def _generator() -> ModuleType:
    return load_generator("gen_manifest_vectors")


def _raw(vector: dict[str, Any]) -> bytes:
    return json.dumps(vector["document"], indent=1, sort_keys=True).encode()


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    if vector["success"]:
        signed = SignedManifest.from_bytes(_raw(vector))
        assert signed.manifest.canonical().decode() == vector["canonical"]
        assert signed.study_id == vector["study_id"]
        assert signed.to_bytes() == _raw(vector) + b"\n"
        return
    with pytest.raises(ERRORS[vector["error"]]) as info:
        SignedManifest.from_bytes(_raw(vector))
    assert type(info.value).__name__ == vector["error"]
    assert vector["reason"] in str(info.value)


def test_vectors_cover_failures() -> None:
    names = {v["name"] for v in VECTORS["vectors"] if not v["success"]}
    assert names == set(_generator().EXPECTED_FAILURES)


def test_generator_reproduces_the_file() -> None:
    assert _generator().render() == (HERE / "manifest_vectors.json").read_text()
