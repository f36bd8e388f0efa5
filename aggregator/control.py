"""Signed control calls: how the coordinator tells a committee member what to do.

Every coordinator call (Configure, OpenRound, Replicate, Aggregate, Status) travels as one
:class:`SignedControl`: the study id, the call's kind, a counter and the serialized inner
request (the *body*), signed with Ed25519 by the manifest's coordinator key over::

    tagged_hash(Tag.CONTROL, bytes.fromhex(study_id), utf8(recipient member id),
                utf8(kind), u64be(counter), body)

The recipient is in the digest, so a call signed for one member is worthless at another.
A member verifies the signature *before* it parses the body, and accepts a counter only if it
is strictly greater than the last one it accepted for that study (persisted, so neither a
replay nor a restart brings an old call back). :class:`ControlSigner` (run by the
coordinator) draws counters from ``max(last + 1, time.time_ns())``, so they keep rising
across coordinator restarts.

Refusals carry a :class:`Refusal` code: the message starts with ``"<code>: "`` and the error
type says whether it was bad input, tampering or a protocol state problem.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from google.protobuf.message import DecodeError, Message

from cohort.aggregator.modes import CkksSpec, ModeSpec, MpcSpec
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.crypto.hashing import Tag, is_digest_hex, tagged_hash
from cohort.crypto.identity import SIGNATURE_SIZE, Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, CohortError, ProtocolAbort, VerificationError

U64_MAX = 2**64 - 1


class ControlKind(enum.StrEnum):
    """Which coordinator call a :class:`SignedControl` is (part of the signed digest)."""

    CONFIGURE = "configure"
    OPEN_ROUND = "open_round"
    AGGREGATE = "aggregate"
    STATUS = "status"
    REPLICATE = "replicate"
    VALIDATE = "validate"
    CONFIRM = "confirm"


class Refusal(enum.StrEnum):
    """Why a member refused a control call. The error message starts with the value."""

    MALFORMED_CONTROL = "malformed_control"
    WRONG_KIND = "wrong_kind"
    NOT_APPROVED = "not_approved"
    NOT_CONFIGURED = "not_configured"
    BAD_CONTROL_SIGNATURE = "bad_control_signature"
    STALE_COUNTER = "stale_counter"
    MANIFEST_MISMATCH = "manifest_mismatch"
    NOT_IN_COMMITTEE = "not_in_committee"
    UNSUPPORTED_MODE = "unsupported_mode"
    BAD_SETUP = "bad_setup"
    BAD_DEALER_SIGNATURE = "bad_dealer_signature"
    SETUP_CONFLICT = "setup_conflict"
    ROUND_OUT_OF_RANGE = "round_out_of_range"
    ROUND_NOT_AFTER = "round_not_after"
    ROUND_NOT_OPEN = "round_not_open"
    BAD_CLIENT_SET = "bad_client_set"
    NOT_IN_ROSTER = "not_in_roster"
    CLIENT_SET_TOO_SMALL = "client_set_too_small"
    CLIENT_SET_CHANGED = "client_set_changed"
    MISSING_UPLOADS = "missing_uploads"
    # MPC: validation and confirmation.
    BAD_PARTICIPANTS = "bad_participants"
    NOT_VALIDATED = "not_validated"
    VALIDATION_FAILED = "validation_failed"
    VALIDATION_LIMIT = "validation_limit"
    BAD_PARTIAL = "bad_partial"
    NOT_AGGREGATED = "not_aggregated"
    CONFIRM_CONFLICT = "confirm_conflict"
    # Fetch (member to member): why a member refused to hand over a copy.
    MALFORMED_FETCH = "malformed_fetch"
    UNKNOWN_REQUESTER = "unknown_requester"
    WRONG_RESPONDER = "wrong_responder"
    BAD_FETCH_SIGNATURE = "bad_fetch_signature"
    NOT_HELD = "not_held"
    # FetchAggregate (data owner to member): why a member refused to hand over an aggregate.
    NOT_IN_CLIENT_SET = "not_in_client_set"

    def error(self, detail: str) -> CohortError:
        """The Cohort error for this refusal, its message ``"<code>: <detail>"``."""
        return _REFUSAL_ERRORS[self](f"{self.value}: {detail}")


_REFUSAL_ERRORS: dict[Refusal, type[CohortError]] = {
    Refusal.MALFORMED_CONTROL: BadInputError,
    Refusal.WRONG_KIND: BadInputError,
    Refusal.UNSUPPORTED_MODE: BadInputError,
    Refusal.BAD_SETUP: BadInputError,
    Refusal.ROUND_OUT_OF_RANGE: BadInputError,
    Refusal.BAD_CLIENT_SET: BadInputError,
    Refusal.NOT_IN_ROSTER: BadInputError,
    Refusal.CLIENT_SET_TOO_SMALL: BadInputError,
    Refusal.NOT_APPROVED: VerificationError,
    Refusal.BAD_CONTROL_SIGNATURE: VerificationError,
    Refusal.STALE_COUNTER: VerificationError,
    Refusal.MANIFEST_MISMATCH: VerificationError,
    Refusal.NOT_IN_COMMITTEE: VerificationError,
    Refusal.BAD_DEALER_SIGNATURE: VerificationError,
    Refusal.NOT_CONFIGURED: ProtocolAbort,
    Refusal.SETUP_CONFLICT: ProtocolAbort,
    Refusal.ROUND_NOT_AFTER: ProtocolAbort,
    Refusal.ROUND_NOT_OPEN: ProtocolAbort,
    Refusal.CLIENT_SET_CHANGED: ProtocolAbort,
    Refusal.MISSING_UPLOADS: ProtocolAbort,
    Refusal.BAD_PARTICIPANTS: BadInputError,
    Refusal.NOT_VALIDATED: ProtocolAbort,
    Refusal.VALIDATION_FAILED: ProtocolAbort,
    Refusal.VALIDATION_LIMIT: VerificationError,
    Refusal.BAD_PARTIAL: VerificationError,
    Refusal.NOT_AGGREGATED: ProtocolAbort,
    Refusal.CONFIRM_CONFLICT: ProtocolAbort,
    Refusal.MALFORMED_FETCH: BadInputError,
    Refusal.UNKNOWN_REQUESTER: VerificationError,
    Refusal.WRONG_RESPONDER: VerificationError,
    Refusal.BAD_FETCH_SIGNATURE: VerificationError,
    Refusal.NOT_HELD: ProtocolAbort,
    Refusal.NOT_IN_CLIENT_SET: VerificationError,
}


def check_study_hex(study_id: object) -> bytes:
    """The 32 bytes of a study id given as 64 lower-case hex digits; BadInputError otherwise."""
    if not is_digest_hex(study_id):
        raise Refusal.MALFORMED_CONTROL.error("study id must be a manifest hash (64 hex digits)")
    return bytes.fromhex(study_id)


def control_digest(
    *, study_id: str, recipient: str, kind: ControlKind, counter: int, body: bytes
) -> bytes:
    """What the coordinator signs for one control call (see module doc)."""
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter <= U64_MAX:
        raise Refusal.MALFORMED_CONTROL.error("counter must be in 0..2^64-1")
    return tagged_hash(
        Tag.CONTROL,
        check_study_hex(study_id),
        recipient.encode("utf-8"),
        ControlKind(kind).value.encode("utf-8"),
        counter.to_bytes(8, "big"),
        body,
    )


@dataclass(frozen=True, repr=False)
class SignedControl:
    """One signed coordinator call, as it travels (``body`` still serialized)."""

    study_id: str
    kind: ControlKind
    counter: int
    body: bytes
    signature: bytes

    def __repr__(self) -> str:
        return (
            f"SignedControl(study={self.study_id[:16]}, kind={self.kind.value}, "
            f"counter={self.counter}, body=<{len(self.body)} bytes>)"
        )

    def to_proto(self) -> pb.SignedControl:
        return pb.SignedControl(
            study_id=self.study_id,
            kind=self.kind.value,
            counter=self.counter,
            body=self.body,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, msg: pb.SignedControl) -> SignedControl:
        """Decode the envelope fields only (BadInputError ``malformed_control``)."""
        check_study_hex(msg.study_id)
        try:
            kind = ControlKind(msg.kind)
        except ValueError:
            raise Refusal.MALFORMED_CONTROL.error(f"unknown kind {msg.kind[:32]!r}") from None
        return cls(msg.study_id, kind, msg.counter, msg.body, msg.signature)

    def verify(self, *, recipient: str, coordinator: PublicIdentity, kind: ControlKind) -> None:
        """Run by the member before anything else: the call is of ``kind`` and signed by
        ``coordinator`` for ``recipient``. The counter is the caller's to check."""
        if self.kind is not kind:
            raise Refusal.WRONG_KIND.error(f"a {self.kind.value} call sent as {kind.value}")
        if len(self.signature) != SIGNATURE_SIZE:
            raise Refusal.BAD_CONTROL_SIGNATURE.error("the call is not signed")
        digest = control_digest(
            study_id=self.study_id,
            recipient=recipient,
            kind=self.kind,
            counter=self.counter,
            body=self.body,
        )
        try:
            verify_signature(coordinator, digest, self.signature)
        except VerificationError:
            raise Refusal.BAD_CONTROL_SIGNATURE.error(
                f"{self.kind.value} call is not signed by the study's coordinator for {recipient!r}"
            ) from None


# --------------------------------------------------------------------------- bodies


def _parse(message: Message, data: bytes, what: str) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise Refusal.MALFORMED_CONTROL.error(f"{what} body does not parse") from None


@dataclass(frozen=True, repr=False)
class ConfigureBody:
    """Configure: the signed manifest the operator approved and the mode set-up."""

    signed_manifest: bytes
    setup: ModeSpec

    KIND: ClassVar[ControlKind] = ControlKind.CONFIGURE

    def __repr__(self) -> str:
        return f"ConfigureBody(manifest=<{len(self.signed_manifest)} bytes>, setup={self.setup})"

    def to_bytes(self) -> bytes:
        msg = pb.ConfigureBody(signed_manifest=self.signed_manifest)
        if isinstance(self.setup, CkksSpec):
            msg.ckks.public_context = self.setup.public_context
            msg.ckks.dealer_signature = self.setup.dealer_signature
        elif isinstance(self.setup, MpcSpec):
            msg.mpc.terms_digest = self.setup.terms
        else:
            raise BadInputError(f"configure: mode {self.setup.name!r} has no wire form")
        return msg.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfigureBody:
        msg = pb.ConfigureBody()
        _parse(msg, data, "configure")
        which = msg.WhichOneof("setup")
        setup: ModeSpec
        if which == "ckks":
            setup = CkksSpec(msg.ckks.public_context, msg.ckks.dealer_signature)
        elif which == "mpc":
            setup = MpcSpec(msg.mpc.terms_digest)
        else:
            raise Refusal.UNSUPPORTED_MODE.error("configure: mode set-up missing or unsupported")
        return cls(msg.signed_manifest, setup)


@dataclass(frozen=True)
class OpenRoundBody:
    """OpenRound: the round number and an optional upload deadline (unix seconds)."""

    round: int
    deadline: float | None = None

    KIND: ClassVar[ControlKind] = ControlKind.OPEN_ROUND

    def to_bytes(self) -> bytes:
        msg = pb.OpenRoundBody(round=self.round)
        if self.deadline is not None:
            msg.deadline = self.deadline
        return msg.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenRoundBody:
        msg = pb.OpenRoundBody()
        _parse(msg, data, "open_round")
        return cls(msg.round, msg.deadline if msg.HasField("deadline") else None)


@dataclass(frozen=True)
class AggregateBody:
    """Aggregate: the round, the client set S and the owners' signed ledger commitments
    (:class:`cohort.clients.ledger_commitment.LedgerCommitment` wire forms, as relayed; the
    member verifies each against the owner's key, the coordinator cannot forge one)."""

    round: int
    client_ids: tuple[str, ...]
    ledger_commitments: tuple[bytes, ...] = ()

    KIND: ClassVar[ControlKind] = ControlKind.AGGREGATE

    def to_bytes(self) -> bytes:
        return pb.AggregateBody(
            round=self.round,
            client_ids=self.client_ids,
            ledger_commitments=self.ledger_commitments,
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> AggregateBody:
        msg = pb.AggregateBody()
        _parse(msg, data, "aggregate")
        return cls(msg.round, tuple(msg.client_ids), tuple(msg.ledger_commitments))


@dataclass(frozen=True)
class ValidateBody:
    """Validate (MPC): check the norms of the candidates' updates inside MPC, run by the
    ``participants`` (sorted member ids, at least the threshold) together."""

    round: int
    client_ids: tuple[str, ...]
    participants: tuple[str, ...]

    KIND: ClassVar[ControlKind] = ControlKind.VALIDATE

    def to_bytes(self) -> bytes:
        return pb.ValidateBody(
            round=self.round, client_ids=self.client_ids, participants=self.participants
        ).SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> ValidateBody:
        msg = pb.ValidateBody()
        _parse(msg, data, "validate")
        return cls(msg.round, tuple(msg.client_ids), tuple(msg.participants))


@dataclass(frozen=True, repr=False)
class SignedPartial:
    """One member's signed partial result (MPC), as relayed inside a Confirm call."""

    member_id: str
    partial: bytes
    signature: bytes

    def __repr__(self) -> str:
        return f"SignedPartial({self.member_id!r}, <{len(self.partial)} bytes>)"


@dataclass(frozen=True)
class ConfirmBody:
    """Confirm (MPC): the client set as aggregated, the owners' ledger commitments and the
    members' signed partials the coordinator reconstructed from."""

    round: int
    client_ids: tuple[str, ...]
    ledger_commitments: tuple[bytes, ...]
    partials: tuple[SignedPartial, ...]

    KIND: ClassVar[ControlKind] = ControlKind.CONFIRM

    def to_bytes(self) -> bytes:
        msg = pb.ConfirmBody(
            round=self.round,
            client_ids=self.client_ids,
            ledger_commitments=self.ledger_commitments,
        )
        for part in self.partials:
            msg.partials.add(
                member_id=part.member_id, aggregate=part.partial, signature=part.signature
            )
        return msg.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> ConfirmBody:
        msg = pb.ConfirmBody()
        _parse(msg, data, "confirm")
        partials = tuple(SignedPartial(p.member_id, p.aggregate, p.signature) for p in msg.partials)
        return cls(msg.round, tuple(msg.client_ids), tuple(msg.ledger_commitments), partials)


@dataclass(frozen=True)
class StatusBody:
    """Status: no parameters (the study id is in the signed envelope)."""

    KIND: ClassVar[ControlKind] = ControlKind.STATUS

    def to_bytes(self) -> bytes:
        return pb.StatusBody().SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> StatusBody:
        _parse(pb.StatusBody(), data, "status")
        return cls()


@dataclass(frozen=True, repr=False)
class UploadSource:
    """Where one data owner's upload is: the member that accepted it and the receipt it
    signed (:func:`cohort.aggregator.replication.receipt_digest`), as the owner forwarded it."""

    sender: str
    holder: str
    payload_hash: bytes
    receipt: bytes

    def __repr__(self) -> str:
        return f"UploadSource(sender={self.sender!r}, holder={self.holder!r})"


@dataclass(frozen=True)
class ReplicateBody:
    """Replicate: the round and where each upload is; each member fetches what it lacks."""

    round: int
    sources: tuple[UploadSource, ...]

    KIND: ClassVar[ControlKind] = ControlKind.REPLICATE

    def to_bytes(self) -> bytes:
        msg = pb.ReplicateBody(round=self.round)
        for source in self.sources:
            msg.sources.add(
                sender=source.sender,
                holder=source.holder,
                payload_hash=source.payload_hash,
                receipt=source.receipt,
            )
        return msg.SerializeToString()

    @classmethod
    def from_bytes(cls, data: bytes) -> ReplicateBody:
        msg = pb.ReplicateBody()
        _parse(msg, data, "replicate")
        sources = tuple(
            UploadSource(s.sender, s.holder, s.payload_hash, s.receipt) for s in msg.sources
        )
        return cls(msg.round, sources)


ControlBody = (
    ConfigureBody
    | OpenRoundBody
    | AggregateBody
    | StatusBody
    | ReplicateBody
    | ValidateBody
    | ConfirmBody
)


# --------------------------------------------------------------------------- signer


class ControlSigner:
    """Signs control calls with the coordinator's identity. Run by the coordinator.

    Counters are ``max(last + 1, clock())`` with ``clock`` in nanoseconds (default
    :func:`time.time_ns`), so they rise across calls, recipients and coordinator restarts
    (as long as the wall clock does not run backwards past the last counter). Thread-safe.
    A member accepts a counter only above the last one it accepted for the study, so calls
    to one member must reach it in the order they were signed: sign right before sending,
    and do not have two calls to the same member in flight.
    """

    def __init__(self, identity: Identity, *, clock: Callable[[], int] = time.time_ns) -> None:
        self._identity = identity
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    @property
    def public(self) -> PublicIdentity:
        """The key a manifest names as its ``coordinator_key`` (``public.sign_key``)."""
        return self._identity.public

    def next_counter(self) -> int:
        with self._lock:
            counter = max(self._last + 1, int(self._clock()))
            if counter > U64_MAX:
                raise ProtocolAbort("control signer: counter would pass 2^64-1")
            self._last = counter
            return counter

    def sign(self, study_id: str, recipient: str, body: ControlBody) -> SignedControl:
        """A :class:`SignedControl` carrying ``body`` for member ``recipient``."""
        payload = body.to_bytes()
        counter = self.next_counter()
        digest = control_digest(
            study_id=study_id, recipient=recipient, kind=body.KIND, counter=counter, body=payload
        )
        return SignedControl(study_id, body.KIND, counter, payload, self._identity.sign(digest))


def canonical_client_ids(client_ids: Sequence[str]) -> tuple[str, ...]:
    """The client set S sorted canonically; BadInputError ``bad_client_set`` if it is empty,
    holds a non-text or empty id, or repeats an id."""
    ids = tuple(client_ids)
    if not ids:
        raise Refusal.BAD_CLIENT_SET.error("client set is empty")
    if any(not isinstance(cid, str) or not cid for cid in ids):
        raise Refusal.BAD_CLIENT_SET.error("client ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        raise Refusal.BAD_CLIENT_SET.error("client set repeats an id")
    return tuple(sorted(ids))
