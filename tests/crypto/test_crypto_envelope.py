"""Envelopes: round trip, every single-field tamper, malformed framing, fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.crypto.envelope import Envelope, build_envelope, open_envelope
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, seal_to
from cohort.errors import BadInputError, VerificationError

OWNER = Identity.generate("h1", seed=b"\x01" * 32)
MEMBER = Identity.generate("m1", seed=b"\x02" * 32)
OTHER_OWNER = Identity.generate("h2", seed=b"\x03" * 32)
OTHER_MEMBER = Identity.generate("m2", seed=b"\x04" * 32)
STUDY = "study-7f3a"
PAYLOAD = b"ciphertext bytes \x00\x01\x02" * 4
ENV = build_envelope(OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD)
WIRE = ENV.to_bytes()


def _open(env: Envelope, **overrides: object) -> bytes:
    kwargs: dict[str, object] = {
        "recipient": MEMBER,
        "sender": OWNER.public,
        "study_id": STUDY,
        "round": 4,
    }
    kwargs.update(overrides)
    return open_envelope(env, **kwargs)  # type: ignore[arg-type]


def test_round_trip() -> None:
    parsed = Envelope.from_bytes(WIRE)
    assert parsed == ENV
    assert parsed.to_bytes() == WIRE
    assert WIRE[:5] == b"CHEV\x02"
    assert _open(parsed) == PAYLOAD


def test_a_precomputed_payload_hash_gives_the_same_envelope() -> None:
    nonce = b"\x07" * 16
    own = build_envelope(
        OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD, nonce=nonce
    )
    given = build_envelope(
        OWNER,
        MEMBER.public,
        study_id=STUDY,
        round=4,
        payload=PAYLOAD,
        nonce=nonce,
        payload_hash=tagged_hash(Tag.PAYLOAD, PAYLOAD),
    )
    assert (given.payload_hash, given.signature) == (own.payload_hash, own.signature)
    assert _open(given) == PAYLOAD
    wrong = build_envelope(
        OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD, payload_hash=b"\x00" * 32
    )
    with pytest.raises(VerificationError, match="payload hash mismatch"):
        _open(wrong)
    with pytest.raises(BadInputError, match="payload_hash has 3 bytes"):
        build_envelope(
            OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD, payload_hash=b"abc"
        )


def test_empty_payload_round_trip() -> None:
    env = build_envelope(OWNER, MEMBER.public, study_id=STUDY, round=0, payload=b"")
    assert _open(Envelope.from_bytes(env.to_bytes()), round=0) == b""


def test_nonce_is_random_unless_given() -> None:
    again = build_envelope(OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD)
    assert again.nonce != ENV.nonce
    fixed = [
        build_envelope(
            OWNER, MEMBER.public, study_id=STUDY, round=4, payload=PAYLOAD, nonce=b"n" * 16
        )
        for _ in range(2)
    ]
    assert fixed[0].signature == fixed[1].signature
    assert fixed[0].sealed_payload != fixed[1].sealed_payload  # sealing stays randomized


# --- expectations that do not match the envelope ---------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (
            {"study_id": "study-other"},
            "envelope for study 'study-7f3a', expected study 'study-other'",
        ),
        ({"round": 5}, "envelope for round 4, expected round 5"),
        ({"recipient": OTHER_MEMBER}, "envelope addressed to 'm1', expected 'm2'"),
        ({"sender": OTHER_OWNER.public}, "envelope from 'h1', expected sender 'h2'"),
    ],
)
def test_context_mismatch_named(overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(VerificationError) as info:
        _open(ENV, **overrides)
    assert str(info.value) == reason


# --- every single-field tamper -----------------------------------------------------------------

_OTHER_SEAL = seal_to(MEMBER.public, b"another payload")

# (field, new value, overrides making the receiver expect the tampered value, reason)
TAMPERS = [
    (
        "study_id",
        "study-evil",
        {"study_id": "study-evil"},
        "signature does not verify for sender h1",
    ),
    ("study_id", "study-evil", {}, "envelope for study 'study-evil', expected study 'study-7f3a'"),
    ("round", 5, {"round": 5}, "signature does not verify for sender h1"),
    ("round", 3, {}, "envelope for round 3, expected round 4"),
    ("sender", "h2", {"sender": OTHER_OWNER.public}, "signature does not verify for sender h2"),
    ("sender", "h2", {}, "envelope from 'h2', expected sender 'h1'"),
    ("recipient", "m2", {"recipient": OTHER_MEMBER}, "signature does not verify for sender h1"),
    ("recipient", "m2", {}, "envelope addressed to 'm2', expected 'm1'"),
    ("payload_hash", b"\x00" * 32, {}, "signature does not verify for sender h1"),
    ("nonce", b"\xff" * 16, {}, "signature does not verify for sender h1"),
    ("signature", OWNER.sign(b"something else"), {}, "signature does not verify for sender h1"),
    ("sealed_payload", _OTHER_SEAL, {}, "payload hash mismatch"),
    (
        "sealed_payload",
        seal_to(OTHER_MEMBER.public, PAYLOAD),
        {},
        "sealed payload does not open for recipient m1",
    ),
]


@pytest.mark.parametrize(
    ("field", "value", "overrides", "reason"),
    TAMPERS,
    ids=[f"{t[0]}-{i}" for i, t in enumerate(TAMPERS)],
)
def test_single_field_tamper_detected(
    field: str, value: object, overrides: dict[str, object], reason: str
) -> None:
    tampered = dataclasses.replace(ENV, **{field: value})  # type: ignore[arg-type]
    # the tamper survives the wire
    tampered = Envelope.from_bytes(tampered.to_bytes())
    with pytest.raises(VerificationError) as info:
        _open(tampered, **overrides)
    assert str(info.value) == reason


def test_every_field_covered_by_tamper_table() -> None:
    assert {t[0] for t in TAMPERS} == {f.name for f in dataclasses.fields(Envelope)}


@pytest.mark.parametrize("position", [0, 20, 60, len(ENV.sealed_payload) - 1])
def test_sealed_payload_bit_flip_detected(position: int) -> None:
    sealed = bytearray(ENV.sealed_payload)
    sealed[position] ^= 0x80
    with pytest.raises(VerificationError, match="sealed payload does not open"):
        _open(dataclasses.replace(ENV, sealed_payload=bytes(sealed)))


# --- malformed bytes --------------------------------------------------------------------------


def test_every_truncation_rejected() -> None:
    for cut in range(len(WIRE)):
        with pytest.raises(BadInputError, match=r"^envelope: "):
            Envelope.from_bytes(WIRE[:cut])


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(BadInputError, match="1 trailing bytes"):
        Envelope.from_bytes(WIRE + b"\x00")


def test_bad_magic_and_version_rejected() -> None:
    with pytest.raises(BadInputError, match="bad magic"):
        Envelope.from_bytes(b"XXEV" + WIRE[4:])
    assert WIRE[4] == 2  # version 2: HPKE seal
    with pytest.raises(BadInputError, match="unsupported version 1, expected 2"):
        Envelope.from_bytes(WIRE[:4] + b"\x01" + WIRE[5:])  # the SealedBox format
    with pytest.raises(BadInputError, match="unsupported version 3"):
        Envelope.from_bytes(WIRE[:4] + b"\x03" + WIRE[5:])


def _frame(**fields: bytes) -> bytes:
    """Hand-built framing with field overrides (raw bytes per field)."""
    values = {
        "study_id": STUDY.encode(),
        "round": struct.pack(">Q", 4),
        "sender": b"h1",
        "recipient": b"m1",
        "payload_hash": ENV.payload_hash,
        "nonce": ENV.nonce,
        "sealed_payload": ENV.sealed_payload,
        "signature": ENV.signature,
    }
    values.update(fields)
    out = b"CHEV\x02"
    for name, value in values.items():
        fmt = ">Q" if name == "sealed_payload" else ">I"
        out += struct.pack(fmt, len(value)) + value
    return out


def test_hand_built_frame_matches() -> None:
    assert _frame() == WIRE


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"round": b"\x00" * 7}, "round has 7 bytes, expected 8"),
        ({"payload_hash": b"\x00" * 31}, "payload_hash has 31 bytes, expected 32"),
        ({"nonce": b"\x00" * 15}, "nonce has 15 bytes, expected 16"),
        ({"nonce": b"\x00" * 17}, "nonce has 17 bytes, expected 16"),
        ({"signature": b"\x00" * 63}, "signature has 63 bytes, expected 64"),
        ({"sealed_payload": b"\x00" * 47}, "sealed_payload has 47 bytes"),
        ({"sender": b"\xff\xfe"}, "sender is not valid UTF-8"),
        ({"recipient": b""}, "recipient must be non-empty"),
        ({"study_id": b"a\x00b"}, "study_id must be non-empty printable"),
        ({"sender": b"x" * 129}, "sender has 129 bytes"),
        ({"study_id": b"s" * 300}, "study_id has 300 bytes"),
    ],
)
def test_bad_field_sizes_named(fields: dict[str, bytes], message: str) -> None:
    with pytest.raises(BadInputError, match=f"^envelope: {message}"):
        Envelope.from_bytes(_frame(**fields))


def test_huge_declared_length_is_truncation_not_allocation() -> None:
    data = b"CHEV\x02" + struct.pack(">I", 2**32 - 1)
    with pytest.raises(BadInputError, match="study_id has 4294967295 bytes"):
        Envelope.from_bytes(data)


@pytest.mark.parametrize("value", ["not bytes", 123, None])
def test_non_bytes_rejected(value: object) -> None:
    with pytest.raises(BadInputError, match="expected bytes"):
        Envelope.from_bytes(value)  # type: ignore[arg-type]


@given(data=st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_bad_input(data: bytes) -> None:
    with contextlib.suppress(BadInputError):
        Envelope.from_bytes(data)


@given(
    position=st.integers(min_value=0, max_value=len(WIRE) - 1),
    byte=st.integers(min_value=0, max_value=255),
    op=st.sampled_from(["replace", "insert", "delete"]),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_bytes_never_accepted(position: int, byte: int, op: str) -> None:
    data = bytearray(WIRE)
    if op == "replace":
        if data[position] == byte:
            return
        data[position] = byte
    elif op == "insert":
        data.insert(position, byte)
    else:
        del data[position]
    try:
        env = Envelope.from_bytes(bytes(data))
    except BadInputError:
        return
    with pytest.raises(VerificationError):
        _open(env)


# --- construction checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"round": -1}, "round must be in"),
        ({"round": 2**64}, "round must be in"),
        ({"round": True}, "round must be an integer"),
        ({"study_id": ""}, "study_id must be non-empty"),
        ({"nonce": b"short"}, "nonce has 5 bytes"),
        ({"payload": "text"}, "payload must be bytes"),
    ],
)
def test_build_envelope_validates(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"study_id": STUDY, "round": 1, "payload": b"p"}
    args.update(kwargs)
    with pytest.raises(BadInputError, match=message):
        build_envelope(OWNER, MEMBER.public, **args)  # type: ignore[arg-type]


def test_max_round_round_trips() -> None:
    env = build_envelope(OWNER, MEMBER.public, study_id=STUDY, round=2**64 - 1, payload=b"p")
    assert _open(Envelope.from_bytes(env.to_bytes()), round=2**64 - 1) == b"p"
