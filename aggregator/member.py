"""One committee member: verify uploads, aggregate the agreed client set, sign the result.

Pure protocol logic, no gRPC (``cohort.aggregator.service`` wraps it). The member holds its
:class:`~cohort.crypto.identity.Identity` (Ed25519 signing, X25519 unsealing) and an Ethereum
key for on-chain attestations, both in its key store (:class:`MemberKeys`). Per study:

1. the coordinator calls :meth:`CommitteeMember.configure` once (roster, secure mode, update
   length, quorum, chain);
2. per round the coordinator calls :meth:`CommitteeMember.open_round`; data owners upload
   one envelope each (:meth:`CommitteeMember.accept`), every rejection is logged and counted
   with a :class:`Reason`;
3. the coordinator calls :meth:`CommitteeMember.aggregate` over the agreed client set; the
   member combines the uploads in canonical order, signs the result, attests it for the
   chain and drops the round's uploads.

The member is thread-safe: the gRPC server calls it from several threads.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from cohort.aggregator.modes import SUPPORTED_MODES, AggregationMode, ModeSpec, build_mode
from cohort.bounties.attestation import attestation_digest, checksum_address, sign_attestation
from cohort.crypto.envelope import Envelope, open_envelope
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.files import PRIVATE, write_atomic
from cohort.logs import fields, get_logger

log = get_logger(__name__)

IDENTITY_FILE = "identity.json"
ETH_KEY_FILE = "eth_key.json"
_KEYSTORE_VERSION = 1
_MAX_ROUND = 2**64 - 1


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, repr=False)
class MemberKeys:
    """A member's secret keys: its Identity and its Ethereum attestation key."""

    identity: Identity
    eth_private_key: bytes

    def __post_init__(self) -> None:
        if len(self.eth_private_key) != 32:
            raise BadInputError("member key store: Ethereum private key must be 32 bytes")

    def __repr__(self) -> str:
        return f"MemberKeys(member_id={self.identity.party_id!r}, eth_address={self.eth_address})"

    @property
    def eth_address(self) -> str:
        return str(Account.from_key(self.eth_private_key).address)

    @classmethod
    def generate(cls, member_id: str) -> MemberKeys:
        """Fresh keys for a new member. Run once by the member when its key store is made."""
        return cls(Identity.generate(member_id), bytes(Account.create().key))

    def save(self, directory: Path) -> None:
        """Write ``identity.json`` and ``eth_key.json`` (mode 0600) into ``directory``."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.identity.save(directory / IDENTITY_FILE)
        doc = {
            "version": _KEYSTORE_VERSION,
            "member_id": self.identity.party_id,
            "eth_private_key": self.eth_private_key.hex(),
        }
        write_atomic(directory / ETH_KEY_FILE, json.dumps(doc).encode("utf-8"), mode=PRIVATE)

    @classmethod
    def load(cls, directory: Path) -> MemberKeys:
        """Read a key store written by :meth:`save`; BadInputError names the bad file."""
        identity = Identity.load(directory / IDENTITY_FILE)
        path = directory / ETH_KEY_FILE
        try:
            mode = path.stat().st_mode
            doc = json.loads(path.read_text(encoding="utf-8"))
            key = bytes.fromhex(doc["eth_private_key"])
            stored_id = doc["member_id"]
        except (OSError, ValueError, KeyError, TypeError):
            raise BadInputError(f"member key store {path}: unreadable Ethereum key") from None
        if os.name == "posix" and mode & 0o077:
            raise BadInputError(f"member key store {path}: other users have access; chmod 600")
        if stored_id != identity.party_id:
            raise BadInputError(f"member key store {path}: member id differs from {IDENTITY_FILE}")
        return cls(identity, key)

    @classmethod
    def load_or_create(cls, directory: Path, *, member_id: str) -> MemberKeys:
        """Load the key store in ``directory``, creating it for ``member_id`` if absent."""
        if (directory / IDENTITY_FILE).exists():
            keys = cls.load(directory)
            if keys.identity.party_id != member_id:
                raise BadInputError(
                    f"member key store {directory}: holds member {keys.identity.party_id!r},"
                    f" not {member_id!r}"
                )
            return keys
        keys = cls.generate(member_id)
        keys.save(directory)
        return keys


# --------------------------------------------------------------------------- study config


def _checksum(value: str, what: str) -> str:
    try:
        return checksum_address(value, field=what)
    except BadInputError:
        raise ConfigError(f"study config: {what} is not an Ethereum address") from None


@dataclass(frozen=True)
class DataOwner:
    """A data owner in the study roster: its public keys and its payout address."""

    identity: PublicIdentity
    payout_address: str

    def __post_init__(self) -> None:
        checksummed = _checksum(self.payout_address, f"payout address of {self.party_id!r}")
        object.__setattr__(self, "payout_address", checksummed)

    @property
    def party_id(self) -> str:
        return self.identity.party_id


@dataclass(frozen=True)
class StudyConfig:
    """What the coordinator tells every committee member about a study (validated here)."""

    study_id: str
    owners: tuple[DataOwner, ...]
    mode: ModeSpec
    update_length: int
    committee: tuple[str, ...]
    quorum: int
    chain_id: int
    contract: str

    def __post_init__(self) -> None:
        if not isinstance(self.study_id, str) or not self.study_id:
            raise ConfigError("study config: study_id must be a non-empty string")
        object.__setattr__(self, "owners", tuple(self.owners))
        object.__setattr__(self, "committee", tuple(self.committee))
        if not self.owners:
            raise ConfigError("study config: owners must list at least one data owner")
        ids = [owner.party_id for owner in self.owners]
        if len(set(ids)) != len(ids):
            raise ConfigError("study config: owners lists a data owner id twice")
        if not isinstance(self.mode, ModeSpec):
            raise ConfigError("study config: mode must be a ModeSpec (for example CkksSpec)")
        if self.update_length < 1:
            raise ConfigError("study config: update_length must be >= 1 (values per update)")
        if not self.committee or len(set(self.committee)) != len(self.committee):
            raise ConfigError("study config: committee must list distinct member ids")
        if not 1 <= self.quorum <= len(self.committee):
            raise ConfigError(
                f"study config: quorum must be in 1..{len(self.committee)} (members), "
                f"got {self.quorum}"
            )
        if self.chain_id < 1:
            raise ConfigError("study config: chain_id must be >= 1")
        object.__setattr__(self, "contract", _checksum(self.contract, "contract"))

    def owner(self, party_id: str) -> DataOwner | None:
        for owner in self.owners:
            if owner.party_id == party_id:
                return owner
        return None


def study_id_bytes(study_id: str) -> bytes:
    """32-byte study id used on chain: ``tagged_hash(Tag.STUDY_ID, study_id)``."""
    return tagged_hash(Tag.STUDY_ID, study_id.encode("utf-8"))


def canonical_client_ids(client_ids: Sequence[str]) -> tuple[str, ...]:
    """The client set S sorted canonically; BadInputError if empty or with duplicates."""
    ids = tuple(client_ids)
    if not ids:
        raise BadInputError("client set: empty")
    if any(not isinstance(cid, str) or not cid for cid in ids):
        raise BadInputError("client set: ids must be non-empty strings")
    if len(set(ids)) != len(ids):
        raise BadInputError("client set: duplicate ids")
    return tuple(sorted(ids))


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
            f"AggregateResult(member_id={self.member_id!r}, study_id={self.study_id!r}, "
            f"round={self.round}, clients={len(self.client_ids)}, "
            f"aggregate=<{len(self.aggregate)} bytes>, hash={self.aggregate_hash.hex()[:16]})"
        )


@dataclass(frozen=True)
class MemberInfo:
    """The public face of a member, as listed in the committee roster."""

    member_id: str
    identity: PublicIdentity
    eth_address: str


@dataclass(frozen=True)
class MemberStatus:
    """Answer to Info: who the member is and where it stands."""

    info: MemberInfo
    modes: tuple[str, ...]
    study_id: str | None
    open_round: int | None
    received: tuple[str, ...] = ()


# --------------------------------------------------------------------------- member


@dataclass
class _Upload:
    payload: bytes
    payload_hash: bytes


@dataclass
class _Round:
    number: int
    deadline: float | None
    uploads: dict[str, _Upload] = field(default_factory=dict)
    rejections: Counter[tuple[str, Reason]] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Study:
    config: StudyConfig
    mode: AggregationMode
    owners: dict[str, DataOwner]


class _Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CommitteeMember:
    """A committee member's protocol state machine (see module docstring)."""

    def __init__(self, keys: MemberKeys, *, clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._clock = clock
        self._lock = threading.Lock()
        self._study: _Study | None = None
        self._round: _Round | None = None
        self._highest_round: int | None = None
        self._nonces: set[bytes] = set()
        self._last_result: AggregateResult | None = None
        self._last_client_set: bytes | None = None
        self._info = MemberInfo(keys.identity.party_id, keys.identity.public, keys.eth_address)

    @property
    def member_id(self) -> str:
        return self._info.member_id

    @property
    def info(self) -> MemberInfo:
        return self._info

    def status(self) -> MemberStatus:
        """Who this member is and where it stands. Called by anyone (Info RPC).

        ``received`` lists the senders with an accepted upload in the open round, so the
        coordinator can pick a client set S that every member holds before it asks for
        the aggregate (a member signs only one S per round). Lock-free: it answers even
        while a long aggregation holds the lock.
        """
        study, current = self._study, self._round
        return MemberStatus(
            self._info,
            SUPPORTED_MODES,
            study.config.study_id if study else None,
            current.number if current else None,
            tuple(sorted(current.uploads)) if current else (),
        )

    # -- coordinator: configure ----------------------------------------------------------

    def configure(self, study: StudyConfig, *, reset: bool = False) -> None:
        """Bind this member to ``study``. Called by the coordinator once per study.

        Configuring the same study again is a no-op (safe retry). A different study is
        refused with ProtocolAbort unless ``reset`` is true, which drops all state of the
        old one. Raises BadInputError for a CKKS context holding a secret key, ConfigError
        when the committee does not list this member.
        """
        if self.member_id not in study.committee:
            raise ConfigError(f"study config: committee does not list member {self.member_id!r}")
        with self._lock:
            if self._study is not None and self._study.config == study:
                return
            if self._study is not None and not reset:
                raise ProtocolAbort(
                    f"member {self.member_id} is bound to study {self._study.config.study_id!r};"
                    " configure with reset to switch studies"
                )
        mode = build_mode(study.mode)
        owners = {owner.party_id: owner for owner in study.owners}
        with self._lock:
            if self._study is not None and self._study.config != study and not reset:
                raise ProtocolAbort(f"member {self.member_id} was configured concurrently")
            self._study = _Study(study, mode, owners)
            self._round = None
            self._highest_round = None
            self._nonces = set()
            self._last_result = None
            self._last_client_set = None
        log.info(
            "study configured",
            extra=fields(
                member=self.member_id,
                study=study.study_id,
                mode=mode.name,
                owners=len(owners),
                update_length=study.update_length,
            ),
        )

    def _require_study(self, study_id: str | None) -> _Study:
        if self._study is None:
            raise ProtocolAbort(f"member {self.member_id} is not configured for a study")
        if study_id is not None and study_id != self._study.config.study_id:
            raise ProtocolAbort(
                f"member {self.member_id} serves study {self._study.config.study_id!r},"
                f" not {study_id!r}"
            )
        return self._study

    # -- coordinator: open a round -------------------------------------------------------

    def open_round(
        self, round: int, *, study_id: str | None = None, deadline: float | None = None
    ) -> None:
        """Open ``round`` for uploads. Called by the coordinator at the start of a round.

        Rounds only move forward: reopening the round that is open is a no-op, an older or
        aggregated round is refused (ProtocolAbort). Opening a newer round abandons an open
        round that was never aggregated. ``deadline`` (unix seconds) refuses later uploads.
        """
        if not 0 <= round <= _MAX_ROUND:
            raise BadInputError(f"round must be in 0..2^64-1, got {round}")
        with self._lock:
            self._require_study(study_id)
            if self._round is not None and self._round.number == round:
                return
            if self._highest_round is not None and round <= self._highest_round:
                raise ProtocolAbort(
                    f"member {self.member_id}: round {round} is not after round "
                    f"{self._highest_round}"
                )
            if self._round is not None:
                log.warning(
                    "round abandoned",
                    extra=fields(
                        member=self.member_id,
                        round=self._round.number,
                        uploads=len(self._round.uploads),
                    ),
                )
            self._round = _Round(round, deadline)
            self._highest_round = round
        log.info("round opened", extra=fields(member=self.member_id, round=round))

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
            return self._reject("", None, Reason.MALFORMED, str(exc), size=len(data))
        sender, number = envelope.sender, envelope.round
        try:
            with self._lock:
                study, owner = self._precheck(envelope)
            payload = self._authenticate(envelope, owner.identity, study)
            with self._lock:
                # Authentic: burn the nonce whatever happens next (re-checked: a concurrent
                # upload of the same envelope may have burned it since the precheck).
                if envelope.nonce in self._nonces:
                    raise _Rejected(Reason.REPLAYED_NONCE, "envelope nonce was seen before")
                self._nonces.add(envelope.nonce)
            try:
                study.mode.check(payload, length=study.config.update_length)
            except BadInputError as exc:
                raise _Rejected(Reason.MODE_CHECK_FAILED, str(exc)) from exc
            with self._lock:
                self._commit(envelope, study, payload)
        except _Rejected as rejected:
            known = sender if self._is_owner(sender) else ""
            return self._reject(known, number, rejected.reason, rejected.detail, size=len(data))
        log.info(
            "upload accepted",
            extra=fields(member=self.member_id, sender=sender, round=number, size=len(data)),
        )
        return Verdict(self.member_id, True, sender, number, payload_hash=envelope.payload_hash)

    def _is_owner(self, party_id: str) -> bool:
        study = self._study
        return study is not None and party_id in study.owners

    def _precheck(self, envelope: Envelope) -> tuple[_Study, DataOwner]:
        """Cheap checks in order: study, round, deadline, recipient, sender, nonce."""
        if self._study is None:
            raise _Rejected(Reason.NOT_CONFIGURED, f"member {self.member_id} has no study")
        study = self._study
        if envelope.study_id != study.config.study_id:
            raise _Rejected(Reason.WRONG_STUDY, f"envelope is for study {envelope.study_id!r}")
        current = self._round
        if current is None:
            raise _Rejected(
                Reason.ROUND_NOT_OPEN, f"no round is open (envelope round {envelope.round})"
            )
        if envelope.round != current.number:
            raise _Rejected(
                Reason.WRONG_ROUND, f"envelope round {envelope.round}, open round {current.number}"
            )
        if current.deadline is not None and self._clock() > current.deadline:
            raise _Rejected(Reason.DEADLINE_PASSED, f"round {current.number} deadline passed")
        if envelope.recipient != self.member_id:
            raise _Rejected(
                Reason.WRONG_RECIPIENT, f"envelope is addressed to {envelope.recipient!r}"
            )
        owner = study.owners.get(envelope.sender)
        if owner is None:
            raise _Rejected(Reason.UNKNOWN_SENDER, "sender is not in the study roster")
        if envelope.nonce in self._nonces:
            raise _Rejected(Reason.REPLAYED_NONCE, "envelope nonce was seen before")
        return study, owner

    def _authenticate(self, envelope: Envelope, sender: PublicIdentity, study: _Study) -> bytes:
        """Signature, unseal and payload hash (outside the lock: unsealing is the slow part)."""
        try:
            return open_envelope(
                envelope,
                recipient=self._keys.identity,
                sender=sender,
                study_id=study.config.study_id,
                round=envelope.round,
            )
        except VerificationError as exc:
            reason = _classify(envelope, sender, self._keys.identity)
            raise _Rejected(reason, str(exc)) from exc

    def _commit(self, envelope: Envelope, study: _Study, payload: bytes) -> None:
        """Store under the lock, re-checking what may have changed since the precheck."""
        current = self._round
        if self._study is not study:
            raise _Rejected(Reason.WRONG_STUDY, "the member was reconfigured during the upload")
        if current is None or current.number != envelope.round:
            raise _Rejected(Reason.ROUND_NOT_OPEN, f"round {envelope.round} closed during upload")
        if envelope.sender in current.uploads:
            raise _Rejected(
                Reason.DUPLICATE_SENDER,
                f"{envelope.sender!r} already uploaded for round {current.number}; first kept",
            )
        current.uploads[envelope.sender] = _Upload(payload, envelope.payload_hash)

    def _reject(
        self, sender: str, number: int | None, reason: Reason, detail: str, *, size: int
    ) -> Verdict:
        with self._lock:
            if self._round is not None:
                self._round.rejections[(sender, reason)] += 1
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

    def aggregate(
        self, round: int, client_ids: Sequence[str], *, study_id: str | None = None
    ) -> AggregateResult:
        """Combine the uploads of client set S for ``round`` and sign the result.

        Called by the coordinator once the client set S is agreed. ProtocolAbort names the
        clients of S without an accepted upload (retry with a smaller S; the round stays
        open). Afterwards the round's uploads are dropped; asking again with the same S
        returns the same result, with a different S it is refused (ProtocolAbort).
        """
        ids = canonical_client_ids(client_ids)
        cs_hash = client_set_hash(ids)
        with self._lock:
            study = self._require_study(study_id)
            unknown = [cid for cid in ids if cid not in study.owners]
            if unknown:
                raise BadInputError(f"client set: not in the study roster: {', '.join(unknown)}")
            last = self._last_result
            if last is not None and last.round == round:
                if self._last_client_set == cs_hash:
                    return last
                raise ProtocolAbort(
                    f"member {self.member_id}: round {round} was already aggregated over a "
                    "different client set"
                )
            current = self._round
            if current is None or current.number != round:
                raise ProtocolAbort(f"member {self.member_id}: round {round} is not open")
            missing = [cid for cid in ids if cid not in current.uploads]
            if missing:
                raise ProtocolAbort(
                    f"member {self.member_id}: no accepted upload for round {round} from: "
                    + ", ".join(missing)
                )
            result = self._sign(study, current, ids)
            self._last_result = result
            self._last_client_set = cs_hash
            self._round = None
        log.info(
            "round aggregated",
            extra=fields(
                member=self.member_id,
                round=round,
                clients=len(ids),
                aggregate_hash=result.aggregate_hash.hex(),
                rejected=sum(r.count for r in result.rejections),
            ),
        )
        return result

    def _sign(self, study: _Study, current: _Round, ids: tuple[str, ...]) -> AggregateResult:
        config = study.config
        aggregate = study.mode.combine([current.uploads[cid].payload for cid in ids])
        aggregate_hash = tagged_hash(Tag.AGGREGATE, aggregate)
        digest = aggregate_result_digest(
            study_id=config.study_id,
            round=current.number,
            client_ids=ids,
            aggregate_hash=aggregate_hash,
        )
        attestation = attestation_digest(
            chain_id=config.chain_id,
            contract=config.contract,
            study_id=study_id_bytes(config.study_id),
            round=current.number,
            aggregate_hash=aggregate_hash,
            contributors=[study.owners[cid].payout_address for cid in ids],
        )
        rejections = tuple(
            Rejection(sender, reason, count)
            for (sender, reason), count in sorted(current.rejections.items())
        )
        return AggregateResult(
            member_id=self.member_id,
            study_id=config.study_id,
            round=current.number,
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
