"""One committee member: verify uploads, aggregate the agreed client set, sign the result.

Pure protocol logic, no gRPC (``cohort.aggregator.service`` wraps it). The member holds its
key store (:class:`~cohort.aggregator.keys.MemberKeys`: Identity and Ethereum key) and a work
directory with its operator's approvals (``studies/<id>/``, written by
:func:`cohort.federation.approval.approve`) and its state (``state.sqlite``,
:class:`~cohort.aggregator.store.MemberStore`). Per study:

1. the coordinator sends a signed Configure (:meth:`CommitteeMember.configure`) naming a
   manifest the operator approved, with the key dealer's signed mode set-up;
2. per round the coordinator sends a signed OpenRound (:meth:`CommitteeMember.open_round`);
   data owners upload one envelope each (:meth:`CommitteeMember.accept`); every rejection is
   logged and counted with a :class:`Reason`;
3. the coordinator sends a signed Aggregate over the client set S
   (:meth:`CommitteeMember.aggregate`); the member checks S against the manifest, combines
   the uploads in canonical order, signs the result, attests it for the chain and drops the
   round's uploads.

Every control call is verified (coordinator signature, fresh counter; see
:mod:`cohort.aggregator.control`) before its body is read, and every term comes from the
manifest, never from the call. All state is persisted, so a restarted member resumes where
it stopped and refuses everything it refused or consumed before. Thread-safe.
"""

from __future__ import annotations

import enum
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cohort.aggregator.control import AggregateBody as _AggregateBody
from cohort.aggregator.control import (
    ConfigureBody,
    ControlKind,
    OpenRoundBody,
    Refusal,
    SignedControl,
    StatusBody,
    canonical_client_ids,
)
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.modes import SUPPORTED_MODES, AggregationMode, build_mode
from cohort.aggregator.store import STATE_FILE, MemberStore
from cohort.bounties.attestation import attestation_digest, sign_attestation
from cohort.crypto.envelope import Envelope, open_envelope
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.federation.approval import Role, approved_manifest
from cohort.federation.manifest import Manifest, OwnerEntry, SecureMode, SignedManifest
from cohort.logs import fields, get_logger

log = get_logger(__name__)

KEYS_DIR = "keys"
_MAX_ROUND = 2**64 - 1

__all__ = [
    "KEYS_DIR",
    "AggregateResult",
    "CommitteeMember",
    "MemberInfo",
    "MemberKeys",
    "PublicStatus",
    "Reason",
    "Rejection",
    "StudyStatus",
    "Verdict",
    "aggregate_result_digest",
    "canonical_client_ids",
    "study_id_bytes",
]


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
    """Why an upload was rejected. The wire carries the value."""

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


# --------------------------------------------------------------------------- member


@dataclass(frozen=True)
class _Study:
    study_id: str
    manifest: Manifest
    mode: AggregationMode
    setup_digest: bytes
    owners: dict[str, OwnerEntry]


class _Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CommitteeMember:
    """A committee member's protocol state machine (see module docstring).

    ``workdir`` holds the approvals (``studies/``) and the state (``state.sqlite``); the
    member resumes every study found there. ``tls_fingerprint`` is the SHA-256 of the
    certificate it serves (shown by Info; b"": plaintext). Close it when done.
    """

    def __init__(
        self,
        keys: MemberKeys,
        *,
        workdir: Path,
        clock: Callable[[], float] = time.time,
        tls_fingerprint: bytes = b"",
    ) -> None:
        self._keys = keys
        self._workdir = Path(workdir)
        self._clock = clock
        self._lock = threading.Lock()
        self._info = MemberInfo(keys.identity.party_id, keys.identity.public, keys.eth_address)
        self._public = PublicStatus(self._info, SUPPORTED_MODES, tls_fingerprint)
        self._store = MemberStore(self._workdir / STATE_FILE)
        self._studies: dict[str, _Study] = {}
        try:
            for study_id, body, digest in self._store.studies():
                self._studies[study_id] = self._load(study_id, body, digest)
        except BaseException:
            self._store.close()
            raise
        if self._studies:
            log.info(
                "member resumed",
                extra=fields(member=self.member_id, studies=sorted(self._studies)),
            )

    def _load(self, study_id: str, body: bytes, digest: bytes) -> _Study:
        try:
            configure = ConfigureBody.from_bytes(body)
            manifest = SignedManifest.from_bytes(configure.signed_manifest).verify()
            mode = build_mode(configure.setup)
        except (BadInputError, VerificationError) as exc:
            raise ConfigError(
                f"member state: stored study {study_id[:16]} is unusable: {exc}"
            ) from None
        if manifest.study_id != study_id:
            raise ConfigError(f"member state: stored study {study_id[:16]} has another hash")
        return _Study(study_id, manifest, mode, digest, {o.party_id: o for o in manifest.owners})

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> CommitteeMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def member_id(self) -> str:
        return self._info.member_id

    @property
    def info(self) -> MemberInfo:
        return self._info

    @property
    def workdir(self) -> Path:
        return self._workdir

    def public_status(self) -> PublicStatus:
        """Who this member is and what it runs. Called by anyone (Info RPC); lock-free."""
        return self._public

    # -- control: verification -----------------------------------------------------------

    def _verified(self, control: SignedControl, kind: ControlKind) -> _Study:
        """A configured study's call: signature by its coordinator, then a fresh counter."""
        study = self._studies.get(control.study_id)
        if study is None:
            raise Refusal.NOT_CONFIGURED.error(
                f"member {self.member_id} is not configured for study {control.study_id[:16]}"
            )
        control.verify(recipient=self.member_id, coordinator=study.manifest.coordinator, kind=kind)
        self._advance(control)
        return study

    def _advance(self, control: SignedControl) -> None:
        last = self._store.advance_counter(control.study_id, control.counter)
        if last is not None:
            raise Refusal.STALE_COUNTER.error(
                f"counter {control.counter} is not above the last accepted {last}"
            )

    def _approved(self, study_id: str) -> Manifest:
        try:
            return approved_manifest(self._workdir, study_id, self._keys.identity, Role.MEMBER)
        except (VerificationError, BadInputError) as exc:
            raise Refusal.NOT_APPROVED.error(str(exc)) from None

    # -- coordinator: configure ----------------------------------------------------------

    def configure(self, control: SignedControl) -> str:
        """Bind this member to an approved study. Called by the coordinator once per study.

        Refused unless the operator approved the manifest (``not_approved``), the call is
        signed by that manifest's coordinator with a fresh counter, the body carries that
        same manifest, the manifest lists this member with its keys and Ethereum address,
        and the CKKS context is signed by the manifest's key dealer. Configuring the same
        study again with the same context is a no-op; another context is refused
        (``setup_conflict``). There is no reset: a member holds each study it was given.
        """
        manifest = self._approved(control.study_id)
        control.verify(
            recipient=self.member_id, coordinator=manifest.coordinator, kind=ControlKind.CONFIGURE
        )
        self._advance(control)
        body = ConfigureBody.from_bytes(control.body)
        self._check_manifest(manifest, body.signed_manifest)
        setup = body.setup
        if manifest.secure is not SecureMode.CKKS or setup.name != manifest.secure.value:
            raise Refusal.UNSUPPORTED_MODE.error(
                f"manifest mode {manifest.secure.value!r}, set-up {setup.name!r}; this member "
                f"runs {', '.join(SUPPORTED_MODES)}"
            )
        dealer = manifest.owner(manifest.key_dealer)
        try:
            setup.verify_dealt(manifest.study_id, dealer.identity if dealer else None)
        except VerificationError as exc:
            raise Refusal.BAD_DEALER_SIGNATURE.error(str(exc)) from None
        digest = setup.setup_digest()
        if self._same_setup(manifest.study_id, digest):
            return manifest.study_id
        try:
            mode = build_mode(setup)
        except BadInputError as exc:
            raise Refusal.BAD_SETUP.error(str(exc)) from None
        owners = {o.party_id: o for o in manifest.owners}
        with self._lock:
            if self._same_setup(manifest.study_id, digest):
                return manifest.study_id
            self._store.add_study(manifest.study_id, control.body, digest)
            self._studies[manifest.study_id] = _Study(
                manifest.study_id, manifest, mode, digest, owners
            )
        log.info(
            "study configured",
            extra=fields(
                member=self.member_id,
                study=manifest.study_id,
                mode=mode.name,
                owners=len(owners),
                update_length=manifest.update_length,
                rounds=manifest.rounds,
            ),
        )
        return manifest.study_id

    def _check_manifest(self, manifest: Manifest, signed_bytes: bytes) -> None:
        try:
            sent = SignedManifest.from_bytes(signed_bytes, where="configure manifest")
        except (BadInputError, VerificationError) as exc:
            raise Refusal.MANIFEST_MISMATCH.error(str(exc)) from None
        if sent.study_id != manifest.study_id:
            raise Refusal.MANIFEST_MISMATCH.error(
                f"the call carries manifest {sent.study_id[:16]}, not the approved one"
            )
        entry = manifest.member(self.member_id)
        if entry is None or entry.identity != self._keys.identity.public:
            raise Refusal.NOT_IN_COMMITTEE.error(f"the manifest does not list {self.member_id!r}")
        if entry.eth_address != self._keys.eth_address:
            raise Refusal.NOT_IN_COMMITTEE.error(
                f"the manifest lists {entry.eth_address} for {self.member_id!r}, not this "
                f"member's attestation address {self._keys.eth_address}"
            )
        mine = self._public.tls_fingerprint
        if entry.tls_fingerprint and mine and entry.tls_fingerprint != mine:
            log.warning(
                "manifest pins another TLS certificate",
                extra=fields(member=self.member_id, study=manifest.study_id),
            )

    def _same_setup(self, study_id: str, digest: bytes) -> bool:
        existing = self._studies.get(study_id)
        if existing is None:
            return False
        if existing.setup_digest != digest:
            raise Refusal.SETUP_CONFLICT.error(
                f"study {study_id[:16]} is configured with another mode set-up"
            )
        return True

    # -- coordinator: open a round -------------------------------------------------------

    def open_round(self, control: SignedControl) -> int:
        """Open a round for uploads. Called by the coordinator at the start of a round.

        The round must be in 1..manifest.rounds (``round_out_of_range``) and after every
        round opened before (``round_not_after``); reopening the open round is a no-op.
        Opening a newer round abandons an open round that was never aggregated.
        """
        study = self._verified(control, ControlKind.OPEN_ROUND)
        body = OpenRoundBody.from_bytes(control.body)
        number, rounds = body.round, study.manifest.rounds
        if not 1 <= number <= rounds:
            raise Refusal.ROUND_OUT_OF_RANGE.error(f"round {number}, the manifest has 1..{rounds}")
        if body.deadline is not None and not math.isfinite(body.deadline):
            raise Refusal.MALFORMED_CONTROL.error("deadline must be finite unix seconds")
        with self._lock:
            state = self._store.round_state(study.study_id)
            if state.open_round == number:
                return number
            if number <= state.highest:
                raise Refusal.ROUND_NOT_AFTER.error(
                    f"round {number} is not after round {state.highest}"
                )
            abandoned = self._store.open_round(study.study_id, number, body.deadline)
        if abandoned is not None:
            log.warning(
                "round abandoned",
                extra=fields(member=self.member_id, study=study.study_id, round=abandoned),
            )
        log.info(
            "round opened", extra=fields(member=self.member_id, study=study.study_id, round=number)
        )
        return number

    # -- coordinator: status -------------------------------------------------------------

    def status(self, control: SignedControl) -> StudyStatus:
        """Where a study stands and who uploaded in the open round. Coordinator only."""
        study = self._verified(control, ControlKind.STATUS)
        StatusBody.from_bytes(control.body)
        with self._lock:
            state = self._store.round_state(study.study_id)
            received = (
                self._store.senders(study.study_id, state.open_round)
                if state.open_round is not None
                else ()
            )
            aggregated = self._store.aggregated(study.study_id)
        return StudyStatus(study.study_id, state.open_round, state.highest, received, aggregated)

    # -- data owners: upload -------------------------------------------------------------

    def accept(self, data: bytes) -> Verdict:
        """Verify and store one envelope. Called by a data owner (Upload RPC).

        Never raises for a bad upload: returns a rejected :class:`Verdict` whose reason says
        why (see :class:`Reason`); :meth:`Verdict.raise_if_rejected` turns it into an error.
        The first accepted upload of a sender in a round is kept; nothing accepted is lost.
        """
        try:
            envelope = Envelope.from_bytes(data)
        except (BadInputError, ValueError) as exc:
            return self._reject(None, "", None, Reason.MALFORMED, str(exc), size=len(data))
        sender, number = envelope.sender, envelope.round
        study = self._studies.get(envelope.study_id)
        try:
            study, owner = self._precheck(envelope, study)
            payload = self._authenticate(envelope, owner.identity, study)
            # Authentic: burn the nonce whatever happens next.
            if not self._store.burn_nonce(study.study_id, envelope.nonce):
                raise _Rejected(Reason.REPLAYED_NONCE, "envelope nonce was seen before")
            try:
                study.mode.check(payload, length=study.manifest.update_length)
            except BadInputError as exc:
                raise _Rejected(Reason.MODE_CHECK_FAILED, str(exc)) from exc
            with self._lock:
                self._commit(envelope, study, payload)
        except _Rejected as rejected:
            known = sender if study is not None and sender in study.owners else ""
            return self._reject(
                study, known, number, rejected.reason, rejected.detail, size=len(data)
            )
        log.info(
            "upload accepted",
            extra=fields(member=self.member_id, sender=sender, round=number, size=len(data)),
        )
        return Verdict(self.member_id, True, sender, number, payload_hash=envelope.payload_hash)

    def _precheck(self, envelope: Envelope, study: _Study | None) -> tuple[_Study, OwnerEntry]:
        """Cheap checks in order: study, round, deadline, recipient, sender, nonce."""
        if study is None:
            if not self._studies:
                raise _Rejected(Reason.NOT_CONFIGURED, f"member {self.member_id} has no study")
            raise _Rejected(Reason.WRONG_STUDY, f"envelope is for study {envelope.study_id[:64]!r}")
        state = self._store.round_state(study.study_id)
        if state.open_round is None:
            raise _Rejected(
                Reason.ROUND_NOT_OPEN, f"no round is open (envelope round {envelope.round})"
            )
        if envelope.round != state.open_round:
            raise _Rejected(
                Reason.WRONG_ROUND,
                f"envelope round {envelope.round}, open round {state.open_round}",
            )
        if state.deadline is not None and self._clock() > state.deadline:
            raise _Rejected(Reason.DEADLINE_PASSED, f"round {state.open_round} deadline passed")
        if envelope.recipient != self.member_id:
            raise _Rejected(
                Reason.WRONG_RECIPIENT, f"envelope is addressed to {envelope.recipient!r}"
            )
        owner = study.owners.get(envelope.sender)
        if owner is None:
            raise _Rejected(Reason.UNKNOWN_SENDER, "sender is not in the study roster")
        if self._store.nonce_seen(study.study_id, envelope.nonce):
            raise _Rejected(Reason.REPLAYED_NONCE, "envelope nonce was seen before")
        return study, owner

    def _authenticate(self, envelope: Envelope, sender: PublicIdentity, study: _Study) -> bytes:
        """Signature, unseal and payload hash (outside the lock: unsealing is the slow part)."""
        try:
            return open_envelope(
                envelope,
                recipient=self._keys.identity,
                sender=sender,
                study_id=study.study_id,
                round=envelope.round,
            )
        except VerificationError as exc:
            reason = _classify(envelope, sender, self._keys.identity)
            raise _Rejected(reason, str(exc)) from exc

    def _commit(self, envelope: Envelope, study: _Study, payload: bytes) -> None:
        """Store under the lock, re-checking the round (it may have moved since the precheck)."""
        state = self._store.round_state(study.study_id)
        if state.open_round != envelope.round:
            raise _Rejected(Reason.ROUND_NOT_OPEN, f"round {envelope.round} closed during upload")
        if not self._store.add_upload(
            study.study_id, envelope.round, envelope.sender, payload, envelope.payload_hash
        ):
            raise _Rejected(
                Reason.DUPLICATE_SENDER,
                f"{envelope.sender!r} already uploaded for round {envelope.round}; first kept",
            )

    def _reject(
        self,
        study: _Study | None,
        sender: str,
        number: int | None,
        reason: Reason,
        detail: str,
        *,
        size: int,
    ) -> Verdict:
        if study is not None:
            with self._lock:
                open_round = self._store.round_state(study.study_id).open_round
                if open_round is not None:
                    self._store.count_rejection(study.study_id, open_round, sender, reason.value)
        log.warning(
            "upload rejected",
            extra=fields(
                member=self.member_id,
                sender=sender or None,
                round=number,
                reason=reason.value,
                detail=detail,
                size=size,
            ),
        )
        return Verdict(self.member_id, False, sender, number, reason, detail)

    # -- coordinator: aggregate ----------------------------------------------------------

    def aggregate(self, control: SignedControl) -> AggregateResult:
        """Combine the uploads of client set S for the open round and sign the result.

        Called by the coordinator once S is agreed. S must be distinct ids of the manifest's
        owners (``bad_client_set``, ``not_in_roster``) with at least ``min_clients`` of them
        (``client_set_too_small``). ``missing_uploads`` names the clients of S without an
        accepted upload (the round stays open; retry with a smaller S). Afterwards the
        round's uploads are dropped; asking again with the same S returns the stored signed
        result, with another S it is refused (``client_set_changed``).
        """
        study = self._verified(control, ControlKind.AGGREGATE)
        body = _AggregateBody.from_bytes(control.body)
        manifest, number = study.manifest, body.round
        ids = canonical_client_ids(body.client_ids)
        unknown = [cid for cid in ids if cid not in study.owners]
        if unknown:
            raise Refusal.NOT_IN_ROSTER.error(
                "client set: not in the study roster: " + ", ".join(c[:64] for c in unknown[:8])
            )
        if len(ids) < manifest.min_clients:
            raise Refusal.CLIENT_SET_TOO_SMALL.error(
                f"client set of {len(ids)}, the manifest requires at least {manifest.min_clients}"
            )
        if not 1 <= number <= manifest.rounds:
            raise Refusal.ROUND_OUT_OF_RANGE.error(
                f"round {number}, the manifest has 1..{manifest.rounds}"
            )
        cs_hash = client_set_hash(ids)
        with self._lock:
            stored = self._store.result(study.study_id, number)
            if stored is not None:
                if stored.client_set == cs_hash:
                    return AggregateResult.from_record(stored.record, stored.aggregate)
                raise Refusal.CLIENT_SET_CHANGED.error(
                    f"round {number} was already aggregated over a different client set"
                )
            if self._store.round_state(study.study_id).open_round != number:
                raise Refusal.ROUND_NOT_OPEN.error(f"round {number} is not open")
            have = set(self._store.senders(study.study_id, number))
            missing = [cid for cid in ids if cid not in have]
            if missing:
                raise Refusal.MISSING_UPLOADS.error(
                    f"no accepted upload for round {number} from: " + ", ".join(missing)
                )
            result = self._sign(study, number, ids)
            self._store.finish_round(
                study.study_id,
                number,
                client_set=cs_hash,
                record=result.to_record(),
                aggregate=result.aggregate,
            )
        log.info(
            "round aggregated",
            extra=fields(
                member=self.member_id,
                study=study.study_id,
                round=number,
                clients=len(ids),
                aggregate_hash=result.aggregate_hash.hex(),
                rejected=sum(r.count for r in result.rejections),
            ),
        )
        return result

    def _sign(self, study: _Study, number: int, ids: tuple[str, ...]) -> AggregateResult:
        manifest = study.manifest
        # One upload at a time from disk into a running sum: memory flat in len(ids).
        aggregate = study.mode.combine(self._store.iter_payloads(study.study_id, number, ids))
        aggregate_hash = tagged_hash(Tag.AGGREGATE, aggregate)
        digest = aggregate_result_digest(
            study_id=study.study_id, round=number, client_ids=ids, aggregate_hash=aggregate_hash
        )
        attestation = attestation_digest(
            chain_id=manifest.chain_id,
            contract=manifest.contract,
            study_id=study_id_bytes(study.study_id),
            round=number,
            aggregate_hash=aggregate_hash,
            contributors=[study.owners[cid].payout_address for cid in ids],
        )
        rejections = tuple(
            Rejection(sender, Reason(reason), count)
            for sender, reason, count in self._store.rejections(study.study_id, number)
        )
        return AggregateResult(
            member_id=self.member_id,
            study_id=study.study_id,
            round=number,
            client_ids=ids,
            aggregate=aggregate,
            aggregate_hash=aggregate_hash,
            signature=self._keys.identity.sign(digest),
            eth_address=self._keys.eth_address,
            eth_signature=sign_attestation(self._keys.eth_private_key, attestation),
            rejections=rejections,
        )


def _classify(envelope: Envelope, sender: PublicIdentity, identity: Identity) -> Reason:
    """Which of signature / unseal / payload hash made open_envelope fail (its order).

    Only called after open_envelope raised, so the slow unseal is repeated only for
    envelopes that are rejected anyway.
    """
    try:
        verify_signature(sender, envelope.signed_digest(), envelope.signature)
    except VerificationError:
        return Reason.BAD_SIGNATURE
    try:
        identity.unseal(envelope.sealed_payload)
    except VerificationError:
        return Reason.UNSEAL_FAILED
    return Reason.PAYLOAD_HASH_MISMATCH
