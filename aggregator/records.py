"""What a committee member answers: upload verdicts and their reasons, signed aggregates,
status, and the outcome of copying uploads from other members.

Plain records shared by the member (:mod:`cohort.aggregator.member`), its gRPC face
(:mod:`cohort.aggregator.service`, :mod:`cohort.aggregator.client`) and the coordinator;
no protocol logic.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import PublicIdentity
from cohort.errors import BadInputError, ProtocolAbort, VerificationError

_MAX_ROUND = 2**64 - 1


def study_id_bytes(study_id: str) -> bytes:
    """32-byte study id used on chain: ``tagged_hash(Tag.STUDY_ID, study_id)``."""
    return tagged_hash(Tag.STUDY_ID, study_id.encode("utf-8"))


def aggregate_result_digest(
    *, study_id: str, round: int, client_ids: Sequence[str], aggregate_hash: bytes
) -> bytes:
    """What a member's Ed25519 signature covers:
    ``tagged_hash(AGGREGATE_RESULT, study_id, u64 round, client_set_hash(S), aggregate_hash)``.
    """
    if not 0 <= round <= _MAX_ROUND:
        raise BadInputError(f"round must be in 0..2^64-1, got {round}")
    return tagged_hash(
        Tag.AGGREGATE_RESULT,
        study_id.encode("utf-8"),
        round.to_bytes(8, "big"),
        client_set_hash(tuple(client_ids)),
        aggregate_hash,
    )


# --------------------------------------------------------------------------- verdicts


class Reason(enum.StrEnum):
    """Why an upload, or a copy of one fetched from another member, was refused. The wire
    carries the value. The last five concern copies (and committee uploads) only."""

    MALFORMED = "malformed"
    NOT_CONFIGURED = "not_configured"
    WRONG_STUDY = "wrong_study"
    ROUND_NOT_OPEN = "round_not_open"
    WRONG_ROUND = "wrong_round"
    DEADLINE_PASSED = "deadline_passed"
    WRONG_RECIPIENT = "wrong_recipient"
    UNKNOWN_SENDER = "unknown_sender"
    REPLAYED_NONCE = "replayed_nonce"
    BAD_SIGNATURE = "bad_signature"
    UNSEAL_FAILED = "unseal_failed"
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"
    DUPLICATE_SENDER = "duplicate_sender"
    MODE_CHECK_FAILED = "mode_check_failed"
    WRONG_ADDRESSEE = "wrong_addressee"
    WRONG_SENDER = "wrong_sender"
    RECEIPT_MISMATCH = "receipt_mismatch"
    WITHHELD = "withheld"
    BAD_RECEIPT = "bad_receipt"

    @property
    def error(self) -> type[BadInputError | VerificationError | ProtocolAbort]:
        """The Cohort error type a rejection with this reason is reported as."""
        return _REASON_ERRORS[self]


_REASON_ERRORS: dict[Reason, type[BadInputError | VerificationError | ProtocolAbort]] = {
    Reason.MALFORMED: BadInputError,
    Reason.MODE_CHECK_FAILED: BadInputError,
    Reason.NOT_CONFIGURED: ProtocolAbort,
    Reason.ROUND_NOT_OPEN: ProtocolAbort,
    Reason.WRONG_ROUND: ProtocolAbort,
    Reason.DEADLINE_PASSED: ProtocolAbort,
    Reason.DUPLICATE_SENDER: ProtocolAbort,
    Reason.WRONG_STUDY: VerificationError,
    Reason.WRONG_RECIPIENT: VerificationError,
    Reason.UNKNOWN_SENDER: VerificationError,
    Reason.REPLAYED_NONCE: VerificationError,
    Reason.BAD_SIGNATURE: VerificationError,
    Reason.UNSEAL_FAILED: VerificationError,
    Reason.PAYLOAD_HASH_MISMATCH: VerificationError,
    Reason.WRONG_ADDRESSEE: VerificationError,
    Reason.WRONG_SENDER: VerificationError,
    Reason.RECEIPT_MISMATCH: VerificationError,
    Reason.WITHHELD: ProtocolAbort,
    Reason.BAD_RECEIPT: VerificationError,
}


@dataclass(frozen=True)
class Verdict:
    """A member's answer to one upload. ``reason`` is None exactly when accepted."""

    member_id: str
    accepted: bool
    sender: str
    round: int | None
    reason: Reason | None = None
    detail: str = ""
    payload_hash: bytes = b""
    receipt: bytes = b""  # the member's signed UploadReceipt (committee uploads only)

    def raise_if_rejected(self) -> None:
        """Raise the Cohort error matching ``reason`` (message starts with the reason code)."""
        if self.reason is not None:
            raise self.reason.error(f"{self.reason.value}: {self.detail}")


@dataclass(frozen=True)
class Rejection:
    """How many uploads from ``sender`` ("" = unknown/unreadable) were rejected, and why."""

    sender: str
    reason: Reason
    count: int


@dataclass(frozen=True, repr=False)
class AggregateResult:
    """A member's signed aggregate of one round over client set ``client_ids``."""

    member_id: str
    study_id: str
    round: int
    client_ids: tuple[str, ...]
    aggregate: bytes
    aggregate_hash: bytes
    signature: bytes
    eth_address: str
    eth_signature: bytes
    rejections: tuple[Rejection, ...] = ()

    def __repr__(self) -> str:
        return (
            f"AggregateResult(member_id={self.member_id!r}, study_id={self.study_id[:16]!r}, "
            f"round={self.round}, clients={len(self.client_ids)}, "
            f"aggregate=<{len(self.aggregate)} bytes>, hash={self.aggregate_hash.hex()[:16]})"
        )

    def to_record(self) -> str:
        """Everything but the aggregate bytes, as JSON (how the store keeps it)."""
        return json.dumps(
            {
                "member_id": self.member_id,
                "study_id": self.study_id,
                "round": self.round,
                "client_ids": list(self.client_ids),
                "aggregate_hash": self.aggregate_hash.hex(),
                "signature": self.signature.hex(),
                "eth_address": self.eth_address,
                "eth_signature": self.eth_signature.hex(),
                "rejections": [[r.sender, r.reason.value, r.count] for r in self.rejections],
            },
            sort_keys=True,
        )

    @classmethod
    def from_record(cls, record: str, aggregate: bytes) -> AggregateResult:
        doc = json.loads(record)
        return cls(
            member_id=doc["member_id"],
            study_id=doc["study_id"],
            round=doc["round"],
            client_ids=tuple(doc["client_ids"]),
            aggregate=aggregate,
            aggregate_hash=bytes.fromhex(doc["aggregate_hash"]),
            signature=bytes.fromhex(doc["signature"]),
            eth_address=doc["eth_address"],
            eth_signature=bytes.fromhex(doc["eth_signature"]),
            rejections=tuple(Rejection(s, Reason(r), c) for s, r, c in doc["rejections"]),
        )


@dataclass(frozen=True)
class MemberInfo:
    """The public face of a member, as listed in the committee roster."""

    member_id: str
    identity: PublicIdentity
    eth_address: str


@dataclass(frozen=True)
class PublicStatus:
    """Answer to Info (anyone may ask): who the member is and what it can run. Nothing
    about studies, rounds or senders."""

    info: MemberInfo
    modes: tuple[str, ...]
    tls_fingerprint: bytes = b""


@dataclass(frozen=True)
class StudyStatus:
    """Answer to a signed Status call (the coordinator only): where one study stands.

    ``received`` lists the senders with an accepted upload in the open round, so the
    coordinator can pick a client set S every member holds (a member signs one S a round).
    """

    study_id: str
    open_round: int | None
    highest_round: int
    received: tuple[str, ...]
    aggregated: tuple[int, ...]
    copy_failures: tuple[CopyFailure, ...] = ()


# --------------------------------------------------------------------------- copies


class Blame(enum.StrEnum):
    """What a refused copy says about the member that relayed it."""

    WITHHELD = "withheld"  # signed a receipt, did not hand the copy over
    ALTERED = "altered"  # handed over something other than what the data owner signed


_NO_BLAME = frozenset({Reason.BAD_RECEIPT, Reason.DUPLICATE_SENDER, Reason.ROUND_NOT_OPEN})


@dataclass(frozen=True)
class CopyFailure:
    """A copy of ``sender``'s upload this member could not take from ``relayer``, and why.

    ``reason`` is ``withheld`` when the relayer did not hand a copy over (unreachable,
    refused, too slow), ``bad_receipt`` when the receipt in the Replicate call does not
    verify (nothing was fetched), otherwise the check the copy failed (the upload reasons,
    plus ``wrong_sender`` and ``receipt_mismatch``).
    """

    sender: str
    relayer: str
    reason: Reason
    detail: str = ""

    @property
    def blame(self) -> Blame | None:
        """What this failure says about ``relayer`` (None: nothing, e.g. a bad receipt)."""
        if self.reason is Reason.WITHHELD:
            return Blame.WITHHELD
        if self.reason in _NO_BLAME:
            return None
        return Blame.ALTERED


@dataclass(frozen=True)
class Holding:
    """One upload a member holds in the open round: whose, and the hash of its payload."""

    sender: str
    payload_hash: bytes


@dataclass(frozen=True)
class Replication:
    """A member's answer to a signed Replicate call: what it holds in the round after
    fetching, and every copy it could not take (this call and earlier ones)."""

    round: int
    held: tuple[Holding, ...]
    failures: tuple[CopyFailure, ...]

    def holds(self, sender: str, payload_hash: bytes) -> bool:
        return Holding(sender, payload_hash) in self.held
