"""Committee uploads: one signature for the whole committee, a fresh seal per holder."""

from __future__ import annotations

import dataclasses

import pytest

from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity
from cohort.crypto.upload import (
    CommitteeUpload,
    UploadCheck,
    UploadRefused,
    build_upload,
    committee_address,
    open_upload,
)
from cohort.errors import BadInputError, VerificationError

OWNER = Identity.generate("h1", seed=b"\x01" * 32)
MEMBERS = [Identity.generate(f"m{i}", seed=bytes([0x20 + i]) * 32) for i in (1, 2, 3)]
COMMITTEE = [m.public for m in MEMBERS]
STUDY = "ab" * 32
PAYLOAD = b"a ciphertext" * 10


def _open(upload: CommitteeUpload, holder: Identity) -> bytes:
    return open_upload(
        upload,
        holder=holder,
        sender=OWNER.public,
        committee=committee_address(COMMITTEE),
        study_id=STUDY,
        round=2,
    )


def test_one_signature_serves_every_holder() -> None:
    upload = build_upload(OWNER, COMMITTEE, COMMITTEE[0], study_id=STUDY, round=2, payload=PAYLOAD)
    assert CommitteeUpload.from_bytes(upload.to_bytes()) == upload
    assert _open(upload, MEMBERS[0]) == PAYLOAD
    for member in MEMBERS[1:]:
        with pytest.raises(UploadRefused) as refused:
            _open(upload, member)  # sealed to m1 alone
        assert refused.value.check is UploadCheck.SEAL
        copy = upload.sealed_for(member.public, PAYLOAD)
        assert copy.signature == upload.signature
        assert _open(copy, member) == PAYLOAD
    forged = upload.sealed_for(MEMBERS[1].public, b"other bytes")
    with pytest.raises(UploadRefused, match="payload hash mismatch"):
        _open(forged, MEMBERS[1])
    assert "bytes>" in repr(upload)
    assert isinstance(UploadRefused(UploadCheck.STUDY, "x"), VerificationError)


def test_the_committee_address_binds_every_member_and_their_keys() -> None:
    assert committee_address(COMMITTEE) == committee_address(list(reversed(COMMITTEE)))
    assert committee_address(COMMITTEE) != committee_address(COMMITTEE[:2])
    other = dataclasses.replace(COMMITTEE[2], box_key=COMMITTEE[0].box_key)
    assert committee_address(COMMITTEE) != committee_address([*COMMITTEE[:2], other])
    with pytest.raises(BadInputError, match="distinct members"):
        committee_address([COMMITTEE[0], COMMITTEE[0]])
    with pytest.raises(BadInputError, match="distinct members"):
        committee_address([])


def test_building_checks_its_inputs() -> None:
    outsider = Identity.generate("m9", seed=b"\x99" * 32).public
    with pytest.raises(BadInputError, match="'m9' is not in the committee"):
        build_upload(OWNER, COMMITTEE, outsider, study_id=STUDY, round=2, payload=PAYLOAD)
    for kwargs, message in (
        ({"nonce": b"short"}, "nonce must be 16 bytes"),
        ({"round": -1}, "round must be in"),
        ({"study_id": ""}, "study_id must be non-empty"),
        ({"payload_hash": b"x"}, "payload_hash must be 32 bytes"),
    ):
        args = {"study_id": STUDY, "round": 2, "payload": PAYLOAD, **kwargs}
        with pytest.raises(BadInputError, match=message):
            build_upload(OWNER, COMMITTEE, COMMITTEE[0], **args)  # type: ignore[arg-type]


def test_neither_kind_parses_or_verifies_as_the_other() -> None:
    envelope = build_envelope(OWNER, COMMITTEE[0], study_id=STUDY, round=2, payload=PAYLOAD)
    with pytest.raises(BadInputError, match="bad magic b'CHEV'"):
        CommitteeUpload.from_bytes(envelope.to_bytes())
    upload = build_upload(OWNER, COMMITTEE, COMMITTEE[0], study_id=STUDY, round=2, payload=PAYLOAD)
    swapped = dataclasses.replace(upload, nonce=envelope.nonce, signature=envelope.signature)
    with pytest.raises(UploadRefused, match="signature does not verify"):
        _open(swapped, MEMBERS[0])


def test_an_upload_of_the_sealedbox_format_is_refused_by_its_version() -> None:
    wire = build_upload(
        OWNER, COMMITTEE, COMMITTEE[0], study_id=STUDY, round=2, payload=PAYLOAD
    ).to_bytes()
    assert wire[4] == 2  # version 2: HPKE seal
    with pytest.raises(BadInputError, match="unsupported version 1, expected 2"):
        CommitteeUpload.from_bytes(wire[:4] + b"\x01" + wire[5:])
