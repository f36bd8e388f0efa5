"""Committee uploads: one signed upload from a data owner to the WHOLE committee.

A data owner runs :func:`build_upload` once per round and sends the result to one member;
members hand each other copies (:mod:`cohort.aggregator.replication`). A copy keeps every
signed field and the signature; only the seal changes: the payload travels sealed (RFC 9180
HPKE base mode, :func:`~cohort.crypto.identity.seal_to`) to whichever member holds that
copy, so each hop is readable by its recipient alone. The Ed25519 signature covers::

    tagged_hash(Tag.COMMITTEE_UPLOAD, study_id, u64(round), sender, committee, payload_hash,
                nonce)

with ``committee = committee_address(members)`` (the addressee: every member, not one) and
``payload_hash = tagged_hash(Tag.PAYLOAD, payload)`` over the plain payload. As in
:mod:`cohort.crypto.envelope`, the signature does not cover the sealed bytes: the payload
hash, checked after unsealing, binds them. The tag differs from the per-member envelope's,
so neither kind's signature verifies as the other.

Wire framing (big-endian)::

    "CHCU" | u8 version=2 | u32-prefixed study_id (UTF-8) | u32-prefixed round (u64)
    | u32-prefixed sender | u32-prefixed committee (32) | u32-prefixed payload_hash (32)
    | u32-prefixed nonce (16) | u64-prefixed sealed_payload | u32-prefixed signature (64)

Version 2 seals with HPKE; version 1 sealed with libsodium's SealedBox (XSalsa20-Poly1305)
and is refused by :meth:`CommitteeUpload.from_bytes` ("unsupported version 1, expected 2").
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cohort.crypto import framing
from cohort.crypto.envelope import (
    MAX_SEALED_PAYLOAD,
    MAX_STUDY_ID_BYTES,
    NONCE_SIZE,
    SEALED_BOX_OVERHEAD,
)
from cohort.crypto.hashing import DIGEST_SIZE, Tag, tagged_hash
from cohort.crypto.identity import (
    MAX_PARTY_ID_BYTES,
    SIGNATURE_SIZE,
    Identity,
    PublicIdentity,
    check_party_id,
    seal_to,
    verify_signature,
)
from cohort.errors import BadInputError, VerificationError

MAGIC = b"CHCU"
VERSION = 2  # 2: payload sealed with HPKE (1: nacl SealedBox)


def committee_address(members: Sequence[PublicIdentity]) -> bytes:
    """The addressee of an upload: ``tagged_hash(COMMITTEE_ADDRESS, id, sign key, box key,
    ...)`` over the members sorted by id. Run by data owners and members alike."""
    ordered = sorted(members, key=lambda m: m.party_id)
    if not ordered or len({m.party_id for m in ordered}) != len(ordered):
        raise BadInputError("committee upload: the committee must be distinct members")
    parts = [p for m in ordered for p in (m.party_id.encode("utf-8"), m.sign_key, m.box_key)]
    return tagged_hash(Tag.COMMITTEE_ADDRESS, *parts)


def upload_digest(
    *,
    study_id: str,
    round: int,
    sender: str,
    committee: bytes,
    payload_hash: bytes,
    nonce: bytes,
) -> bytes:
    """The 32-byte digest the data owner signs (see the module docstring)."""
    return tagged_hash(
        Tag.COMMITTEE_UPLOAD,
        study_id.encode("utf-8"),
        framing.u64(round),
        sender.encode("utf-8"),
        committee,
        payload_hash,
        nonce,
    )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BadInputError(f"committee upload: {message}")


@dataclass(frozen=True, repr=False)
class CommitteeUpload:
    """One signed upload, sealed to its current holder. Validated on construction."""

    study_id: str
    round: int
    sender: str
    committee: bytes
    payload_hash: bytes
    nonce: bytes
    sealed_payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        study = self.study_id
        _check(
            isinstance(study, str)
            and bool(study)
            and study.isprintable()
            and len(study.encode("utf-8")) <= MAX_STUDY_ID_BYTES,
            f"study_id must be non-empty printable text of at most {MAX_STUDY_ID_BYTES} bytes",
        )
        number = self.round
        _check(
            isinstance(number, int) and not isinstance(number, bool),
            "round must be an integer",
        )
        _check(0 <= number <= framing.U64_MAX, "round must be in [0, 2**64)")
        try:
            check_party_id(self.sender, "sender")
        except BadInputError as exc:
            raise BadInputError(f"committee upload: {exc}") from None
        for name, size in (
            ("committee", DIGEST_SIZE),
            ("payload_hash", DIGEST_SIZE),
            ("nonce", NONCE_SIZE),
            ("signature", SIGNATURE_SIZE),
        ):
            value = getattr(self, name)
            _check(isinstance(value, bytes) and len(value) == size, f"{name} must be {size} bytes")
        sealed = self.sealed_payload
        _check(
            isinstance(sealed, bytes) and SEALED_BOX_OVERHEAD <= len(sealed) <= MAX_SEALED_PAYLOAD,
            f"sealed_payload must be {SEALED_BOX_OVERHEAD} bytes to 1 TiB",
        )

    def __repr__(self) -> str:
        return (
            f"CommitteeUpload(study={self.study_id[:16]}, round={self.round}, "
            f"sender={self.sender!r}, sealed=<{len(self.sealed_payload)} bytes>)"
        )

    def signed_digest(self) -> bytes:
        """The 32-byte digest the sender's signature covers."""
        return upload_digest(
            study_id=self.study_id,
            round=self.round,
            sender=self.sender,
            committee=self.committee,
            payload_hash=self.payload_hash,
            nonce=self.nonce,
        )

    def sealed_for(self, holder: PublicIdentity, payload: bytes) -> CommitteeUpload:
        """The same signed upload with ``payload`` sealed to ``holder``: what a member
        relays to another. Whether ``payload`` is the signed one is the holder's check."""
        return CommitteeUpload(
            study_id=self.study_id,
            round=self.round,
            sender=self.sender,
            committee=self.committee,
            payload_hash=self.payload_hash,
            nonce=self.nonce,
            sealed_payload=seal_to(holder, payload),
            signature=self.signature,
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
                framing.prefixed(self.committee),
                framing.prefixed(self.payload_hash),
                framing.prefixed(self.nonce),
                framing.prefixed64(self.sealed_payload),
                framing.prefixed(self.signature),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CommitteeUpload:
        """Parse the wire form; BadInputError("committee upload: ...") naming the field."""
        r = framing.Reader(data, "committee upload")
        r.magic(MAGIC)
        r.version(VERSION)
        study_id = r.text("study_id", max_size=MAX_STUDY_ID_BYTES)
        round_bytes = r.prefixed("round", max_size=8, exact=8)
        sender = r.text("sender", max_size=MAX_PARTY_ID_BYTES)
        committee = r.prefixed("committee", max_size=DIGEST_SIZE, exact=DIGEST_SIZE)
        payload_hash = r.prefixed("payload_hash", max_size=DIGEST_SIZE, exact=DIGEST_SIZE)
        nonce = r.prefixed("nonce", max_size=NONCE_SIZE, exact=NONCE_SIZE)
        sealed = r.prefixed64("sealed_payload", max_size=MAX_SEALED_PAYLOAD)
        signature = r.prefixed("signature", max_size=SIGNATURE_SIZE, exact=SIGNATURE_SIZE)
        r.end()
        return cls(
            study_id=study_id,
            round=int.from_bytes(round_bytes, "big"),
            sender=sender,
            committee=committee,
            payload_hash=payload_hash,
            nonce=nonce,
            sealed_payload=sealed,
            signature=signature,
        )


def build_upload(
    sender: Identity,
    committee: Sequence[PublicIdentity],
    holder: PublicIdentity,
    *,
    study_id: str,
    round: int,
    payload: bytes,
    nonce: bytes | None = None,
    payload_hash: bytes | None = None,
) -> CommitteeUpload:
    """Run by a data owner: sign ``payload`` for the whole ``committee`` and seal it to
    ``holder``, the member it is sent to (one of the committee).

    ``nonce`` (16 bytes) is drawn at random unless given (fixed nonces are for test
    vectors). ``payload_hash`` is ``tagged_hash(Tag.PAYLOAD, payload)`` when the caller
    already has it; a wrong one only makes members refuse the upload.
    """
    if not isinstance(payload, bytes):
        raise BadInputError("committee upload: payload must be bytes")
    if holder not in committee:
        raise BadInputError(f"committee upload: {holder.party_id!r} is not in the committee")
    nonce = secrets.token_bytes(NONCE_SIZE) if nonce is None else nonce
    payload_hash = tagged_hash(Tag.PAYLOAD, payload) if payload_hash is None else payload_hash
    unsigned = CommitteeUpload(
        study_id=study_id,
        round=round,
        sender=sender.party_id,
        committee=committee_address(committee),
        payload_hash=payload_hash,
        nonce=nonce,
        sealed_payload=seal_to(holder, payload),
        signature=bytes(SIGNATURE_SIZE),
    )
    return dataclasses.replace(unsigned, signature=sender.sign(unsigned.signed_digest()))


class UploadCheck(enum.StrEnum):
    """Which check of :func:`open_upload` failed, in the order they run."""

    STUDY = "study"
    ROUND = "round"
    COMMITTEE = "committee"
    SENDER = "sender"
    SIGNATURE = "signature"
    SEAL = "seal"
    PAYLOAD_HASH = "payload_hash"


class UploadRefused(VerificationError):
    """An upload failed :func:`open_upload`; ``check`` says which check."""

    def __init__(self, check: UploadCheck, message: str) -> None:
        super().__init__(message)
        self.check = check


def open_upload(
    upload: CommitteeUpload,
    *,
    holder: Identity,
    sender: PublicIdentity,
    committee: bytes,
    study_id: str,
    round: int,
) -> bytes:
    """Run by a committee member: verify ``upload`` (or a copy of it) and return the payload.

    Checks, in order: study, round, addressee (``committee``, the receiver's
    :func:`committee_address`), sender id, signature, unseal (with ``holder``'s key),
    payload hash. The first failure raises :class:`UploadRefused` naming that check. Replay
    and duplicate detection across uploads is the member's job, not this function's.
    """
    if upload.study_id != study_id:
        raise UploadRefused(
            UploadCheck.STUDY, f"upload for study {upload.study_id!r}, expected study {study_id!r}"
        )
    if upload.round != round:
        raise UploadRefused(
            UploadCheck.ROUND, f"upload for round {upload.round}, expected round {round}"
        )
    if not hmac.compare_digest(upload.committee, committee):
        raise UploadRefused(UploadCheck.COMMITTEE, "upload is addressed to another committee")
    if upload.sender != sender.party_id:
        raise UploadRefused(
            UploadCheck.SENDER,
            f"upload from {upload.sender!r}, expected sender {sender.party_id!r}",
        )
    try:
        verify_signature(sender, upload.signed_digest(), upload.signature)
    except VerificationError:
        raise UploadRefused(
            UploadCheck.SIGNATURE, f"signature does not verify for sender {sender.party_id}"
        ) from None
    try:
        payload = holder.unseal(upload.sealed_payload)
    except VerificationError:
        raise UploadRefused(
            UploadCheck.SEAL, f"sealed payload does not open for holder {holder.party_id}"
        ) from None
    if not hmac.compare_digest(tagged_hash(Tag.PAYLOAD, payload), upload.payload_hash):
        raise UploadRefused(UploadCheck.PAYLOAD_HASH, "payload hash mismatch")
    return payload
