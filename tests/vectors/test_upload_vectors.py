"""Check the implementation against the checked-in committee-upload test vectors."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from vectorkit import load_generator

from cohort.crypto.identity import Identity, PublicIdentity
from cohort.crypto.upload import CommitteeUpload, UploadRefused, committee_address, open_upload
from cohort.errors import BadInputError

HERE = Path(__file__).parent
VECTORS_PATH = HERE / "upload_vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
ERRORS = {"BadInputError": BadInputError, "UploadRefused": UploadRefused}


def _generator() -> ModuleType:
    return load_generator("gen_upload_vectors")


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
    upload = CommitteeUpload.from_bytes(bytes.fromhex(vector["upload"]))
    return open_upload(
        upload,
        holder=IDS[expect["holder"]],
        sender=IDS[expect["sender"]].public,
        committee=committee_address([IDS[m].public for m in expect["committee"]]),
        study_id=expect["study_id"],
        round=expect["round"],
    )


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    if vector["success"]:
        assert _open(vector) == bytes.fromhex(vector["payload"])
        upload = CommitteeUpload.from_bytes(bytes.fromhex(vector["upload"]))
        assert upload.payload_hash.hex() == vector["payload_hash"]
        assert upload.committee.hex() == vector["committee_address"]
        assert upload.signed_digest().hex() == vector["signed_digest"]
        assert upload.to_bytes().hex() == vector["upload"]
    else:
        with pytest.raises(ERRORS[vector["error"]]) as info:
            _open(vector)
        assert type(info.value) is ERRORS[vector["error"]]
        assert str(info.value) == vector["reason"]
        if isinstance(info.value, UploadRefused):
            assert info.value.check.value == vector["check"]


def test_required_vectors_present() -> None:
    failing = {v["name"] for v in VECTORS["vectors"] if not v["success"]}
    required = {"tampered_payload", "wrong_signature", "wrong_round", "other_committee"}
    assert required | {"wrong_study", "envelope_signature"} <= failing
    passing = {v["name"] for v in VECTORS["vectors"] if v["success"]}
    assert {"valid", "valid_relayed_copy"} <= passing


def test_checked_in_vectors_are_current() -> None:
    """The generator reproduces the checked-in file byte for byte."""
    assert _generator().render() == VECTORS_PATH.read_text()
