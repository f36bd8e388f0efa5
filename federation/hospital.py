"""The data owner's side of a study: everything a hospital runs, one function per message.

These functions are run by the data owner (inside Cohort's ClientApp) and know nothing about
Flower: the ClientApp decodes a message with :mod:`cohort.federation.wire`, calls one of them
and encodes the reply. What leaves this module towards the coordinator is a receipt (ids,
counts, epsilon, hashes, the committee's signed upload receipt); the model update leaves
only as one CKKS ciphertext per round, signed for the whole committee and sent to one member
(or, in the comparison mode ``none`` where local policy allows it, in plaintext).

Every handler starts from :func:`_study`: the message names a study by its manifest hash, and
the owner acts only if its operator approved that manifest and the manifest fits the owner's
local :class:`~cohort.federation.policy.HospitalPolicy`. Every term comes from there - mode,
roster, dealer, committee, thresholds, rounds, DP terms, model - never from the message.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort.aggregator.client import MemberClient
from cohort.aggregator.committee import MemberRef
from cohort.aggregator.member import aggregate_result_digest
from cohort.aggregator.replication import UploadReceipt, upload_order
from cohort.bounties.attestation import epsilon_micro
from cohort.bounties.chain import RpcChain
from cohort.bounties.study import StudyContract
from cohort.clients.client_dp import privatize_update
from cohort.clients.client_dp import round_key as client_dp_key
from cohort.clients.data import Dataset, Normalizer, demo_split, load_csv, synthetic_split
from cohort.clients.ledger_commitment import LedgerCommitment
from cohort.clients.model import build_model, get_flat, set_flat
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import train_dp
from cohort.crypto.ckks import DEFAULT_PARAMS, CkksSecretContext, dealt_context_digest
from cohort.crypto.encoding import quantize
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import Identity, verify_signature
from cohort.crypto.tls import ChannelTls
from cohort.crypto.upload import build_upload
from cohort.errors import (
    BadInputError,
    BudgetExhausted,
    CohortError,
    ProtocolAbort,
    VerificationError,
)
from cohort.federation import train_receipts, wire
from cohort.federation.approval import Role, approved_manifest, check_finalized
from cohort.federation.dp_terms import dp_config
from cohort.federation.keystore import KeyStore
from cohort.federation.manifest import CommitteeEntry, Manifest, SecureMode
from cohort.federation.policy import HospitalPolicy
from cohort.logs import fields, get_logger

log = get_logger(__name__)

LIVENESS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HospitalSettings:
    """A data owner's local settings: never sent by the coordinator.

    ``data`` is a CSV path, ``demo:<index>`` for the built-in breast-cancer split (then
    ``demo_hospitals``, ``demo_seed`` and ``demo_alpha`` fix the split) or
    ``synthetic:<index>`` for seeded synthetic records (scale runs; ``demo_hospitals`` and
    ``demo_seed`` fix them). ``policy`` is the
    operator's own :class:`HospitalPolicy` (budget cap, accepted modes and models, minimum
    client set, seeding). ``dataset_id`` names the dataset's privacy ledger, which spans every
    study this dataset joins. CSV data is standardised with the normaliser of the approved
    manifest; the demo split comes standardised with the demo's published scaling.
    """

    party_id: str
    workdir: str
    data: str
    policy: HospitalPolicy
    label_column: str = "label"
    dataset_id: str = "default"
    demo_hospitals: int = 5
    demo_seed: int = 0
    demo_alpha: float = 1.0

    @property
    def keystore(self) -> KeyStore:
        return KeyStore(Path(self.workdir) / "keystore", self.party_id)

    @property
    def ledger_path(self) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.dataset_id)
        return Path(self.workdir) / f"ledger-{safe}.json"

    def dataset(self, manifest: Manifest) -> Dataset:
        normalizer = None if manifest.normalizer is None else json.dumps(manifest.normalizer)
        data = _load_dataset(
            self.data,
            self.label_column,
            (self.demo_hospitals, self.demo_seed, self.demo_alpha),
            manifest.num_classes,
            normalizer,
        )
        if data.features.shape[1] != manifest.features:
            raise BadInputError(
                f"{data.source}: {data.features.shape[1]} feature columns, the study's manifest "
                f"says {manifest.features}"
            )
        return data


@functools.lru_cache(maxsize=8)
def _load_dataset(
    data: str,
    label_column: str,
    demo: tuple[int, int, float],
    num_classes: int,
    normalizer: str | None,
) -> Dataset:
    kind, sep, rest = data.partition(":")
    if sep and kind in ("demo", "synthetic"):
        try:
            index = int(rest)
        except ValueError:
            raise BadInputError(f"data {data!r}: expected {kind}:<index>") from None
        if kind == "demo":
            hospitals, _ = demo_split(num_hospitals=demo[0], seed=demo[1], alpha=demo[2])
        else:
            hospitals, _ = synthetic_split(num_hospitals=demo[0], seed=demo[1])
        if not 0 <= index < len(hospitals):
            raise BadInputError(f"data {data!r}: index out of range 0..{len(hospitals) - 1}")
        return hospitals[index]
    dataset = load_csv(Path(data), label_column=label_column, num_classes=num_classes)
    if normalizer is None:
        return dataset
    return Normalizer.from_dict(json.loads(normalizer)).apply(dataset)


def _study(settings: HospitalSettings, study_id: str) -> tuple[Identity, Manifest]:
    """The approved manifest behind ``study_id``, checked against local policy."""
    identity = settings.keystore.identity()
    manifest = approved_manifest(Path(settings.workdir), study_id, identity, Role.OWNER)
    settings.policy.check(manifest)
    return identity, manifest


def _check_round(manifest: Manifest, round: int, what: str) -> None:
    if not 1 <= round <= manifest.rounds:
        raise VerificationError(
            f"{what} round {round}: the approved manifest has rounds 1..{manifest.rounds}"
        )


def member_tls(manifest: Manifest, entry: CommitteeEntry) -> ChannelTls | None:
    """The TLS pin for one member from the manifest (None for a study without TLS)."""
    return MemberRef.from_entry(entry).channel_tls(manifest.tls_ca)


# ------------------------------------------------------------------- set-up messages


def enroll(settings: HospitalSettings, request: wire.EnrollRequest) -> wire.EnrollReply:
    """Say which roster entry this node is and how much data it has (keys are in the manifest)."""
    identity, manifest = _study(settings, request.study_id)
    data = settings.dataset(manifest)
    log.info("enrolled", extra=fields(party=identity.party_id, study=manifest.study_id[:16]))
    return wire.EnrollReply(
        party_id=identity.party_id,
        examples=int(data.labels.shape[0]),
        features=int(data.features.shape[1]),
    )


def keygen(settings: HospitalSettings, request: wire.KeygenRequest) -> wire.KeygenReply:
    """Key dealer: create the study's CKKS context once and box it to the manifest's owners.

    Only the dealer the manifest names acts; the recipients and their keys are the manifest's
    roster, never a list from the coordinator. Asking again returns the same dealing.
    """
    identity, manifest = _study(settings, request.study_id)
    if manifest.secure is not SecureMode.CKKS:
        raise VerificationError(f"keygen: study {manifest.study_id[:16]} is not in CKKS mode")
    if manifest.key_dealer != identity.party_id:
        raise VerificationError(
            f"keygen: the manifest names {manifest.key_dealer!r} as key dealer, not this owner"
        )
    keystore = settings.keystore
    dealt = keystore.load_record("dealt", manifest.study_id)
    if dealt:
        return _dealt_from_record(dealt)
    context = CkksSecretContext.generate()
    keystore.install_ckks(manifest.study_id, context)
    secret = context.to_bytes()
    public = context.public()
    fingerprint = public.fingerprint()
    recipients = [o for o in manifest.owners if o.party_id != identity.party_id]
    reply = wire.KeygenReply(
        party_id=identity.party_id,
        public_context=public.to_bytes(),
        fingerprint=fingerprint,
        dealer_signature=identity.sign(dealt_context_digest(manifest.study_id, fingerprint)),
        recipients=tuple(o.party_id for o in recipients),
        boxes=tuple(identity.box_to(o.identity, secret) for o in recipients),
    )
    keystore.save_record("dealt", manifest.study_id, _dealt_to_record(reply))
    log.info("ckks context dealt", extra=fields(party=identity.party_id, peers=len(recipients)))
    return reply


def _dealt_to_record(reply: wire.KeygenReply) -> dict[str, Any]:
    return {
        "party_id": reply.party_id,
        "public_context": reply.public_context.hex(),
        "fingerprint": reply.fingerprint.hex(),
        "dealer_signature": reply.dealer_signature.hex(),
        "recipients": list(reply.recipients),
        "boxes": [box.hex() for box in reply.boxes],
    }


def _dealt_from_record(record: dict[str, Any]) -> wire.KeygenReply:
    try:
        return wire.KeygenReply(
            party_id=str(record["party_id"]),
            public_context=bytes.fromhex(record["public_context"]),
            fingerprint=bytes.fromhex(record["fingerprint"]),
            dealer_signature=bytes.fromhex(record["dealer_signature"]),
            recipients=tuple(str(r) for r in record["recipients"]),
            boxes=tuple(bytes.fromhex(b) for b in record["boxes"]),
        )
    except (KeyError, TypeError, ValueError):
        raise BadInputError("key store: the dealer's record of its dealing is malformed") from None


def install_key(
    settings: HospitalSettings, request: wire.InstallKeyRequest
) -> wire.InstallKeyReply:
    """Open the manifest's dealer's box and install the study's CKKS key, once.

    The Box authenticates the dealer's X25519 key from the manifest; the dealer's signature
    over the context fingerprint is checked with its Ed25519 key from the manifest; a key
    already installed for the study is never overwritten.
    """
    identity, manifest = _study(settings, request.study_id)
    if manifest.secure is not SecureMode.CKKS:
        raise VerificationError(f"install_key: study {manifest.study_id[:16]} is not in CKKS mode")
    dealer = manifest.owner(manifest.key_dealer)
    if dealer is None or dealer.party_id == identity.party_id:
        raise VerificationError("install_key: this owner is the study's key dealer")
    secret = identity.unbox_from(dealer.identity, request.box)
    context = CkksSecretContext.from_bytes(secret)
    fingerprint = context.public().fingerprint()
    if fingerprint != request.fingerprint:
        raise VerificationError("delivered CKKS context does not match the announced fingerprint")
    verify_signature(
        dealer.identity,
        dealt_context_digest(manifest.study_id, fingerprint),
        request.dealer_signature,
    )
    if not settings.keystore.install_ckks(manifest.study_id, context):
        log.warning(
            "second key delivery ignored (same key)",
            extra=fields(party=identity.party_id, study=manifest.study_id[:16]),
        )
    return wire.InstallKeyReply(party_id=identity.party_id, fingerprint=fingerprint)


# ------------------------------------------------------------------- one round


@dataclass(frozen=True)
class TrainOutcome:
    receipt: wire.TrainReceipt
    update: np.ndarray | None  # plaintext weighted update: only in SecureMode.NONE


def _receipt(
    party_id: str, status: str, reason: str, *, epsilon: float, **kw: Any
) -> wire.TrainReceipt:
    base: dict[str, Any] = {
        "party_id": party_id,
        "status": status,
        "reason": reason,
        "examples": 0,
        "epsilon": epsilon,
        "payload_hash": b"",
        "delivered": (),
        "receipts": (),
    }
    base.update(kw)
    return wire.TrainReceipt(**base)


def _ledger_commitment(
    identity: Identity, ledger: PrivacyLedger, study_id: str, round: int
) -> bytes:
    """The owner's signed (ledger head, micro-epsilon) right after this round's entry, for
    the committee to attest on-chain (:mod:`cohort.clients.ledger_commitment`)."""
    last = ledger.entries[-1]
    if last.study_id != study_id or last.event.round != round:
        raise ProtocolAbort(f"ledger: last entry is not round {round} of this study")
    return LedgerCommitment.sign(
        identity,
        study_id=study_id,
        round=round,
        head=ledger.head,
        epsilon_micro=epsilon_micro(last.epsilon_after),
    ).to_bytes()


def reachable_members(manifest: Manifest) -> list[str]:
    """Members answering Info within :data:`LIVENESS_TIMEOUT_S` (over the manifest's TLS pin)."""

    def ping(entry: CommitteeEntry) -> str | None:
        try:
            with MemberClient(entry.endpoint, tls=member_tls(manifest, entry)) as client:
                info = client.info(timeout_s=LIVENESS_TIMEOUT_S)
        except CohortError:
            return None
        return entry.member_id if info.info.member_id == entry.member_id else None

    with ThreadPoolExecutor(max_workers=len(manifest.committee)) as pool:
        return [m for m in pool.map(ping, manifest.committee) if m is not None]


def train(
    settings: HospitalSettings, instruction: wire.TrainInstruction, global_model: np.ndarray
) -> TrainOutcome:
    """Check, guard the budget, train with DP-SGD, protect the weighted update and upload it.

    Everything that could make this round's work unusable is checked before any privacy
    budget is spent: the approved manifest and local policy, the round number, our size
    against the weight unit, the key, and that a quorum of the committee is reachable.
    Returns a receipt for the coordinator. A declined round (budget, dead committee) or a
    failed upload is a receipt with that status and reason, never an exception. With the
    manifest's ``client_dp`` the weighted update is clipped and noised for client-level DP
    (:mod:`cohort.clients.client_dp`) before it is encoded.
    """
    identity, manifest = _study(settings, instruction.study_id)
    _check_round(manifest, instruction.round, "train")
    policy = settings.policy
    data = settings.dataset(manifest)
    examples = int(data.labels.shape[0])
    if examples > instruction.weight_unit:
        raise BadInputError(
            f"train round {instruction.round}: {examples} examples, more than the study's "
            f"weight unit {instruction.weight_unit} (largest enrolled owner)"
        )
    if global_model.shape[0] != manifest.update_length:
        raise BadInputError(
            f"train round {instruction.round}: global model has {global_model.shape[0]} values, "
            f"the manifest says {manifest.update_length}"
        )
    replayed = _replayed(settings, identity, manifest, instruction.round, global_model)
    if replayed is not None:
        return replayed
    ledger = PrivacyLedger.open(
        settings.ledger_path,
        owner=identity.party_id,
        epsilon_cap=policy.epsilon_cap,
        delta=policy.delta,
    )
    context: CkksSecretContext | None = None
    alive: list[str] = []
    if manifest.secure is SecureMode.CKKS:
        context = settings.keystore.load_ckks(manifest.study_id)
        alive = reachable_members(manifest)
        if len(alive) < manifest.quorum:
            reason = (
                f"only {len(alive)} of {len(manifest.committee)} committee members reachable, "
                f"quorum is {manifest.quorum}: no budget spent"
            )
            log.warning("round declined", extra=fields(party=identity.party_id, reason=reason))
            return TrainOutcome(
                _receipt(identity.party_id, "declined", reason, epsilon=ledger.epsilon()), None
            )

    dp = dp_config(manifest)
    seed = policy.noise_seed
    if seed is not None:
        torch.manual_seed(_derived_seed(seed, identity.party_id, instruction.round))
    model = build_model(
        manifest.model,
        in_features=manifest.features,
        num_classes=manifest.num_classes,
        registry=policy.models,
    )
    set_flat(model, global_model)
    try:
        result = train_dp(
            model,
            data,
            config=dp,
            ledger=ledger,
            round=instruction.round,
            noise_seed=seed,
            study_id=manifest.study_id,
        )
    except BudgetExhausted as exc:
        log.warning(
            "round declined",
            extra=fields(party=identity.party_id, round=instruction.round, reason=str(exc)),
        )
        return TrainOutcome(
            _receipt(identity.party_id, "declined", str(exc), epsilon=ledger.epsilon()), None
        )

    # FedAvg weight examples / weight_unit <= 1 keeps encoded values within the update's
    # own magnitude (CKKS max_abs), and the coordinator divides by the weight of S.
    weight = result.examples / instruction.weight_unit
    update = (get_flat(model).astype(np.float64) - global_model.astype(np.float64)) * weight
    if manifest.client_dp is not None:
        # Client-level DP: clip after weighting (sensitivity C), then this owner's share of
        # the aggregate's noise. C, sigma and min_clients are the approved manifest's.
        update = privatize_update(
            update,
            clip_norm=manifest.client_dp.clip_norm,
            noise_multiplier=manifest.client_dp.noise_multiplier,
            min_clients=manifest.min_clients,
            key=client_dp_key(noise_seed=seed, owner=identity.party_id, round=instruction.round),
        )
    done = {"examples": result.examples, "epsilon": result.epsilon}
    if context is None:
        # Grid values below max_abs need 22 significant bits: float32 carries them exactly.
        weighted = quantize(update, grid=DEFAULT_PARAMS.release_grid).astype(np.float32)
        return TrainOutcome(_receipt(identity.party_id, "ok", "", **done), weighted)
    payload = context.encrypt(quantize(update, grid=context.params.release_grid))
    payload_hash = tagged_hash(Tag.PAYLOAD, payload)
    delivered = upload(
        identity,
        manifest,
        round=instruction.round,
        payload=payload,
        payload_hash=payload_hash,
        prefer=alive,
    )
    status, reason = "ok", ""
    if delivered is None:
        status, reason = "failed", "no committee member accepted the upload"
    receipt = _receipt(
        identity.party_id,
        status,
        reason,
        payload_hash=payload_hash,
        delivered=() if delivered is None else (delivered.member_id,),
        receipts=() if delivered is None else (delivered.receipt,),
        ledger_commitment=_ledger_commitment(
            identity, ledger, manifest.study_id, instruction.round
        ),
        **done,
    )
    if status == "ok":
        train_receipts.save(
            Path(settings.workdir),
            manifest.study_id,
            train_receipts.StoredReceipt(
                instruction.round, wire.plaintext_hash(global_model), receipt
            ),
        )
    return TrainOutcome(receipt, None)


def _replayed(
    settings: HospitalSettings,
    identity: Identity,
    manifest: Manifest,
    round: int,
    global_model: np.ndarray,
) -> TrainOutcome | None:
    """The stored outcome of a round this owner already trained (see train_receipts).

    The same global model gets the same receipt and costs no budget; another model is
    declined, since the ledger holds the round already. None: the round is new.
    """
    stored = train_receipts.load(Path(settings.workdir), manifest.study_id, round)
    if stored is None:
        return None
    if stored.global_hash != wire.plaintext_hash(global_model):
        reason = (
            f"round {round} was already trained on another global model: not training it "
            "again (no budget spent)"
        )
        log.warning("round declined", extra=fields(party=identity.party_id, reason=reason))
        return TrainOutcome(
            _receipt(identity.party_id, "declined", reason, epsilon=stored.receipt.epsilon), None
        )
    log.info(
        "round already trained: stored receipt sent again, no budget spent",
        extra=fields(party=identity.party_id, round=round),
    )
    return TrainOutcome(stored.receipt, None)


@dataclass(frozen=True, repr=False)
class Delivered:
    """Which member accepted a round's upload, and its signed receipt (forwarded to the
    coordinator, which hands it to the other members to fetch their copies)."""

    member_id: str
    receipt: bytes


def upload(
    identity: Identity,
    manifest: Manifest,
    *,
    round: int,
    payload: bytes,
    payload_hash: bytes | None = None,
    prefer: Sequence[str] = (),
) -> Delivered | None:
    """Send the round's payload ONCE: one committee upload, to the first member that takes it.

    The upload is signed for the whole committee (:func:`cohort.crypto.upload.build_upload`)
    and sealed to the member it goes to. Members are tried in
    :func:`~cohort.aggregator.replication.upload_order` for (study, round, owner), those in
    ``prefer`` (the ones that answered the liveness ping) first; a member that refuses, is
    down, or answers without a valid signed receipt is skipped for the next. Returns the
    member and its receipt, or None when none took it.
    """
    digest = payload_hash if payload_hash is not None else tagged_hash(Tag.PAYLOAD, payload)
    committee = [entry.identity for entry in manifest.committee]
    order = upload_order(
        manifest.member_ids, study_id=manifest.study_id, round=round, sender=identity.party_id
    )
    order = tuple(m for m in order if m in prefer) + tuple(m for m in order if m not in prefer)
    for member_id in order:
        entry = manifest.member(member_id)
        assert entry is not None
        data = build_upload(
            identity,
            committee,
            entry.identity,
            study_id=manifest.study_id,
            round=round,
            payload=payload,
            payload_hash=digest,
        ).to_bytes()
        try:
            with MemberClient(entry.endpoint, tls=member_tls(manifest, entry)) as client:
                verdict = client.upload(data)
            UploadReceipt(
                member_id, manifest.study_id, round, identity.party_id, digest, verdict.receipt
            ).verify(entry.identity)
        except CohortError as exc:
            log.warning(
                "upload not taken", extra=fields(member=member_id, round=round, reason=str(exc))
            )
            continue
        log.info("upload taken", extra=fields(member=member_id, round=round, size=len(data)))
        return Delivered(member_id, verdict.receipt)
    return None


def decrypt(
    settings: HospitalSettings, request: wire.DecryptRequest
) -> tuple[wire.DecryptReply, np.ndarray]:
    """Decrypt an aggregate, and only an aggregate, at most one per round.

    Refuses unless the round is within the manifest, the client set lies within the roster
    and has at least max(manifest, local policy) ``min_clients`` owners including this one,
    the ciphertext hashes to ``aggregate_hash``, and a quorum of the manifest's committee
    signed this (study, round, client set, aggregate hash), and - when the owner's policy names
    a chain it trusts - the study contract finalized exactly this aggregate and client set
    for the round (one result per round, whoever signs what). Before decrypting it durably
    records the round's aggregate and refuses any other aggregate for that round later. The
    reply signs the hash of what it returns, so a wrong decryption is attributable.
    """
    identity, manifest = _study(settings, request.study_id)
    _check_round(manifest, request.round, "decrypt")
    if manifest.secure is not SecureMode.CKKS:
        raise VerificationError(f"decrypt: study {manifest.study_id[:16]} is not in CKKS mode")
    ids = set(request.client_ids)
    minimum = max(manifest.min_clients, settings.policy.min_clients)
    if len(ids) != len(request.client_ids) or len(ids) < minimum:
        raise VerificationError(
            f"decrypt round {request.round}: client set has {len(ids)} distinct members, "
            f"at least {minimum} required"
        )
    outside = sorted(ids - set(manifest.owner_ids))
    if outside:
        raise VerificationError(
            f"decrypt round {request.round}: {outside[0]!r} is not in the study's roster"
        )
    if identity.party_id not in ids:
        raise VerificationError(
            f"decrypt round {request.round}: this owner is not in the client set"
        )
    if tagged_hash(Tag.AGGREGATE, request.aggregate) != request.aggregate_hash:
        raise VerificationError(f"decrypt round {request.round}: aggregate does not match its hash")
    _check_quorum_signatures(manifest, request)
    if settings.policy.chain_url is not None:
        check_finalized(
            StudyContract.at(RpcChain(settings.policy.chain_url), manifest.contract),
            manifest,
            round=request.round,
            client_ids=request.client_ids,
            aggregate_hash=request.aggregate_hash,
        )
    settings.keystore.record_decryption(
        manifest.study_id,
        request.round,
        client_set_hash=client_set_hash(tuple(sorted(ids))),
        aggregate_hash=request.aggregate_hash,
    )
    vector = settings.keystore.load_ckks(manifest.study_id).decrypt(request.aggregate)
    plain_hash = wire.plaintext_hash(vector)
    signature = identity.sign(
        wire.decryption_digest(
            study_id=manifest.study_id,
            round=request.round,
            aggregate_hash=request.aggregate_hash,
            plain_hash=plain_hash,
        )
    )
    reply = wire.DecryptReply(
        party_id=identity.party_id,
        round=request.round,
        length=int(vector.shape[0]),
        plain_hash=plain_hash,
        signature=signature,
    )
    return reply, vector


def _check_quorum_signatures(manifest: Manifest, request: wire.DecryptRequest) -> None:
    message = aggregate_result_digest(
        study_id=manifest.study_id,
        round=request.round,
        client_ids=request.client_ids,
        aggregate_hash=request.aggregate_hash,
    )
    signers: set[str] = set()
    committee: Mapping[str, CommitteeEntry] = {m.member_id: m for m in manifest.committee}
    for member_id, signature in zip(request.member_ids, request.member_signatures, strict=True):
        member = committee.get(member_id)
        if member is None:
            raise VerificationError(
                f"decrypt round {request.round}: {member_id!r} is not a committee member"
            )
        verify_signature(member.identity, message, signature)
        signers.add(member_id)
    if len(signers) < manifest.quorum:
        raise VerificationError(
            f"decrypt round {request.round}: {len(signers)} committee signatures, "
            f"quorum is {manifest.quorum}"
        )


def _derived_seed(seed: int, party_id: str, round: int) -> int:
    digest = tagged_hash(
        Tag.NOISE_SEED, str(seed).encode(), party_id.encode(), b"init", str(round).encode()
    )
    return int.from_bytes(digest[:8], "big") >> 1


__all__ = [
    "Delivered",
    "HospitalSettings",
    "TrainOutcome",
    "decrypt",
    "enroll",
    "install_key",
    "keygen",
    "member_tls",
    "reachable_members",
    "train",
    "upload",
]
