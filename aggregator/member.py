"""One committee member: verify uploads, aggregate the agreed client set, sign the result.

Pure protocol logic, no gRPC (``cohort.aggregator.service`` wraps it). The member holds its
key store (:class:`~cohort.aggregator.keys.MemberKeys`: Identity and Ethereum key) and a work
directory with its operator's approvals (``studies/<id>/``, written by
:func:`cohort.federation.approval.approve`) and its state (``state.sqlite``,
:class:`~cohort.aggregator.store.MemberStore`). Per study:

1. the coordinator sends a signed Configure (:meth:`CommitteeMember.configure`) naming a
   manifest the operator approved, with the key dealer's signed mode set-up;
2. per round the coordinator sends a signed OpenRound (:meth:`CommitteeMember.open_round`);
   each data owner uploads once, to one member (:meth:`CommitteeMember.accept`), which
   answers with a signed receipt; every rejection is logged and counted with a
   :class:`Reason`;
3. the coordinator sends a signed Replicate with the owners' receipts
   (:meth:`CommitteeMember.replicate`); the member fetches each upload it lacks from the
   member that signed its receipt (:meth:`CommitteeMember.fetch` runs there,
   :mod:`cohort.aggregator.replication`), checks each copy like an upload and records every
   copy it could not take;
4. the coordinator sends a signed Aggregate over the client set S
   (:meth:`CommitteeMember.aggregate`); the member checks S against the manifest, combines
   the uploads in canonical order, signs the result, attests it for the chain and drops the
   round's uploads.

Every control call is verified (coordinator signature, fresh counter; see
:mod:`cohort.aggregator.control`) before its body is read, and every term comes from the
manifest, never from the call. All state is persisted, so a restarted member resumes where
it stopped and refuses everything it refused or consumed before. Thread-safe.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cohort.aggregator.aggregate_fetch as aggregate_fetch
import cohort.aggregator.member_copies as member_copies
from cohort.aggregator.aggregate_fetch import AggregateFetch
from cohort.aggregator.control import AggregateBody as _AggregateBody
from cohort.aggregator.control import (
    ConfigureBody,
    ConfirmBody,
    ControlKind,
    OpenRoundBody,
    Refusal,
    ReplicateBody,
    SignedControl,
    StatusBody,
    ValidateBody,
    canonical_client_ids,
)
from cohort.aggregator.intake import Rejected, Upload, authenticate, parse_upload
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.modes import (
    SUPPORTED_MODES,
    AggregationMode,
    ModeSpec,
    MpcSpec,
    build_mode,
)
from cohort.aggregator.mpc_records import ValidationVerdict, mpc_terms_digest, partial_digest
from cohort.aggregator.records import (
    AggregateResult,
    CopyFailure,
    MemberInfo,
    PublicStatus,
    Reason,
    Rejection,
    Replication,
    StudyStatus,
    Verdict,
    aggregate_result_digest,
    study_id_bytes,
)
from cohort.aggregator.replication import Fetcher, FetchRequest, UploadReceipt
from cohort.aggregator.store import STATE_FILE, Kept, MemberStore, RelayFields
from cohort.bounties.attestation import attestation_digest, sign_attestation
from cohort.clients.ledger_commitment import attested_heads, select_commitments
from cohort.crypto import upload as committee_upload
from cohort.crypto.envelope import Envelope
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.crypto.upload import CommitteeUpload
from cohort.errors import BadInputError, ConfigError, VerificationError
from cohort.federation.approval import Role, approved_manifest
from cohort.federation.manifest import (
    CommitteeEntry,
    Manifest,
    OwnerEntry,
    SignedManifest,
)
from cohort.logs import fields, get_logger

log = get_logger(__name__)

KEYS_DIR = "keys"
"""Copies a member fetches at once during Replicate (memory: a few payloads, whatever the
number of data owners)."""

__all__ = [
    "KEYS_DIR",
    "AggregateResult",
    "CommitteeMember",
    "CopyFailure",
    "MemberInfo",
    "MemberKeys",
    "PublicStatus",
    "Reason",
    "Rejection",
    "Replication",
    "StudyStatus",
    "Verdict",
    "aggregate_result_digest",
    "canonical_client_ids",
    "study_id_bytes",
]


# --------------------------------------------------------------------------- member


@dataclass(frozen=True)
class _Study:
    study_id: str
    manifest: Manifest
    mode: AggregationMode
    setup_digest: bytes
    owners: dict[str, OwnerEntry]
    address: bytes  # committee_address of the manifest's committee: what uploads name

    @classmethod
    def of(cls, manifest: Manifest, mode: AggregationMode, setup_digest: bytes) -> _Study:
        committee = [m.identity for m in manifest.committee]
        owners = {o.party_id: o for o in manifest.owners}
        address = committee_upload.committee_address(committee)
        return cls(manifest.study_id, manifest, mode, setup_digest, owners, address)


class CommitteeMember:
    """A committee member's protocol state machine (see module docstring).

    ``workdir`` holds the approvals (``studies/``) and the state (``state.sqlite``); the
    member resumes every study found there. ``tls_fingerprint`` is the SHA-256 of the
    certificate it serves (shown by Info; b"": plaintext). ``fetcher`` reaches the other
    members for copies (default: :class:`~cohort.aggregator.peers.PeerFetcher`, gRPC over
    the manifest's pinned TLS). ``on_mpc_study`` is called whenever an MPC study is loaded
    or configured (a serving member warms its norm checks up). Close it when done.
    """

    def __init__(
        self,
        keys: MemberKeys,
        *,
        workdir: Path,
        clock: Callable[[], float] = time.time,
        tls_fingerprint: bytes = b"",
        fetcher: Fetcher | None = None,
        on_mpc_study: Callable[[], object] | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._on_mpc_study = on_mpc_study
        self._own_fetcher: Callable[[], None] | None = None
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
            mode = self._build_mode(manifest, configure.setup)
        except (BadInputError, VerificationError) as exc:
            raise ConfigError(
                f"member state: stored study {study_id[:16]} is unusable: {exc}"
            ) from None
        if manifest.study_id != study_id:
            raise ConfigError(f"member state: stored study {study_id[:16]} has another hash")
        return _Study.of(manifest, mode, digest)

    def _build_mode(self, manifest: Manifest, setup: ModeSpec) -> AggregationMode:
        """The study's mode from its set-up; every MPC term is the manifest's."""
        mpc = manifest.mpc
        if mpc is not None and self._on_mpc_study is not None:
            self._on_mpc_study()
        return build_mode(
            setup,
            study_id=manifest.study_id,
            members=manifest.member_ids,
            member_id=self.member_id,
            threshold=manifest.quorum,
            prime=0 if mpc is None else mpc.prime,
        )

    def close(self) -> None:
        if self._own_fetcher is not None:
            self._own_fetcher()
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
    def store(self) -> MemberStore:
        return self._store

    @property
    def identity(self) -> Identity:
        return self._keys.identity

    @property
    def workdir(self) -> Path:
        return self._workdir

    def public_status(self) -> PublicStatus:
        """Who this member is and what it runs. Called by anyone (Info RPC); lock-free."""
        return self._public

    # -- control: verification -----------------------------------------------------------

    def configured(self, study_id: str) -> _Study:
        """The study this member is configured for (``not_configured`` otherwise)."""
        study = self._studies.get(study_id)
        if study is None:
            raise Refusal.NOT_CONFIGURED.error(
                f"member {self.member_id} is not configured for study {study_id[:16]}"
            )
        return study

    def _verified(self, control: SignedControl, kind: ControlKind) -> _Study:
        """A configured study's call: signature by its coordinator, then a fresh counter."""
        study = self.configured(control.study_id)
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
        if manifest.secure.value not in SUPPORTED_MODES or setup.name != manifest.secure.value:
            raise Refusal.UNSUPPORTED_MODE.error(
                f"manifest mode {manifest.secure.value!r}, set-up {setup.name!r}; this member "
                f"runs {', '.join(SUPPORTED_MODES)}"
            )
        dealer = manifest.owner(manifest.key_dealer)
        try:
            setup.verify_dealt(manifest.study_id, dealer.identity if dealer else None)
        except VerificationError as exc:
            raise Refusal.BAD_DEALER_SIGNATURE.error(str(exc)) from None
        if isinstance(setup, MpcSpec) and setup.terms != mpc_terms_digest(manifest):
            raise Refusal.BAD_SETUP.error(
                "mpc: the set-up names other terms than the approved manifest's"
            )
        digest = setup.setup_digest()
        if self._same_setup(manifest.study_id, digest):
            return manifest.study_id
        try:
            mode = self._build_mode(manifest, setup)
        except BadInputError as exc:
            raise Refusal.BAD_SETUP.error(str(exc)) from None
        with self._lock:
            if self._same_setup(manifest.study_id, digest):
                return manifest.study_id
            self._store.add_study(manifest.study_id, control.body, digest)
            self._studies[manifest.study_id] = _Study.of(manifest, mode, digest)
        log.info(
            "study configured",
            extra=fields(
                member=self.member_id,
                study=manifest.study_id,
                mode=mode.name,
                owners=len(manifest.owners),
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
        """Where a study stands, who uploaded in the open round and which copies of it this
        member could not take. Coordinator only."""
        study = self._verified(control, ControlKind.STATUS)
        StatusBody.from_bytes(control.body)
        with self._lock:
            state = self._store.round_state(study.study_id)
            number = state.open_round
            received = self._store.senders(study.study_id, number) if number is not None else ()
            failures = member_copies.failures(self, study, number) if number is not None else ()
            aggregated = self._store.aggregated(study.study_id)
        return StudyStatus(
            study.study_id, state.open_round, state.highest, received, aggregated, failures
        )

    # -- data owners: upload -------------------------------------------------------------

    def accept(self, data: bytes) -> Verdict:
        """Verify and store one upload. Called by a data owner (Upload RPC).

        Takes a committee upload (:mod:`cohort.crypto.upload`, answered with a signed
        receipt: this member will hand copies to the other members) or the first version's
        per-member envelope (:mod:`cohort.crypto.envelope`: kept, never relayed). Never
        raises for a bad upload: returns a rejected :class:`Verdict` whose reason says why
        (see :class:`Reason`); :meth:`Verdict.raise_if_rejected` turns it into an error.
        The first accepted upload of a sender in a round is kept; nothing accepted is lost.
        """
        try:
            upload = parse_upload(data)
        except (BadInputError, ValueError) as exc:
            return self._reject(None, "", None, Reason.MALFORMED, str(exc), size=len(data))
        sender, number = upload.sender, upload.round
        study = self._studies.get(upload.study_id)
        try:
            study, owner = self._precheck(upload, study, deadline=True)
            payload = self._authenticate(upload, owner.identity, study)
            self._store_upload(upload, study, payload)
        except Rejected as rejected:
            known = sender if study is not None and sender in study.owners else ""
            return self._reject(
                study, known, number, rejected.reason, rejected.detail, size=len(data)
            )
        log.info(
            "upload accepted",
            extra=fields(member=self.member_id, sender=sender, round=number, size=len(data)),
        )
        receipt = b""
        if isinstance(upload, CommitteeUpload):
            receipt = UploadReceipt.sign(
                self._keys.identity,
                study_id=study.study_id,
                round=number,
                sender=sender,
                payload_hash=upload.payload_hash,
            ).signature
        return Verdict(
            self.member_id, True, sender, number, payload_hash=upload.payload_hash, receipt=receipt
        )

    def _precheck(
        self, upload: Upload, study: _Study | None, *, deadline: bool
    ) -> tuple[_Study, OwnerEntry]:
        """Cheap checks in order: study, round, deadline, addressee, sender, nonce."""
        if study is None:
            if not self._studies:
                raise Rejected(Reason.NOT_CONFIGURED, f"member {self.member_id} has no study")
            raise Rejected(Reason.WRONG_STUDY, f"upload is for study {upload.study_id[:64]!r}")
        if upload.study_id != study.study_id:  # a copy fetched for another study
            raise Rejected(Reason.WRONG_STUDY, f"upload is for study {upload.study_id[:64]!r}")
        state = self._store.round_state(study.study_id)
        if state.open_round is None:
            raise Rejected(Reason.ROUND_NOT_OPEN, f"no round is open (upload round {upload.round})")
        if upload.round != state.open_round:
            raise Rejected(
                Reason.WRONG_ROUND, f"upload round {upload.round}, open round {state.open_round}"
            )
        if deadline and state.deadline is not None and self._clock() > state.deadline:
            raise Rejected(Reason.DEADLINE_PASSED, f"round {state.open_round} deadline passed")
        if isinstance(upload, Envelope) and upload.recipient != self.member_id:
            raise Rejected(Reason.WRONG_RECIPIENT, f"envelope is addressed to {upload.recipient!r}")
        if isinstance(upload, CommitteeUpload) and upload.committee != study.address:
            raise Rejected(Reason.WRONG_ADDRESSEE, "upload is addressed to another committee")
        owner = study.owners.get(upload.sender)
        if owner is None:
            raise Rejected(Reason.UNKNOWN_SENDER, "sender is not in the study roster")
        if self._store.nonce_seen(study.study_id, upload.nonce):
            raise Rejected(Reason.REPLAYED_NONCE, "upload nonce was seen before")
        return study, owner

    def _authenticate(self, upload: Upload, sender: PublicIdentity, study: _Study) -> bytes:
        """Signature, unseal and payload hash (outside the lock: unsealing is the slow part)."""
        return authenticate(
            upload,
            holder=self._keys.identity,
            sender=sender,
            study_id=study.study_id,
            committee=study.address,
        )

    def _store_upload(self, upload: Upload, study: _Study, payload: bytes) -> None:
        """Check the payload for the mode and store it with its nonce burned, in one store
        transaction that re-checks the round (it may have closed meanwhile). Concurrent
        uploads are checked and written in parallel; only that transaction is serialised.
        An authentic upload that fails the mode check has its nonce burned all the same."""
        try:
            study.mode.accept(
                payload,
                length=study.manifest.update_length,
                round=upload.round,
                key=upload.payload_hash,
                sender=upload.sender,
            )
        except BadInputError as exc:
            self._store.burn_nonce(study.study_id, upload.nonce)
            raise Rejected(Reason.MODE_CHECK_FAILED, str(exc)) from exc
        relay = None
        if isinstance(upload, CommitteeUpload):
            relay = RelayFields(upload.nonce, upload.signature)
        kept = self._store.add_upload(
            study.study_id,
            upload.round,
            upload.sender,
            payload,
            upload.payload_hash,
            relay=relay,
            nonce=upload.nonce,
        )
        if kept is Kept.ROUND_CLOSED:
            raise Rejected(Reason.ROUND_NOT_OPEN, f"round {upload.round} closed meanwhile")
        if kept is Kept.REPLAYED_NONCE:
            raise Rejected(Reason.REPLAYED_NONCE, "upload nonce was seen before")
        if kept is Kept.DUPLICATE_SENDER:
            raise Rejected(
                Reason.DUPLICATE_SENDER,
                f"{upload.sender!r} already uploaded for round {upload.round}; first kept",
            )

    # -- members: copies of uploads (cohort.aggregator.member_copies) ---------------------

    def fetch(self, request: FetchRequest) -> bytes:
        """Hand another member this member's copy of one upload (Fetch RPC); see
        :func:`cohort.aggregator.member_copies.hand_over`."""
        return member_copies.hand_over(self, self.configured(request.study_id), request)

    def fetch_aggregate(self, request: AggregateFetch) -> bytes:
        """Hand a data owner of the client set this member's aggregate of a round
        (FetchAggregate RPC); see :func:`cohort.aggregator.aggregate_fetch.hand_over`."""
        return aggregate_fetch.hand_over(self, self.configured(request.study_id), request)

    def replicate(self, control: SignedControl) -> Replication:
        """Fetch the open round's uploads this member lacks (signed Replicate); see
        :func:`cohort.aggregator.member_copies.replicate`."""
        study = self._verified(control, ControlKind.REPLICATE)
        return member_copies.replicate(self, study, ReplicateBody.from_bytes(control.body))

    def take_copy(
        self, copy: CommitteeUpload, study: _Study, owner: OwnerEntry, payload_hash: bytes
    ) -> None:
        """Every check an upload passes (no deadline: the round's uploads are in), that the
        copy is the receipted upload, then store it. Raises :class:`Rejected`."""
        self._precheck(copy, study, deadline=False)
        payload = self._authenticate(copy, owner.identity, study)
        if copy.payload_hash != payload_hash:
            raise Rejected(Reason.RECEIPT_MISMATCH, "the copy is not the upload receipted")
        self._store_upload(copy, study, payload)

    def fetch_from(
        self, manifest: Manifest, holder: CommitteeEntry, request: FetchRequest
    ) -> bytes:
        """Ask ``holder`` for a copy (the injected fetcher, or gRPC over pinned TLS)."""
        fetcher = self._fetcher
        if fetcher is None:
            # gRPC client of the other members; imported here because it imports this module
            from cohort.aggregator.peers import PeerFetcher

            with self._lock:
                if self._fetcher is None:
                    peers = PeerFetcher()
                    self._fetcher, self._own_fetcher = peers, peers.close
                fetcher = self._fetcher
        return fetcher(manifest, holder, request)

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
            if study.mode.partial:
                from cohort.aggregator.mpc_member import require_validated

                require_validated(self, study, number, ids)
            result = self._sign(study, number, ids, body.ledger_commitments)
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

    def _sign(
        self, study: _Study, number: int, ids: tuple[str, ...], ledger: Sequence[bytes]
    ) -> AggregateResult:
        # What each upload's acceptance kept (or, failing that, the upload from disk), one
        # at a time into a running sum: memory flat in len(ids).
        hashes = dict(self._store.holdings(study.study_id, number))
        combined = study.mode.combine_kept(
            number,
            [hashes[cid] for cid in ids],
            lambda i: self._store.payloads(study.study_id, number, [ids[i]])[0],
            senders=ids,
        )
        if study.mode.partial:
            return self.sign_partial(study, number, ids, combined)
        return self.attest_result(study, number, ids, ledger, combined)

    def sign_partial(
        self, study: _Study, number: int, ids: tuple[str, ...], partial: bytes
    ) -> AggregateResult:
        """This member's signed partial result (MPC): no on-chain attestation, since a
        partial is not the aggregate (:mod:`cohort.aggregator.mpc_records`)."""
        partial_hash = tagged_hash(Tag.AGGREGATE, partial)
        digest = partial_digest(
            study_id=study.study_id,
            round=number,
            member_id=self.member_id,
            client_ids=ids,
            partial_hash=partial_hash,
        )
        return AggregateResult(
            member_id=self.member_id,
            study_id=study.study_id,
            round=number,
            client_ids=ids,
            aggregate=partial,
            aggregate_hash=partial_hash,
            signature=self._keys.identity.sign(digest),
            eth_address=self._keys.eth_address,
            eth_signature=b"",
            rejections=self._rejections(study, number),
        )

    def _rejections(self, study: _Study, number: int) -> tuple[Rejection, ...]:
        return tuple(
            Rejection(sender, Reason(reason), count)
            for sender, reason, count in self._store.rejections(study.study_id, number)
        )

    def attest_result(
        self,
        study: _Study,
        number: int,
        ids: tuple[str, ...],
        ledger: Sequence[bytes],
        aggregate: bytes,
    ) -> AggregateResult:
        """Sign ``aggregate`` of client set ``ids`` and attest it for the chain."""
        manifest = study.manifest
        aggregate_hash = tagged_hash(Tag.AGGREGATE, aggregate)
        digest = aggregate_result_digest(
            study_id=study.study_id, round=number, client_ids=ids, aggregate_hash=aggregate_hash
        )
        payouts = {cid: study.owners[cid].payout_address for cid in ids}
        # Each owner's signed (ledger head, epsilon) after this round: only what verifies
        # against its manifest key counts, so the coordinator cannot choose a head.
        commitments = select_commitments(
            ledger,
            owners={cid: study.owners[cid].identity for cid in ids},
            study_id=study.study_id,
            round=number,
            client_ids=ids,
        )
        attestation = attestation_digest(
            chain_id=manifest.chain_id,
            contract=manifest.contract,
            study_id=study_id_bytes(study.study_id),
            round=number,
            aggregate_hash=aggregate_hash,
            contributors=list(payouts.values()),
            ledger_heads=attested_heads(payouts, commitments),
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
            rejections=self._rejections(study, number),
        )

    # -- coordinator: MPC validation and confirmation (cohort.aggregator.mpc_member) ------

    def validate(self, control: SignedControl) -> ValidationVerdict:
        """MPC: check the candidates' norms inside MPC with the other participants."""
        from cohort.aggregator import mpc_member

        study = self._verified(control, ControlKind.VALIDATE)
        return mpc_member.validate(self, study, ValidateBody.from_bytes(control.body))

    def confirm(self, control: SignedControl) -> AggregateResult:
        """MPC: reconstruct from the signed partials, check this member's, attest the sum."""
        from cohort.aggregator import mpc_member

        study = self._verified(control, ControlKind.CONFIRM)
        return mpc_member.confirm(self, study, ConfirmBody.from_bytes(control.body))
