"""Check the implementation against the checked-in envelope test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from vectorkit import load_generator

from cohort.crypto.envelope import Envelope, open_envelope
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.errors import BadInputError, VerificationError

HERE = Path(__file__).parent
VECTORS_PATH = HERE / "envelope_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
ERRORS = {"BadInputError": BadInputError, "VerificationError": VerificationError}


def _generator() -> ModuleType:
    return load_generator("gen_envelope_vectors")


def _identities() -> dict[str, Identity]:
    ids = {}
    for pid, record in VECTORS["identities"].items():
        identity = Identity.generate(pid, seed=bytes.fromhex(record["seed"]))
        assert identity.public == PublicIdentity.from_dict(
            {k: record[k] for k in ("party_id", "sign_key", "box_key")}
        )
        ids[pid] = identity
    return ids


IDS = _identities()


def _open(vector: dict[str, Any]) -> bytes:
    expect = vector["expect"]
    env = Envelope.from_bytes(bytes.fromhex(vector["envelope"]))
    return open_envelope(
        env,
        recipient=IDS[expect["recipient"]],
        sender=IDS[expect["sender"]].public,
        study_id=expect["study_id"],
        round=expect["round"],
    )


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    if vector["success"]:
        assert _open(vector) == bytes.fromhex(vector["payload"])
        env = Envelope.from_bytes(bytes.fromhex(vector["envelope"]))
        assert env.payload_hash.hex() == vector["payload_hash"]
        assert env.signed_digest().hex() == vector["signed_digest"]
        assert env.to_bytes().hex() == vector["envelope"]
    else:
        with pytest.raises(ERRORS[vector["error"]]) as info:
            _open(vector)
        assert type(info.value) is ERRORS[vector["error"]]
        assert str(info.value) == vector["reason"]


def test_required_failing_vectors_present() -> None:
    failing = {v["name"] for v in VECTORS["vectors"] if not v["success"]}
    assert {"tampered_payload", "wrong_signature", "wrong_round", "wrong_recipient"} <= failing
    assert any(v["success"] for v in VECTORS["vectors"])


def test_checked_in_vectors_are_current() -> None:
    """The generator reproduces the checked-in file byte for byte."""
    assert _generator().render() == VECTORS_PATH.read_text()
