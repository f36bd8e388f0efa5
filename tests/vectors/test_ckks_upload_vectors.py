"""Check the CKKS upload chunk decoder against the checked-in test vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from vectorkit import load_generator

from cohort.crypto import ckks_seeded as seeded
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.ckks_params import DEFAULT_PARAMS
from cohort.errors import BadInputError

HERE = Path(__file__).parent
VECTORS: dict[str, Any] = json.loads((HERE / "ckks_upload_vectors.json").read_text())
LAYOUT = CkksSecretContext.generate(DEFAULT_PARAMS).public()._layout


def _generator() -> ModuleType:
    return load_generator("gen_ckks_upload_vectors")


def test_vectors_name_these_parameters() -> None:
    assert VECTORS["format"] == "cohort-ckks-upload-chunk-vectors/v1"
    assert [int(q) for q in VECTORS["primes"]] == list(LAYOUT.primes)


BY_NAME = {v["name"]: v for v in VECTORS["vectors"]}


def _chunk(vector: dict[str, Any]) -> bytes:
    if "chunk" in vector:
        return bytes.fromhex(vector["chunk"])
    edited: bytes = _generator().apply_edit(
        bytes.fromhex(BY_NAME[vector["base"]]["chunk"]), vector["edit"]
    )
    return edited


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    chunk = _chunk(vector)
    if vector["success"]:
        coeffs = seeded.decode_chunk(chunk, LAYOUT, size=vector["slots"], where="chunk")
        digest = hashlib.sha256(np.ascontiguousarray(coeffs, dtype="<u8").tobytes()).hexdigest()
        assert digest == vector["coefficients_sha256"]
        assert [str(int(w)) for w in coeffs[1, 0, :4]] == vector["c1_first_words"]
        return
    assert vector["error"] == "BadInputError"
    with pytest.raises(BadInputError) as info:
        seeded.decode_chunk(chunk, LAYOUT, size=vector["slots"], where="chunk")
    assert str(info.value) == vector["reason"]


def test_generator_reproduces_the_file() -> None:
    assert _generator().render() == (HERE / "ckks_upload_vectors.json").read_text()
