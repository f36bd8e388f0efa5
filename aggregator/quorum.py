"""Quorum over the committee's signed aggregates. Run by the coordinator.

Honest members combine the same ciphertexts in the same (canonical) order, and CKKS
addition is bit-identical, so every honest member reports the same aggregate hash. The
coordinator accepts the hash that ``quorum`` distinct, correctly signing members report,
and names every other member that answered as faulty, with a reason:

* ``unknown_member``  - the result names a member not in the roster;
* ``equivocation``    - one member returned two different results;
* ``wrong_context``   - study, round or client set differ from what was asked;
* ``hash_mismatch``   - the aggregate bytes do not hash to the claimed aggregate hash;
* ``bad_signature``   - the Ed25519 signature does not verify against the roster key;
* ``bad_attestation`` - the Ethereum address or attestation signature is not the member's;
* ``disagrees``       - a valid result whose hash differs from the accepted one.

Fewer than ``quorum`` agreeing members (or two hashes that both reach it) raise
:class:`QuorumNotReached`, a ProtocolAbort that still carries the faults.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cohort.aggregator.control import canonical_client_ids
from cohort.aggregator.member import AggregateResult, aggregate_result_digest, study_id_bytes
from cohort.bounties.attestation import LedgerHeads, attestation_digest, recover_signer
from cohort.clients.ledger_commitment import attested_heads, select_commitments
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import PublicIdentity, verify_signature
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.federation.manifest import Manifest


class RosterEntry(Protocol):
    """Anything naming a member's keys: MemberInfo, committee.MemberRef, a manifest's
    CommitteeEntry."""

    @property
    def member_id(self) -> str: ...
    @property
    def identity(self) -> PublicIdentity: ...
    @property
    def eth_address(self) -> str: ...


Roster = Sequence[RosterEntry] | Mapping[str, PublicIdentity]
"""Committee roster: entries with Ethereum addresses, or just member id -> identity."""


class FaultReason(enum.StrEnum):
    UNKNOWN_MEMBER = "unknown_member"
    EQUIVOCATION = "equivocation"
    WRONG_CONTEXT = "wrong_context"
    HASH_MISMATCH = "hash_mismatch"
    BAD_SIGNATURE = "bad_signature"
    BAD_ATTESTATION = "bad_attestation"
    DISAGREES = "disagrees"


@dataclass(frozen=True)
class Fault:
    """A member whose result was not counted, and why."""

    member_id: str
    reason: FaultReason
    detail: str


@dataclass(frozen=True)
class Attestation:
    """A member's Ethereum attestation signature, to relay to the study contract."""

    member_id: str
    eth_address: str
    signature: bytes


@dataclass(frozen=True)
class AttestationCheck:
    """What the coordinator needs to re-derive attestation digests (optional in decide)."""

    chain_id: int
    contract: str
    contributors: tuple[str, ...]
    ledger_heads: LedgerHeads

    @classmethod
    def for_manifest(
        cls,
        manifest: Manifest,
        client_ids: Sequence[str],
        *,
        round: int = 0,
        ledger_commitments: Sequence[bytes] = (),
    ) -> AttestationCheck:
        """Chain, contract and payout addresses of ``client_ids`` (in canonical order, as the
        members attest them) from the study manifest, and the (ledger head, epsilon) each
        member attests from ``ledger_commitments`` for ``round`` (the same selection the
        members make; without them every client is "none reported")."""
        ids = canonical_client_ids(client_ids)
        payouts: dict[str, str] = {}
        owners = {}
        for cid in ids:
            owner = manifest.owner(cid)
            if owner is None:
                raise BadInputError(f"client set: {cid!r} is not in the study roster")
            payouts[cid] = owner.payout_address
            owners[cid] = owner.identity
        commitments = select_commitments(
            ledger_commitments,
            owners=owners,
            study_id=manifest.study_id,
            round=round,
            client_ids=ids,
        )
        heads = attested_heads(payouts, commitments)
        return cls(manifest.chain_id, manifest.contract, tuple(payouts.values()), heads)


@dataclass(frozen=True, repr=False)
class QuorumDecision:
    """The accepted aggregate of one round and who agreed, failed or did not answer."""

    study_id: str
    round: int
    client_ids: tuple[str, ...]
    aggregate: bytes
    aggregate_hash: bytes
    agreeing: tuple[str, ...]
    faulty: tuple[Fault, ...]
    missing: tuple[str, ...]
    attestations: tuple[Attestation, ...]
    signatures: Mapping[str, bytes]
    """Agreeing member id -> its Ed25519 signature over the aggregate-result digest (data
    owners check a quorum of these before they decrypt)."""

    @property
    def faulty_reasons(self) -> dict[str, str]:
        """Faulty member id -> "reason: detail", for logs and round records."""
        return {f.member_id: f"{f.reason.value}: {f.detail}" for f in self.faulty}

    def __repr__(self) -> str:
        return (
            f"QuorumDecision(round={self.round}, hash={self.aggregate_hash.hex()[:16]}, "
            f"agreeing={self.agreeing}, faulty={[f.member_id for f in self.faulty]}, "
            f"missing={self.missing})"
        )


class QuorumNotReached(ProtocolAbort):
    """Fewer than ``quorum`` members agree; ``faults`` lists the members not counted."""

    def __init__(self, message: str, *, faults: tuple[Fault, ...]) -> None:
        super().__init__(message)
        self.faults = faults


def decide(
    results: Sequence[AggregateResult],
    *,
    quorum: int,
    roster: Roster,
    study_id: str,
    round: int,
    client_ids: Sequence[str],
    attestation: AttestationCheck | None = None,
) -> QuorumDecision:
    """Accept the aggregate that ``quorum`` members agree on. Run by the coordinator.

    ``results`` holds what members answered (in any order; absent members are listed as
    missing, not faulty). ``roster`` is a sequence of MemberInfo / MemberRef or a mapping
    member id -> PublicIdentity. With ``attestation`` each Ethereum signature is also
    checked to recover to the member's Ethereum address (the roster's when it has one, else
    the one the result claims); otherwise only a roster address is compared.
    """
    members = _members(roster)
    if not 1 <= quorum <= len(members):
        raise ConfigError(f"quorum: must be in 1..{len(members)} (members), got {quorum}")
    ids = canonical_client_ids(client_ids)
    faults: dict[str, Fault] = {}
    valid: dict[str, AggregateResult] = {}
    for result in results:
        member = result.member_id
        if member in faults:
            continue
        if member in valid:
            if valid[member] != result:
                del valid[member]
                faults[member] = Fault(member, FaultReason.EQUIVOCATION, "two different results")
            continue
        fault = _check(result, members, study_id, round, ids, attestation)
        if fault is None:
            valid[member] = result
        else:
            faults[member] = fault
    groups: dict[bytes, list[str]] = {}
    for member, result in valid.items():
        groups.setdefault(result.aggregate_hash, []).append(member)
    winners = [h for h, agreeing in groups.items() if len(agreeing) >= quorum]
    if len(winners) != 1:
        counts = sorted((len(a) for a in groups.values()), reverse=True)
        raise QuorumNotReached(
            f"quorum: round {round} needs {quorum} agreeing members; "
            f"agreeing groups {counts or [0]}, faulty {sorted(faults)}",
            faults=tuple(faults[m] for m in sorted(faults)),
        )
    winner = winners[0]
    for member, result in valid.items():
        if result.aggregate_hash != winner:
            faults[member] = Fault(
                member,
                FaultReason.DISAGREES,
                f"aggregate hash {result.aggregate_hash.hex()[:16]} differs from the quorum's",
            )
    agreeing = tuple(sorted(groups[winner]))
    answered = {r.member_id for r in results}
    chosen = valid[agreeing[0]]
    return QuorumDecision(
        study_id=study_id,
        round=round,
        client_ids=ids,
        aggregate=chosen.aggregate,
        aggregate_hash=winner,
        agreeing=agreeing,
        faulty=tuple(faults[m] for m in sorted(faults)),
        missing=tuple(sorted(m for m in members if m not in answered)),
        attestations=tuple(
            Attestation(m, valid[m].eth_address, valid[m].eth_signature) for m in agreeing
        ),
        signatures={m: valid[m].signature for m in agreeing},
    )


def _members(roster: Roster) -> dict[str, tuple[PublicIdentity, str | None]]:
    if isinstance(roster, Mapping):
        out: dict[str, tuple[PublicIdentity, str | None]] = {}
        for member_id, identity in roster.items():
            if identity.party_id != member_id:
                raise ConfigError(f"quorum: roster key {member_id!r} names another identity")
            out[member_id] = (identity, None)
        return out
    out = {entry.member_id: (entry.identity, entry.eth_address) for entry in roster}
    if len(out) != len(roster):
        raise ConfigError("quorum: roster lists a member twice")
    return out


def _check(
    result: AggregateResult,
    members: dict[str, tuple[PublicIdentity, str | None]],
    study_id: str,
    round: int,
    ids: tuple[str, ...],
    attestation: AttestationCheck | None,
) -> Fault | None:
    member = result.member_id
    entry = members.get(member)
    if entry is None:
        return Fault(member, FaultReason.UNKNOWN_MEMBER, "not in the committee roster")
    identity, eth_address = entry
    if result.study_id != study_id or result.round != round or result.client_ids != ids:
        return Fault(member, FaultReason.WRONG_CONTEXT, "study, round or client set differ")
    if tagged_hash(Tag.AGGREGATE, result.aggregate) != result.aggregate_hash:
        return Fault(member, FaultReason.HASH_MISMATCH, "aggregate bytes do not match its hash")
    digest = aggregate_result_digest(
        study_id=study_id, round=round, client_ids=ids, aggregate_hash=result.aggregate_hash
    )
    try:
        verify_signature(identity, digest, result.signature)
    except VerificationError:
        return Fault(member, FaultReason.BAD_SIGNATURE, "Ed25519 signature does not verify")
    if eth_address is not None and result.eth_address != eth_address:
        return Fault(member, FaultReason.BAD_ATTESTATION, "Ethereum address is not the roster's")
    if attestation is not None:
        eth_digest = attestation_digest(
            chain_id=attestation.chain_id,
            contract=attestation.contract,
            study_id=study_id_bytes(study_id),
            round=round,
            aggregate_hash=result.aggregate_hash,
            contributors=attestation.contributors,
            ledger_heads=attestation.ledger_heads,
        )
        try:
            signer = recover_signer(eth_digest, result.eth_signature)
        except (VerificationError, BadInputError):
            signer = ""
        if signer != (eth_address or result.eth_address):
            return Fault(
                member, FaultReason.BAD_ATTESTATION, "attestation signature is not the member's"
            )
    return None
