"""The data owner's side of a study: everything a hospital runs, one function per message.

These functions are run by the data owner (inside Cohort's ClientApp) and know nothing about
Flower: the ClientApp decodes a message with :mod:`cohort.federation.wire`, calls one of them
and encodes the reply. What leaves this module towards the coordinator is a receipt (ids,
counts, epsilon, hashes); the model update leaves only as CKKS ciphertexts sealed to each
committee member (or, in the comparison mode ``none``, in plaintext).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cohort.aggregator.client import MemberClient
from cohort.aggregator.member import aggregate_result_digest
from cohort.clients.data import Dataset, Normalizer, demo_split, load_csv
from cohort.clients.model import build_model, get_flat, set_flat
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import DpConfig, train_dp
from cohort.crypto.ckks import DEFAULT_PARAMS, CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.envelope import build_envelope
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, BudgetExhausted, CohortError, VerificationError
from cohort.federation import wire
from cohort.federation.config import SecureMode
from cohort.federation.keystore import KeyStore
from cohort.logs import fields, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class HospitalSettings:
    """A data owner's local settings: never sent by the coordinator.

    ``data`` is a CSV path, or ``demo:<index>`` for the built-in breast-cancer split (then
    ``demo_hospitals``, ``demo_seed`` and ``demo_alpha`` fix the split). ``epsilon_cap`` is
    the owner's own budget; the guard uses the smaller of it and the study's epsilon.
    ``normalizer`` is the feature scaling the sponsor publishes with the study (a JSON file,
    :class:`~cohort.clients.data.Normalizer`); CSV data is standardised with it. The demo
    split comes standardised with the demo's published scaling.
    """

    party_id: str
    workdir: str
    data: str
    label_column: str = "label"
    epsilon_cap: float | None = None
    normalizer: str | None = None
    demo_hospitals: int = 5
    demo_seed: int = 0
    demo_alpha: float = 1.0

    @property
    def keystore(self) -> KeyStore:
        return KeyStore(Path(self.workdir) / "keystore", self.party_id)

    def ledger_path(self, study_id: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_id)
        return Path(self.workdir) / f"ledger-{safe}.json"

    def dataset(self) -> Dataset:
        return _load_dataset(self)


@functools.lru_cache(maxsize=8)
def _load_dataset(settings: HospitalSettings) -> Dataset:
    if settings.data.startswith("demo:"):
        try:
            index = int(settings.data.removeprefix("demo:"))
        except ValueError:
            raise BadInputError(f"data {settings.data!r}: expected demo:<index>") from None
        hospitals, _ = demo_split(
            num_hospitals=settings.demo_hospitals,
            seed=settings.demo_seed,
            alpha=settings.demo_alpha,
        )
        if not 0 <= index < len(hospitals):
            raise BadInputError(
                f"data {settings.data!r}: index out of range 0..{len(hospitals) - 1}"
            )
        return hospitals[index]
    dataset = load_csv(Path(settings.data), label_column=settings.label_column, num_classes=2)
    if settings.normalizer is None:
        return dataset
    path = Path(settings.normalizer)
    try:
        published = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"normalizer {path}: cannot read it as JSON ({exc})") from None
    return Normalizer.from_dict(published).apply(dataset)


# ------------------------------------------------------------------- set-up messages


def enroll(settings: HospitalSettings, request: wire.EnrollRequest) -> wire.EnrollReply:
    """Create (or load) this owner's identity and payout account; report public keys only."""
    identity = settings.keystore.identity()
    data = settings.dataset()
    log.info("enrolled", extra=fields(party=settings.party_id, study=request.study_id))
    return wire.EnrollReply(
        party_id=identity.party_id,
        sign_key=identity.public.sign_key,
        box_key=identity.public.box_key,
        payout_address=settings.keystore.payout_address(),
        examples=int(data.labels.shape[0]),
        features=int(data.features.shape[1]),
    )


def keygen(settings: HospitalSettings, request: wire.KeygenRequest) -> wire.KeygenReply:
    """Key dealer: create the study's CKKS context and box its secret part to each peer."""
    identity = settings.keystore.identity()
    context = CkksSecretContext.generate()
    settings.keystore.save_ckks(request.study_id, context)
    secret = context.to_bytes()
    public = context.public()
    recipients: list[str] = []
    boxes: list[bytes] = []
    for peer in request.roster():
        if peer.party_id == identity.party_id:
            continue
        recipients.append(peer.party_id)
        boxes.append(identity.box_to(peer, secret))
    log.info("ckks context dealt", extra=fields(party=settings.party_id, peers=len(recipients)))
    return wire.KeygenReply(
        party_id=identity.party_id,
        public_context=public.to_bytes(),
        fingerprint=public.fingerprint(),
        recipients=tuple(recipients),
        boxes=tuple(boxes),
    )


def install_key(
    settings: HospitalSettings, request: wire.InstallKeyRequest
) -> wire.InstallKeyReply:
    """Open the dealer's box and store the CKKS secret context; check its fingerprint."""
    identity = settings.keystore.identity()
    dealer = PublicIdentity(
        party_id=request.dealer_id, sign_key=request.dealer_sign_key, box_key=request.dealer_box_key
    )
    secret = identity.unbox_from(dealer, request.box)
    context = CkksSecretContext.from_bytes(secret)
    fingerprint = context.public().fingerprint()
    if fingerprint != request.fingerprint:
        raise VerificationError("delivered CKKS context does not match the announced fingerprint")
    settings.keystore.save_ckks(request.study_id, context)
    return wire.InstallKeyReply(party_id=identity.party_id, fingerprint=fingerprint)


# ------------------------------------------------------------------- one round


@dataclass(frozen=True)
class TrainOutcome:
    receipt: wire.TrainReceipt
    update: np.ndarray | None  # plaintext weighted update: only in SecureMode.NONE


def train(
    settings: HospitalSettings, instruction: wire.TrainInstruction, global_model: np.ndarray
) -> TrainOutcome:
    """Guard the budget, train with DP-SGD, encrypt the weighted update and upload it.

    Returns a receipt for the coordinator. A declined round (budget) or a failed upload is a
    receipt with that status and reason, never an exception: the round goes on without us.
    """
    identity = settings.keystore.identity()
    data = settings.dataset()
    cap = instruction.epsilon
    if settings.epsilon_cap is not None:
        cap = min(cap, settings.epsilon_cap)
    dp = DpConfig(
        target_epsilon=instruction.epsilon,
        total_rounds=instruction.total_rounds,
        local_epochs=instruction.local_epochs,
        batch_size=instruction.batch_size,
        max_grad_norm=instruction.max_grad_norm,
        delta=instruction.delta,
        lr=instruction.lr,
    )
    ledger = PrivacyLedger.open(
        settings.ledger_path(instruction.study_id),
        owner=identity.party_id,
        epsilon_cap=cap,
        delta=instruction.delta,
    )
    # Everything that could make this round's work unusable is checked before any privacy
    # budget is spent on it: our size against the weight unit, the pinned study terms, the key.
    examples = int(data.labels.shape[0])
    if examples > instruction.weight_unit:
        raise BadInputError(
            f"train round {instruction.round}: {examples} examples, more than the study's "
            f"weight unit {instruction.weight_unit} (largest enrolled owner)"
        )
    secure = SecureMode.parse(instruction.secure)
    context: CkksSecretContext | None = None
    members = instruction.committee()
    if secure is SecureMode.CKKS:
        settings.keystore.pin_terms(
            instruction.study_id,
            [m.identity() for m in members],
            quorum=instruction.quorum,
            min_clients=instruction.min_clients,
        )
        context = settings.keystore.load_ckks(instruction.study_id)

    seed = None if instruction.seed < 0 else instruction.seed
    if seed is not None:
        torch.manual_seed(_derived_seed(seed, identity.party_id, instruction.round))
    model = build_model(instruction.model, in_features=data.features.shape[1], num_classes=2)
    set_flat(model, global_model)

    def receipt(status: str, reason: str, **kw: object) -> wire.TrainReceipt:
        base: dict[str, object] = {
            "party_id": identity.party_id,
            "status": status,
            "reason": reason,
            "examples": 0,
            "payload_hash": b"",
            "delivered": (),
        }
        base.update(kw)
        if "epsilon" not in base:  # a declined round: what the ledger already holds
            base["epsilon"] = ledger.epsilon()
        return wire.TrainReceipt(**base)  # type: ignore[arg-type]

    try:
        result = train_dp(
            model, data, config=dp, ledger=ledger, round=instruction.round, noise_seed=seed
        )
    except BudgetExhausted as exc:
        log.warning(
            "round declined",
            extra=fields(party=identity.party_id, round=instruction.round, reason=str(exc)),
        )
        return TrainOutcome(receipt("declined", str(exc)), None)

    # FedAvg weight examples / weight_unit <= 1 keeps encoded values within the update's
    # own magnitude (CKKS max_abs), and the coordinator divides by the weight of S.
    weight = result.examples / instruction.weight_unit
    update = (get_flat(model).astype(np.float64) - global_model.astype(np.float64)) * weight
    if context is None:
        # Grid values below max_abs need 22 significant bits: float32 carries them exactly.
        weighted = quantize(update, grid=DEFAULT_PARAMS.release_grid).astype(np.float32)
        return TrainOutcome(
            receipt("ok", "", examples=result.examples, epsilon=result.epsilon),
            weighted,
        )
    weighted = quantize(update, grid=context.params.release_grid)
    # No training loss: it is computed without noise, so DP does not cover it.
    common = {"examples": result.examples, "epsilon": result.epsilon}
    payload = context.encrypt(weighted)
    payload_hash = tagged_hash(Tag.PAYLOAD, payload)
    delivered = upload(
        identity, members, study_id=instruction.study_id, round=instruction.round, payload=payload
    )
    if len(delivered) < instruction.quorum:
        return TrainOutcome(
            receipt(
                "failed",
                f"upload accepted by {len(delivered)} members, quorum is {instruction.quorum}",
                payload_hash=payload_hash,
                delivered=tuple(delivered),
                **common,
            ),
            None,
        )
    return TrainOutcome(
        receipt("ok", "", payload_hash=payload_hash, delivered=tuple(delivered), **common), None
    )


def upload(
    identity: Identity,
    members: Sequence[wire.MemberInfo],
    *,
    study_id: str,
    round: int,
    payload: bytes,
) -> list[str]:
    """Send one signed, sealed envelope to each member in parallel; return who accepted."""

    def one(member: wire.MemberInfo) -> str | None:
        envelope = build_envelope(
            identity, member.identity(), study_id=study_id, round=round, payload=payload
        )
        client = MemberClient(member.endpoint)
        try:
            client.upload(envelope.to_bytes())
        except CohortError as exc:
            log.warning(
                "upload rejected",
                extra=fields(member=member.member_id, round=round, reason=str(exc)),
            )
            return None
        finally:
            client.close()
        return member.member_id

    with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
        results = list(pool.map(one, members))
    return [m for m in results if m is not None]


def decrypt(
    settings: HospitalSettings, request: wire.DecryptRequest
) -> tuple[wire.DecryptReply, np.ndarray]:
    """Rotating decryptor: decrypt an aggregate, and only an aggregate.

    Refuses unless the ciphertext hashes to ``aggregate_hash``, the client set has at least
    ``min_clients`` members, and ``quorum`` distinct members of the pinned committee signed
    this (study, round, client set, aggregate hash). Committee, quorum and ``min_clients`` are
    the terms pinned at this owner's first round, not values from this request. A single
    owner's ciphertext can never satisfy these checks, so a curious coordinator cannot use us
    as a decryption oracle.
    """
    identity = settings.keystore.identity()
    terms = settings.keystore.pinned_terms(request.study_id)
    committee, quorum, min_clients = terms.committee, terms.quorum, terms.min_clients
    if len(set(request.client_ids)) < min_clients:
        raise VerificationError(
            f"decrypt round {request.round}: client set has "
            f"{len(set(request.client_ids))} members, "
            f"at least {min_clients} required"
        )
    if tagged_hash(Tag.AGGREGATE, request.aggregate) != request.aggregate_hash:
        raise VerificationError(f"decrypt round {request.round}: aggregate does not match its hash")
    message = aggregate_result_digest(
        study_id=request.study_id,
        round=request.round,
        client_ids=request.client_ids,
        aggregate_hash=request.aggregate_hash,
    )
    signers: set[str] = set()
    for member_id, signature in zip(request.member_ids, request.member_signatures, strict=True):
        member = committee.get(member_id)
        if member is None:
            raise VerificationError(
                f"decrypt round {request.round}: {member_id!r} is not a committee member"
            )
        verify_signature(member, message, signature)
        signers.add(member_id)
    if len(signers) < quorum:
        raise VerificationError(
            f"decrypt round {request.round}: {len(signers)} committee signatures, "
            f"quorum is {quorum}"
        )
    context = settings.keystore.load_ckks(request.study_id)
    vector = context.decrypt(request.aggregate)
    return wire.DecryptReply(
        party_id=identity.party_id, round=request.round, length=int(vector.shape[0])
    ), vector


def _derived_seed(seed: int, party_id: str, round: int) -> int:
    digest = tagged_hash(
        Tag.NOISE_SEED, str(seed).encode(), party_id.encode(), b"init", str(round).encode()
    )
    return int.from_bytes(digest[:8], "big") >> 1
