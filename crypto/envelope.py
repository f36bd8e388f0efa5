"""Signed, sealed envelopes: one upload from a data owner to ONE committee member.

A data owner runs :func:`build_envelope` once per committee member; the member runs
:func:`Envelope.from_bytes` on what arrived and then :func:`open_envelope`. The Ed25519
signature covers::

    tagged_hash(Tag.ENVELOPE, study_id, u64(round), sender, recipient, payload_hash, nonce)

with ``payload_hash = tagged_hash(Tag.PAYLOAD, payload)`` over the plain payload, which is
sealed to the member's box key (:func:`~cohort.crypto.identity.seal_to`: RFC 9180 HPKE base
mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM). The signature does not cover
the sealed bytes: the payload hash, checked after unsealing, binds them instead.

Wire framing (big-endian)::

    "CHEV" | u8 version=2 | u32-prefixed study_id (UTF-8) | u32-prefixed round (u64)
    | u32-prefixed sender | u32-prefixed recipient | u32-prefixed payload_hash (32)
    | u32-prefixed nonce (16) | u64-prefixed sealed_payload | u32-prefixed signature (64)

Version 2 seals with HPKE; version 1 sealed with libsodium's SealedBox (XSalsa20-Poly1305)
and is refused by :meth:`Envelope.from_bytes` ("unsupported version 1, expected 2").
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from cohort.crypto import framing
from cohort.crypto.hashing import DIGEST_SIZE, Tag, tagged_hash
from cohort.crypto.identity import (
    MAX_PARTY_ID_BYTES,
    SEAL_OVERHEAD,
    SIGNATURE_SIZE,
    Identity,
    PublicIdentity,
    check_party_id,
    seal_to,
    verify_signature,
)
from cohort.errors import BadInputError, VerificationError

MAGIC = b"CHEV"
VERSION = 2  # 2: payload sealed with HPKE (1: nacl SealedBox)
NONCE_SIZE = 16
# What a seal adds (48 bytes): the HPKE encapsulated key, an ephemeral X25519 public key
# (32), and the AES-256-GCM tag (16).
SEALED_BOX_OVERHEAD = SEAL_OVERHEAD
MAX_STUDY_ID_BYTES = 256
MAX_SEALED_PAYLOAD = 1 << 40


def _check_text(value: object, field: str, max_size: int) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"envelope: {field} must be a string")
    if not value or not value.isprintable() or len(value.encode("utf-8")) > max_size:
        raise BadInputError(
            f"envelope: {field} must be non-empty printable text of at most {max_size} bytes"
        )
    return value


def _check_round(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError("envelope: round must be an integer")
    if not 0 <= value <= framing.U64_MAX:
        raise BadInputError("envelope: round must be in [0, 2**64)")
    return value


def _check_bytes(value: object, field: str, *, exact: int | None = None, minimum: int = 0) -> None:
    if not isinstance(value, bytes):
        raise BadInputError(f"envelope: {field} must be bytes")
    if exact is not None and len(value) != exact:
        raise BadInputError(f"envelope: {field} has {len(value)} bytes, expected {exact}")
    if len(value) < minimum:
        raise BadInputError(f"envelope: {field} has {len(value)} bytes, fewer than {minimum}")


def _digest(
    study_id: str,
    round: int,
    sender: str,
    recipient: str,
    payload_hash: bytes,
    nonce: bytes,
) -> bytes:
    return tagged_hash(
        Tag.ENVELOPE,
        study_id.encode("utf-8"),
        framing.u64(round),
        sender.encode("utf-8"),
        recipient.encode("utf-8"),
        payload_hash,
        nonce,
    )


@dataclass(frozen=True)
class Envelope:
    """One signed upload. Fields are validated on construction (BadInputError)."""

    study_id: str
    round: int
    sender: str
    recipient: str
    payload_hash: bytes
    nonce: bytes
    sealed_payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_text(self.study_id, "study_id", MAX_STUDY_ID_BYTES)
        _check_round(self.round)
        for field in ("sender", "recipient"):
            try:
                check_party_id(getattr(self, field), field)
            except BadInputError as exc:
                raise BadInputError(f"envelope: {exc}") from None
        _check_bytes(self.payload_hash, "payload_hash", exact=DIGEST_SIZE)
        _check_bytes(self.nonce, "nonce", exact=NONCE_SIZE)
        _check_bytes(self.sealed_payload, "sealed_payload", minimum=SEALED_BOX_OVERHEAD)
        if len(self.sealed_payload) > MAX_SEALED_PAYLOAD:
            raise BadInputError("envelope: sealed_payload is larger than 1 TiB")
        _check_bytes(self.signature, "signature", exact=SIGNATURE_SIZE)

    def signed_digest(self) -> bytes:
        """The 32-byte digest the sender's signature covers."""
        return _digest(
            self.study_id, self.round, self.sender, self.recipient, self.payload_hash, self.nonce
        )

    def to_bytes(self) -> bytes:
        """Canonical wire form (see the module docstring)."""
        return b"".join(
            (
                MAGIC,
                framing.u8(VERSION),
                framing.prefixed(self.study_id.encode("utf-8")),
                framing.prefixed(framing.u64(self.round)),
                framing.prefixed(self.sender.encode("utf-8")),
                framing.prefixed(self.recipient.encode("utf-8")),
                framing.prefixed(self.payload_hash),
                framing.prefixed(self.nonce),
                framing.prefixed64(self.sealed_payload),
                framing.prefixed(self.signature),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse the wire form; BadInputError("envelope: ...") naming the bad field."""
        r = framing.Reader(data, "envelope")
        r.magic(MAGIC)
        r.version(VERSION)
        study_id = r.text("study_id", max_size=MAX_STUDY_ID_BYTES)
        round_bytes = r.prefixed("round", max_size=8, exact=8)
        sender = r.text("sender", max_size=MAX_PARTY_ID_BYTES)
        recipient = r.text("recipient", max_size=MAX_PARTY_ID_BYTES)
        payload_hash = r.prefixed("payload_hash", max_size=DIGEST_SIZE, exact=DIGEST_SIZE)
        nonce = r.prefixed("nonce", max_size=NONCE_SIZE, exact=NONCE_SIZE)
        sealed = r.prefixed64("sealed_payload", max_size=MAX_SEALED_PAYLOAD)
        signature = r.prefixed("signature", max_size=SIGNATURE_SIZE, exact=SIGNATURE_SIZE)
        r.end()
        return cls(
            study_id=study_id,
            round=int.from_bytes(round_bytes, "big"),
            sender=sender,
            recipient=recipient,
            payload_hash=payload_hash,
            nonce=nonce,
            sealed_payload=sealed,
            signature=signature,
        )


def build_envelope(
    sender: Identity,
    recipient: PublicIdentity,
    *,
    study_id: str,
    round: int,
    payload: bytes,
    nonce: bytes | None = None,
    payload_hash: bytes | None = None,
) -> Envelope:
    """Run by a data owner: hash, seal and sign ``payload`` for one committee member.

    ``nonce`` (16 bytes) is drawn at random unless given; fixed nonces are for test vectors.
    ``payload_hash`` is ``tagged_hash(Tag.PAYLOAD, payload)`` when the caller already has it
    (one payload, one envelope per member: hashed once); a wrong one only makes the member
    reject the envelope (``payload_hash_mismatch``).
    """
    if not isinstance(payload, bytes):
        raise BadInputError("envelope: payload must be bytes")
    if nonce is None:
        nonce = secrets.token_bytes(NONCE_SIZE)
    _check_bytes(nonce, "nonce", exact=NONCE_SIZE)
    _check_text(study_id, "study_id", MAX_STUDY_ID_BYTES)
    _check_round(round)
    if payload_hash is None:
        payload_hash = tagged_hash(Tag.PAYLOAD, payload)
    _check_bytes(payload_hash, "payload_hash", exact=DIGEST_SIZE)
    digest = _digest(study_id, round, sender.party_id, recipient.party_id, payload_hash, nonce)
    return Envelope(
        study_id=study_id,
        round=round,
        sender=sender.party_id,
        recipient=recipient.party_id,
        payload_hash=payload_hash,
        nonce=nonce,
        sealed_payload=seal_to(recipient, payload),
        signature=sender.sign(digest),
    )


def open_envelope(
    envelope: Envelope,
    *,
    recipient: Identity,
    sender: PublicIdentity,
    study_id: str,
    round: int,
) -> bytes:
    """Run by a committee member: verify ``envelope`` and return the plain payload.

    Checks, in order: study, round, recipient id, sender id, signature, unseal, payload
    hash. The first failure raises VerificationError naming that check. Replay and
    duplicate detection across envelopes is the member's job, not this function's.
    """
    if envelope.study_id != study_id:
        raise VerificationError(
            f"envelope for study {envelope.study_id!r}, expected study {study_id!r}"
        )
    if envelope.round != round:
        raise VerificationError(f"envelope for round {envelope.round}, expected round {round}")
    if envelope.recipient != recipient.party_id:
        raise VerificationError(
            f"envelope addressed to {envelope.recipient!r}, expected {recipient.party_id!r}"
        )
    if envelope.sender != sender.party_id:
        raise VerificationError(
            f"envelope from {envelope.sender!r}, expected sender {sender.party_id!r}"
        )
    try:
        verify_signature(sender, envelope.signed_digest(), envelope.signature)
    except VerificationError:
        raise VerificationError(f"signature does not verify for sender {sender.party_id}") from None
    try:
        payload = recipient.unseal(envelope.sealed_payload)
    except VerificationError:
        raise VerificationError(
            f"sealed payload does not open for recipient {recipient.party_id}"
        ) from None
    if not hmac.compare_digest(tagged_hash(Tag.PAYLOAD, payload), envelope.payload_hash):
        raise VerificationError("payload hash mismatch")
    return payload
