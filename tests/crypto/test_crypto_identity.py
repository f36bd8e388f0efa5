"""Identities: signatures, boxes, sealed boxes, public identity parsing and the key store."""

from __future__ import annotations

import copy
import json
import os
import pickle
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto.identity import (
    SEAL_INFO,
    SEAL_OVERHEAD,
    SEAL_SUITE,
    Identity,
    PublicIdentity,
    seal_to,
    verify_signature,
)
from cohort.errors import BadInputError, VerificationError

ALICE = Identity.generate("h1", seed=bytes(range(32)))
BOB = Identity.generate("m1", seed=bytes(range(1, 33)))
EVE = Identity.generate("m2", seed=bytes(range(2, 34)))


def _box_secret(identity: Identity) -> bytes:
    """The raw X25519 box secret, read back from the key store written to a temp dir."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "identity.json"
        identity.save(path)
        return bytes.fromhex(json.loads(path.read_text())["box_secret"])


def _no_chain(exc: BaseException) -> bool:
    """True if ``exc`` shows no traceback chain (no cause; no context, or ``from None``)."""
    return exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


def _secret_hexes(identity: Identity, tmp_path: Path) -> list[str]:
    path = tmp_path / "probe.json"
    identity.save(path)
    record = json.loads(path.read_text())
    return [record["sign_seed"], record["box_secret"]]


# --- generation -------------------------------------------------------------------------


def test_seeded_generation_is_deterministic_and_separates_keys() -> None:
    again = Identity.generate("h1", seed=bytes(range(32)))
    assert again.public == ALICE.public
    assert ALICE.public != Identity.generate("h1", seed=bytes(range(1, 33))).public
    assert ALICE.public.sign_key != ALICE.public.box_key


def test_random_generation_differs() -> None:
    assert Identity.generate("h1").public != Identity.generate("h1").public


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_bad_seed_rejected(seed: bytes) -> None:
    with pytest.raises(BadInputError, match="seed must be 32 bytes"):
        Identity.generate("h1", seed=seed)


@pytest.mark.parametrize("party_id", ["", "a\nb", "x" * 129])
def test_bad_party_id_rejected(party_id: str) -> None:
    with pytest.raises(BadInputError, match="party_id"):
        Identity.generate(party_id)


def test_repr_and_str_show_no_secret(tmp_path: Path) -> None:
    for text in (repr(ALICE), str(ALICE)):
        assert "h1" in text
        assert ALICE.public.fingerprint() in text
        for secret in _secret_hexes(ALICE, tmp_path):
            assert secret not in text
            assert secret[:16] not in text


# --- signatures ---------------------------------------------------------------------------


@given(message=st.binary(max_size=512))
@settings(max_examples=30, deadline=None)
def test_sign_verify(message: bytes) -> None:
    signature = ALICE.sign(message)
    assert len(signature) == 64
    verify_signature(ALICE.public, message, signature)


def test_forged_signature_rejected() -> None:
    signature = bytearray(ALICE.sign(b"update"))
    signature[10] ^= 1
    with pytest.raises(VerificationError, match="does not verify for h1"):
        verify_signature(ALICE.public, b"update", bytes(signature))


def test_signature_over_other_message_rejected() -> None:
    with pytest.raises(VerificationError):
        verify_signature(ALICE.public, b"update2", ALICE.sign(b"update"))


def test_wrong_key_rejected() -> None:
    with pytest.raises(VerificationError, match="does not verify for m2"):
        verify_signature(EVE.public, b"update", ALICE.sign(b"update"))


@pytest.mark.parametrize("size", [0, 63, 65])
def test_wrong_size_signature_rejected(size: int) -> None:
    with pytest.raises(VerificationError, match="not 64 bytes"):
        verify_signature(ALICE.public, b"update", b"\x00" * size)


# --- boxes ----------------------------------------------------------------------------------


@given(plaintext=st.binary(max_size=512))
@settings(max_examples=30, deadline=None)
def test_box_round_trip(plaintext: bytes) -> None:
    assert BOB.unbox_from(ALICE.public, ALICE.box_to(BOB.public, plaintext)) == plaintext


def test_box_wrong_sender_or_recipient_rejected() -> None:
    boxed = ALICE.box_to(BOB.public, b"secret")
    with pytest.raises(VerificationError, match="box from m2 does not open for m1"):
        BOB.unbox_from(EVE.public, boxed)
    with pytest.raises(VerificationError):
        EVE.unbox_from(ALICE.public, boxed)


def test_box_tamper_rejected() -> None:
    boxed = bytearray(ALICE.box_to(BOB.public, b"secret"))
    boxed[-1] ^= 1
    with pytest.raises(VerificationError):
        BOB.unbox_from(ALICE.public, bytes(boxed))
    with pytest.raises(VerificationError):
        BOB.unbox_from(ALICE.public, b"short")


@given(plaintext=st.binary(max_size=512))
@settings(max_examples=30, deadline=None)
def test_seal_round_trip(plaintext: bytes) -> None:
    assert BOB.unseal(seal_to(BOB.public, plaintext)) == plaintext


def test_unseal_with_wrong_key_rejected() -> None:
    sealed = seal_to(BOB.public, b"secret")
    with pytest.raises(VerificationError, match="does not open for m2"):
        EVE.unseal(sealed)


def test_unseal_tampered_or_short_rejected() -> None:
    sealed = bytearray(seal_to(BOB.public, b"secret"))
    sealed[40] ^= 1
    for bad in (bytes(sealed), b"", b"\x00" * 47):
        with pytest.raises(VerificationError):
            BOB.unseal(bad)


def test_unusable_box_key_is_bad_input() -> None:
    zero = PublicIdentity(party_id="z", sign_key=b"\x00" * 32, box_key=b"\x00" * 32)
    with pytest.raises(BadInputError, match="box key of z"):
        seal_to(zero, b"x")
    with pytest.raises(BadInputError, match="box key of z"):
        ALICE.box_to(zero, b"x")


# Low-order X25519 points (and a non-canonical encoding of one): the shared secret would be
# all zeros whatever the ephemeral key, so a seal to them would be readable by anyone.
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes(31) + b"\x80",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p[:4].hex())
def test_seal_to_a_low_order_key_is_bad_input(point: bytes) -> None:
    low = PublicIdentity(party_id="low", sign_key=ALICE.public.sign_key, box_key=point)
    with pytest.raises(BadInputError, match="box key of low is not usable") as info:
        seal_to(low, b"x")
    assert _no_chain(info.value)


def test_seal_is_hpke_with_48_bytes_overhead() -> None:
    for size in (0, 1, 1000):
        sealed = seal_to(BOB.public, bytes(size))
        assert len(sealed) == size + SEAL_OVERHEAD == size + 48
    # each seal has a fresh ephemeral key: the first 32 bytes (HPKE enc) differ
    assert seal_to(BOB.public, b"p")[:32] != seal_to(BOB.public, b"p")[:32]
    # the seal is what cryptography's HPKE base mode opens, with SEAL_INFO and BOB's key
    secret = x25519.X25519PrivateKey.from_private_bytes(_box_secret(BOB))
    assert SEAL_SUITE.decrypt(seal_to(BOB.public, b"p"), secret, info=SEAL_INFO) == b"p"
    recipient = x25519.X25519PublicKey.from_public_bytes(BOB.public.box_key)
    assert BOB.unseal(SEAL_SUITE.encrypt(b"q", recipient, info=SEAL_INFO)) == b"q"


def test_a_seal_with_another_info_or_suite_does_not_open() -> None:
    recipient = x25519.X25519PublicKey.from_public_bytes(BOB.public.box_key)
    for info in (b"cohort/seal/v1", b"", SEAL_INFO + b"\x00"):
        sealed = SEAL_SUITE.encrypt(b"secret", recipient, info=info)
        with pytest.raises(VerificationError, match="sealed box does not open for m1"):
            BOB.unseal(sealed)
    other_suite = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
    with pytest.raises(VerificationError, match="sealed box does not open for m1"):
        BOB.unseal(other_suite.encrypt(b"secret", recipient, info=SEAL_INFO))


def test_truncated_or_mistyped_seal_is_refused() -> None:
    sealed = seal_to(BOB.public, b"secret")
    for bad in (b"", sealed[:1], sealed[:32], sealed[:47], sealed[:-1], sealed[1:]):
        with pytest.raises(VerificationError, match="sealed box does not open for m1") as info:
            BOB.unseal(bad)
        assert _no_chain(info.value)
    assert BOB.unseal(seal_to(BOB.public, b"")) == b""
    for mistyped in (bytearray(sealed), memoryview(sealed), sealed.hex(), None, 48):
        with pytest.raises(VerificationError, match="sealed box does not open for m1"):
            BOB.unseal(mistyped)  # type: ignore[arg-type]


def test_seal_of_non_bytes_is_bad_input() -> None:
    with pytest.raises(BadInputError, match="plaintext must be bytes"):
        seal_to(BOB.public, "text")  # type: ignore[arg-type]


@given(plaintext=st.binary(max_size=4096))
@settings(max_examples=50, deadline=None)
def test_unseal_inverts_seal_to(plaintext: bytes) -> None:
    sealed = seal_to(BOB.public, plaintext)
    assert len(sealed) == len(plaintext) + SEAL_OVERHEAD
    assert BOB.unseal(sealed) == plaintext


def test_identity_copy_and_pickle_keep_the_seal_key() -> None:
    for clone in (copy.deepcopy(BOB), pickle.loads(pickle.dumps(BOB))):
        assert clone.public == BOB.public
        assert clone.unseal(seal_to(BOB.public, b"p")) == b"p"


# --- public identities ------------------------------------------------------------------------


def test_public_identity_dict_round_trip() -> None:
    d = ALICE.public.to_dict()
    assert d["sign_key"] == ALICE.public.sign_key.hex()
    assert PublicIdentity.from_dict(d) == ALICE.public
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sign_key": None}, "sign_key"),
        ({"box_key": None}, "box_key"),
        ({"party_id": None}, "party_id"),
        ({"sign_key": "zz"}, "sign_key"),
        ({"box_key": "00" * 31}, "box_key"),
        ({"sign_key": "00" * 33}, "sign_key"),
        ({"party_id": ""}, "party_id"),
        ({"box_key": 7}, "box_key"),
    ],
)
def test_public_identity_from_dict_names_bad_field(change: dict[str, object], field: str) -> None:
    d: dict[str, object] = dict(ALICE.public.to_dict())
    for key, value in change.items():
        if value is None:
            del d[key]
        else:
            d[key] = value
    with pytest.raises(BadInputError, match=field):
        PublicIdentity.from_dict(d)  # type: ignore[arg-type]


def test_public_identity_rejects_wrong_key_sizes() -> None:
    with pytest.raises(BadInputError, match="sign_key"):
        PublicIdentity(party_id="a", sign_key=b"\x00" * 31, box_key=b"\x00" * 32)


def test_fingerprint_is_short_stable_and_binding() -> None:
    fp = ALICE.public.fingerprint()
    assert len(fp) == 16
    int(fp, 16)
    assert fp == Identity.generate("h1", seed=bytes(range(32))).public.fingerprint()
    renamed = PublicIdentity("h9", ALICE.public.sign_key, ALICE.public.box_key)
    assert renamed.fingerprint() != fp
    assert BOB.public.fingerprint() != fp


# --- key store ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    ALICE.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]
    loaded = Identity.load(path)
    assert loaded.public == ALICE.public
    verify_signature(ALICE.public, b"m", loaded.sign(b"m"))
    assert loaded.unseal(seal_to(ALICE.public, b"p")) == b"p"


def test_save_replaces_existing_file_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("old")
    path.chmod(0o644)
    BOB.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).public == BOB.public


def _write(path: Path, record: object) -> None:
    path.write_text(json.dumps(record) if not isinstance(record, str) else record)
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: "not json {", "not valid JSON"),
        (lambda r: [1, 2], "expected a JSON object"),
        (lambda r: {**r, "format": "other"}, "format"),
        (lambda r: {k: v for k, v in r.items() if k != "box_secret"}, "box_secret"),
        (lambda r: {**r, "sign_seed": "xyz"}, "sign_seed"),
        (lambda r: {**r, "box_secret": "00" * 16}, "box_secret"),
        (lambda r: {**r, "sign_key": BOB.public.sign_key.hex()}, "do not match"),
        (lambda r: {**r, "party_id": ""}, "party_id"),
    ],
)
def test_load_rejects_malformed_key_store(tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "identity.json"
    ALICE.save(path)
    record = json.loads(path.read_text())
    secrets_hex = [record["sign_seed"], record["box_secret"]]
    _write(path, mutate(record))  # type: ignore[operator]
    with pytest.raises(BadInputError, match=message) as info:
        Identity.load(path)
    assert str(path) in str(info.value)
    for secret in secrets_hex:
        assert secret not in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read"):
        Identity.load(tmp_path / "absent.json")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_load_refuses_group_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    ALICE.save(path)
    path.chmod(0o640)
    with pytest.raises(BadInputError, match="0640"):
        Identity.load(path)
