"""Check the implementation against the checked-in share-payload test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from vectorkit import load_generator

from cohort.crypto.fixed_point import PRIME
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import ShamirScheme, reconstruct
from cohort.crypto.share_payload import SharePayload
from cohort.errors import BadInputError

HERE = Path(__file__).parent
VECTORS_PATH = HERE / "share_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
ERRORS = {"BadInputError": BadInputError}


def _generator() -> ModuleType:
    return load_generator("gen_share_vectors")


def _parse(vector: dict[str, Any]) -> SharePayload:
    return SharePayload.from_bytes(
        bytes.fromhex(vector["payload"]), length=vector["expect"]["length"]
    )


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    expect = vector["expect"]
    member = VECTORS["members"][expect["member"]]
    domain = share_domain(VECTORS["study_id"], VECTORS["round"], member, VECTORS["sender"])
    assert domain.hex() == expect["domain"]
    if vector["success"]:
        payload = _parse(vector)
        assert payload.kind.name.lower() == vector["kind"]
        assert payload.share.index == expect["member"]
        assert payload.values(domain=domain).tolist() == vector["values"]
        assert payload.to_bytes().hex() == vector["payload"]
    else:
        with pytest.raises(ERRORS[vector["error"]]) as info:
            _parse(vector)
        assert type(info.value) is ERRORS[vector["error"]]
        assert str(info.value) == vector["reason"]


def test_passing_shares_reconstruct_the_secret() -> None:
    scheme = ShamirScheme(**VECTORS["scheme"])
    assert scheme.prime == PRIME
    points = {
        v["expect"]["member"]: np.array(v["values"], dtype=np.int64)
        for v in VECTORS["vectors"]
        if v["success"]
    }
    assert reconstruct(points, scheme).tolist() == VECTORS["secret"]


def test_required_vectors_present() -> None:
    failing = {v["name"] for v in VECTORS["vectors"] if not v["success"]}
    assert {
        "bad_magic", "bad_version", "bad_kind", "truncated", "trailing_bytes",
        "value_not_below_prime", "index_out_of_range", "threshold_above_members",
        "wrong_length", "short_seed",
    } <= failing  # fmt: skip
    passing = {v["name"] for v in VECTORS["vectors"] if v["success"]}
    assert {"valid_seed", "valid_full"} <= passing


def test_checked_in_vectors_are_current() -> None:
    """The generator reproduces the checked-in file byte for byte."""
    assert _generator().render() == VECTORS_PATH.read_text()
