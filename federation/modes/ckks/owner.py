"""CKKS mode, data owner side: deal or install the study's key, encrypt and upload once,
decrypt an aggregate (and only an aggregate, at most one per round).

Run by the data owner inside Cohort's ClientApp. The key dealer the manifest names creates
the CKKS context and boxes its secret part to the manifest's roster (:func:`keygen`); every
other owner installs it once (:func:`install_key`). Each round the weighted update is
quantised, encrypted as one seeded ciphertext set and uploaded ONCE, signed for the whole
committee (:class:`CkksOwner`); :func:`decrypt` opens a quorum-signed aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cohort.aggregator.member import aggregate_result_digest
from cohort.bounties.reads import StudyReads
from cohort.crypto.ckks import CkksSecretContext, dealt_context_digest
from cohort.crypto.encoding import quantize
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import Identity, verify_signature
from cohort.errors import BadInputError, VerificationError
from cohort.federation import wire
from cohort.federation.approval import check_finalized
from cohort.federation.manifest import CommitteeEntry, Manifest, SecureMode
from cohort.federation.modes.base import CommitteeOwner, Delivery
from cohort.federation.owner_net import fetch_aggregate, upload
from cohort.federation.owner_study import check_round, study_of
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.federation.hospital import HospitalSettings

log = get_logger(__name__)


class CkksOwner(CommitteeOwner):
    """Encrypt under the study's installed context; upload once to a reachable member."""

    name: ClassVar[SecureMode] = SecureMode.CKKS

    def prepare(self) -> str | None:
        manifest = self.manifest
        self._context = self.settings.keystore.load_ckks(manifest.study_id)
        self._alive = self.reachable()
        if len(self._alive) < manifest.quorum:
            return (
                f"only {len(self._alive)} of {len(manifest.committee)} committee members "
                f"reachable, quorum is {manifest.quorum}: no budget spent"
            )
        return None

    def deliver(self, identity: Identity, *, round: int, update: np.ndarray) -> Delivery:
        context = self._context
        payload = context.encrypt(quantize(update, grid=context.params.release_grid))
        payload_hash = tagged_hash(Tag.PAYLOAD, payload)
        delivered = upload(
            identity,
            self.manifest,
            round=round,
            payload=payload,
            payload_hash=payload_hash,
            prefer=self._alive,
        )
        if delivered is None:
            return Delivery(
                "failed", "no committee member accepted the upload", payload_hash=payload_hash
            )
        return Delivery(
            "ok",
            payload_hash=payload_hash,
            delivered=(delivered.member_id,),
            receipts=(delivered.receipt,),
        )


def keygen(settings: HospitalSettings, request: wire.KeygenRequest) -> wire.KeygenReply:
    """Key dealer: create the study's CKKS context once and box it to the manifest's owners.

    Only the dealer the manifest names acts; the recipients and their keys are the manifest's
    roster, never a list from the coordinator. Asking again returns the same dealing.
    """
    identity, manifest = study_of(settings, request.study_id)
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
    identity, manifest = study_of(settings, request.study_id)
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


#: How a decrypting owner gets an aggregate the request left out (:func:`fetch_aggregate`).
AggregateSource = Callable[..., bytes]


def decrypt(
    settings: HospitalSettings,
    request: wire.DecryptRequest,
    *,
    fetch: AggregateSource = fetch_aggregate,
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

    A request without the ciphertext (a large one, see
    :data:`cohort.federation.modes.ckks.coordinator.RELAY_AGGREGATE_MAX`) names its hash
    only: after the round, client set, quorum and chain checks the owner fetches the bytes
    from the members that signed it (``fetch``, by default
    :func:`~cohort.federation.owner_net.fetch_aggregate`, which checks each member's bytes
    to choose among them). Relayed or fetched, the owner itself checks the bytes against
    ``aggregate_hash`` before anything is recorded or decrypted.
    """
    identity, manifest = study_of(settings, request.study_id)
    check_round(manifest, request.round, "decrypt")
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
    _check_quorum_signatures(manifest, request)
    if settings.policy.chain_url is not None:
        check_finalized(
            StudyReads(settings.policy.chain_url, manifest.contract),
            manifest,
            round=request.round,
            client_ids=request.client_ids,
            aggregate_hash=request.aggregate_hash,
        )
    aggregate = request.aggregate or fetch(
        identity,
        manifest,
        round=request.round,
        members=request.member_ids,
        aggregate_hash=request.aggregate_hash,
    )
    if tagged_hash(Tag.AGGREGATE, aggregate) != request.aggregate_hash:
        raise VerificationError(f"decrypt round {request.round}: aggregate does not match its hash")
    settings.keystore.record_decryption(
        manifest.study_id,
        request.round,
        client_set_hash=client_set_hash(tuple(sorted(ids))),
        aggregate_hash=request.aggregate_hash,
    )
    vector = settings.keystore.load_ckks(manifest.study_id).decrypt(aggregate)
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


__all__ = ["CkksOwner", "decrypt", "install_key", "keygen"]
