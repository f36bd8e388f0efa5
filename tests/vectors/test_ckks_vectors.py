"""Check the seeded CKKS chunk decoder against the checked-in test vectors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from vectorkit import load_generator

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.ckks_params import DEFAULT_PARAMS
from cohort.crypto.ckks_tenseal import seal_zstd
from cohort.errors import BadInputError

HERE = Path(__file__).parent
VECTORS: dict[str, Any] = json.loads((HERE / "ckks_vectors.json").read_text())
LAYOUT = CkksSecretContext.generate(DEFAULT_PARAMS).public()._layout
CODEC = seal_zstd()


def _generator() -> ModuleType:
    return load_generator("gen_ckks_vectors")


def test_vectors_name_these_parameters() -> None:
    assert VECTORS["format"] == "cohort-ckks-chunk-vectors/v1"
    assert [int(q) for q in VECTORS["primes"]] == list(LAYOUT.primes)
    assert tuple(int(x) for x in VECTORS["parms_id"]) == LAYOUT.parms_id


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    chunk = bytes.fromhex(vector["chunk"])
    if vector["success"]:
        coeffs = fastsum.decode_chunk(chunk, LAYOUT, CODEC, size=vector["size"], where="chunk")
        digest = hashlib.sha256(np.ascontiguousarray(coeffs, dtype="<u8").tobytes()).hexdigest()
        assert digest == vector["coefficients_sha256"]
        return
    assert vector["error"] == "BadInputError"
    with pytest.raises(BadInputError) as info:
        fastsum.decode_chunk(chunk, LAYOUT, CODEC, size=vector["size"], where="chunk")
    assert str(info.value) == vector["reason"]


def test_generator_reproduces_the_file() -> None:
    assert _generator().render() == (HERE / "ckks_vectors.json").read_text()
