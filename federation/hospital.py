"""The data owner's side of a study: everything a hospital runs, one function per message.

These functions are run by the data owner (inside Cohort's ClientApp) and know nothing about
Flower: the ClientApp decodes a message with :mod:`cohort.federation.wire`, calls one of them
and encodes the reply. What leaves this module towards the coordinator is a receipt (ids,
counts, epsilon, hashes, the committee's signed upload receipts); the model update leaves
only as the study's secure mode protects it (:mod:`cohort.federation.modes`: one CKKS
ciphertext set uploaded once, or one secret share sealed to each member), or, in the
comparison mode ``none`` where local policy allows it, in plaintext. :func:`train` does not
branch on the mode. The CKKS key and decryption handlers live in
:mod:`cohort.federation.modes.ckks.owner` and are re-exported here.

Every handler starts from :func:`~cohort.federation.owner_study.study_of`: the message names
a study by its manifest hash, and the owner acts only if its operator approved that manifest
and the manifest fits the owner's local :class:`~cohort.federation.policy.HospitalPolicy`.
Every term comes from there - mode, roster, dealer, committee, thresholds, rounds, DP terms,
model - never from the message.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort.bounties.attestation import epsilon_micro
from cohort.clients.client_dp import privatize_update
from cohort.clients.client_dp import round_key as client_dp_key
from cohort.clients.data import Dataset, Normalizer, demo_split, load_csv, synthetic_split
from cohort.clients.ledger_commitment import LedgerCommitment
from cohort.clients.model import build_model, get_flat, set_flat
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import train_dp
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, BudgetExhausted, ProtocolAbort, VerificationError
from cohort.federation import train_receipts, wire
from cohort.federation.dp_terms import dp_config
from cohort.federation.keystore import KeyStore
from cohort.federation.manifest import Manifest
from cohort.federation.modes import owner_mode
from cohort.federation.modes.base import OwnerMode
from cohort.federation.modes.ckks.owner import decrypt, install_key, keygen
from cohort.federation.owner_net import (
    LIVENESS_TIMEOUT_S,
    Delivered,
    member_tls,
    reachable_members,
    upload,
)
from cohort.federation.owner_study import check_round, study_of
from cohort.federation.policy import HospitalPolicy
from cohort.federation.reveal import check_reveal, next_model
from cohort.logs import fields, get_logger

log = get_logger(__name__)


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
        hospitals = _split(kind, demo)
        if not 0 <= index < len(hospitals):
            raise BadInputError(f"data {data!r}: index out of range 0..{len(hospitals) - 1}")
        return hospitals[index]
    dataset = load_csv(Path(data), label_column=label_column, num_classes=num_classes)
    if normalizer is None:
        return dataset
    return Normalizer.from_dict(json.loads(normalizer)).apply(dataset)


@functools.lru_cache(maxsize=2)
def _split(kind: str, demo: tuple[int, int, float]) -> tuple[Dataset, ...]:
    """Every hospital's part of the demo or synthetic split, built once per process: the
    owners that share a process (a ClientApp actor runs many) each take their own part."""
    if kind == "demo":
        hospitals, _ = demo_split(num_hospitals=demo[0], seed=demo[1], alpha=demo[2])
    else:
        hospitals, _ = synthetic_split(num_hospitals=demo[0], seed=demo[1])
    return tuple(hospitals)


def enroll(settings: HospitalSettings, request: wire.EnrollRequest) -> wire.EnrollReply:
    """Say which roster entry this node is and how much data it has (keys are in the manifest)."""
    identity, manifest = study_of(settings, request.study_id)
    data = settings.dataset(manifest)
    log.info("enrolled", extra=fields(party=identity.party_id, study=manifest.study_id[:16]))
    return wire.EnrollReply(
        party_id=identity.party_id,
        examples=int(data.labels.shape[0]),
        features=int(data.features.shape[1]),
    )


# ------------------------------------------------------------------- one round


@dataclass(frozen=True)
class TrainOutcome:
    receipt: wire.TrainReceipt
    update: np.ndarray | None  # plaintext weighted update: only in SecureMode.NONE
    #: The previous round's decryption when the train message carried its reveal
    #: (:mod:`cohort.federation.reveal`): the signed reply and the decrypted sum.
    revealed: tuple[wire.DecryptReply, np.ndarray] | None = None


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


def train(
    settings: HospitalSettings,
    instruction: wire.TrainInstruction,
    global_model: np.ndarray,
    reveal: wire.DecryptRequest | None = None,
) -> TrainOutcome:
    """Check, guard the budget, train with DP-SGD, protect the weighted update and send it.

    Everything that could make this round's work unusable is checked before any privacy
    budget is spent: the approved manifest and local policy, the round number, our size
    against the weight unit, and whatever the study's secure mode needs (its
    :meth:`~cohort.federation.modes.base.OwnerMode.prepare`: the key, a reachable quorum of
    the committee). Returns a receipt for the coordinator. A declined round (budget, dead
    committee) or a failed upload is a receipt with that status and reason, never an
    exception. With the manifest's ``client_dp`` the weighted update is clipped and noised
    for client-level DP (:mod:`cohort.clients.client_dp`) before the mode protects it.

    With ``reveal`` (the previous round's aggregate, :mod:`cohort.federation.reveal`) the
    owner first decrypts it under every check of :func:`decrypt` and trains from the model
    it gives; a refused decryption raises before any budget is spent.
    """
    identity, manifest = study_of(settings, instruction.study_id)
    check_round(manifest, instruction.round, "train")
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
    revealed = None
    if reveal is None and instruction.reveal_weight:
        raise BadInputError(f"train round {instruction.round}: a reveal weight and no reveal")
    mode = owner_mode(settings, manifest)
    mode.begin()  # the committee's liveness travels while the last sum is checked
    if reveal is not None:
        check_reveal(instruction, reveal)
        revealed = decrypt(settings, reveal)
        if revealed[1].shape != global_model.shape:
            raise VerificationError(
                f"train round {instruction.round}: the revealed sum of round {reveal.round} "
                f"has {revealed[1].shape[0]} values, the model {global_model.shape[0]}"
            )
        global_model = next_model(
            global_model,
            revealed[1],
            weight=instruction.reveal_weight,
            server_lr=manifest.server_lr,
        )
    outcome = _train(settings, identity, manifest, instruction, global_model, data, mode)
    return dataclasses.replace(outcome, revealed=revealed) if revealed else outcome


def _train(
    settings: HospitalSettings,
    identity: Identity,
    manifest: Manifest,
    instruction: wire.TrainInstruction,
    global_model: np.ndarray,
    data: Dataset,
    mode: OwnerMode,
) -> TrainOutcome:
    policy = settings.policy
    replayed = _replayed(settings, identity, manifest, instruction.round, global_model)
    if replayed is not None:
        return replayed
    ledger = PrivacyLedger.open(
        settings.ledger_path,
        owner=identity.party_id,
        epsilon_cap=policy.epsilon_cap,
        delta=policy.delta,
    )
    reason = mode.prepare()
    if reason is not None:
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
    # own magnitude (CKKS max_abs, the MPC field range), and the coordinator divides by the
    # weight of S.
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
    delivery = mode.deliver(identity, round=instruction.round, update=update)
    receipt = _receipt(
        identity.party_id,
        delivery.status,
        delivery.reason,
        payload_hash=delivery.payload_hash,
        delivered=delivery.delivered,
        receipts=delivery.receipts,
        payload_hashes=delivery.payload_hashes,
        ledger_commitment=_ledger_commitment(
            identity, ledger, manifest.study_id, instruction.round
        ),
        **done,
    )
    if delivery.status == "ok" and delivery.stored:
        train_receipts.save(
            Path(settings.workdir),
            manifest.study_id,
            train_receipts.StoredReceipt(
                instruction.round, wire.plaintext_hash(global_model), receipt
            ),
        )
    return TrainOutcome(receipt, delivery.update)


def foresee_next_round(settings: HospitalSettings, study_id: str) -> None:
    """Work out now the privacy accounting of this owner's next round of ``study_id``, if it
    repeats the last one (:meth:`~cohort.clients.privacy.PrivacyLedger.foresee_next_round`),
    into the accountant's memo; run once a round's reply has left (a deployed owner's
    warm ClientApp, :func:`cohort.federation.client_app.after_reply`). Reads the ledger,
    writes nothing to it.
    """
    if settings.ledger_path.is_file():
        PrivacyLedger.load(settings.ledger_path).foresee_next_round(study_id)


def foresee_study(settings: HospitalSettings, study_id: str) -> None:
    """Work out now the noise calibration and the privacy accounting of every round of
    ``study_id`` this owner may train (:meth:`~cohort.clients.privacy.PrivacyLedger.foresee_study`),
    into the accountant's memo; run once the enrollment reply has left (a deployed owner's
    warm ClientApp, :func:`cohort.federation.client_app.after_reply`), so the study's rounds
    wait on neither. Reads the approved manifest, the data and the ledger; writes nothing
    but the memo.
    """
    identity, manifest = study_of(settings, study_id)
    policy = settings.policy
    path = settings.ledger_path
    entries = PrivacyLedger.load(path).entries if path.is_file() else ()
    ledger = PrivacyLedger(
        path,
        owner=identity.party_id,
        epsilon_cap=policy.epsilon_cap,
        delta=policy.delta,
        entries=entries,
    )
    examples = int(settings.dataset(manifest).labels.shape[0])
    event = dp_config(manifest).event(examples, round=1)
    foreseen = ledger.foresee_study(event, study_id=manifest.study_id, rounds=manifest.rounds)
    log.info("study's accounting foreseen", extra=fields(study=study_id[:16], rounds=foreseen))


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


def _derived_seed(seed: int, party_id: str, round: int) -> int:
    digest = tagged_hash(
        Tag.NOISE_SEED, str(seed).encode(), party_id.encode(), b"init", str(round).encode()
    )
    return int.from_bytes(digest[:8], "big") >> 1


__all__ = [
    "LIVENESS_TIMEOUT_S",
    "Delivered",
    "HospitalSettings",
    "TrainOutcome",
    "check_round",
    "decrypt",
    "enroll",
    "foresee_next_round",
    "foresee_study",
    "install_key",
    "keygen",
    "member_tls",
    "reachable_members",
    "study_of",
    "train",
    "upload",
]
