"""An operator's approval of a study manifest, kept in the party's own work directory.

``cohort study approve MANIFEST --workdir DIR`` (a hospital's or committee member's operator)
verifies the sponsor's signature, checks that the party's own identity is in the manifest in
the role it claims, optionally checks the study contract on the chain (its stored manifest hash
and code), and records an approval signed by the party's identity::

    DIR/studies/<study id>/manifest.json   the signed manifest, as approved
    DIR/studies/<study id>/approval.json   who approved it, when, and the party's signature

Afterwards the party acts only on messages naming an approved study id
(:func:`approved_manifest`); the id a coordinator sends is checked to be 64 hex digits before
it is used in a path, and a missing approval is a :class:`VerificationError`.
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cohort.bounties.attestation import contributors_hash
from cohort.bounties.chain import ChainProvider
from cohort.bounties.study import StudyContract
from cohort.crypto.hashing import Tag, is_digest_hex, tagged_hash
from cohort.crypto.identity import Identity, verify_signature
from cohort.errors import BadInputError, VerificationError
from cohort.federation.manifest import Manifest, SignedManifest
from cohort.files import write_atomic

STUDIES_DIR = "studies"
MANIFEST_FILE = "manifest.json"
APPROVAL_FILE = "approval.json"
APPROVAL_FORMAT = "cohort-approval/v1"


class Role(enum.StrEnum):
    OWNER = "owner"
    MEMBER = "member"


def check_study_id(study_id: object) -> str:
    """A study id as sent on the wire: 64 lower-case hex digits (a manifest hash)."""
    if not is_digest_hex(study_id):
        raise VerificationError("study id must be a manifest hash (64 hex digits)")
    return study_id


def _digest(study_id: str, party_id: str, role: Role) -> bytes:
    return tagged_hash(
        Tag.APPROVAL, bytes.fromhex(study_id), party_id.encode("utf-8"), role.value.encode()
    )


def check_party_in(manifest: Manifest, identity: Identity, role: Role) -> None:
    """The party's own public keys appear in the manifest in ``role``; else VerificationError."""
    public = identity.public
    entry = (
        manifest.owner(identity.party_id)
        if role is Role.OWNER
        else manifest.member(identity.party_id)
    )
    if entry is None:
        raise VerificationError(
            f"manifest {manifest.study_id[:16]}: {identity.party_id!r} is not listed as {role}"
        )
    if (entry.sign_key, entry.box_key) != (public.sign_key, public.box_key):
        raise VerificationError(
            f"manifest {manifest.study_id[:16]}: the keys listed for {identity.party_id!r} are "
            "not this party's keys"
        )


@dataclass(frozen=True)
class Approval:
    """An operator's signed consent to one manifest."""

    study_id: str
    party_id: str
    role: Role
    approved_at: str
    note: str
    contract_checked: bool
    signature: bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "format": APPROVAL_FORMAT,
            "study_id": self.study_id,
            "party_id": self.party_id,
            "role": self.role.value,
            "approved_at": self.approved_at,
            "note": self.note,
            "contract_checked": self.contract_checked,
            "signature": self.signature.hex(),
        }


def deploy_bound(provider: ChainProvider, signed: SignedManifest) -> StudyContract:
    """Deploy the study contract bound to ``signed`` (its hash, committee, quorum, owners,
    rounds, deadline, bounty) at the address the manifest names. Run by the sponsor."""
    from cohort.aggregator.member import study_id_bytes

    m = signed.manifest
    return StudyContract.deploy(
        provider,
        sponsor=m.sponsor_address,
        study_id=study_id_bytes(m.study_id),
        committee=[e.eth_address for e in m.committee],
        quorum=m.quorum,
        data_owners=[o.payout_address for o in m.owners],
        bounty_wei=m.bounty_wei,
        manifest_hash=m.digest(),
        rounds=m.rounds,
        deadline=m.deadline,
        expected_address=m.contract,
    )


def check_contract(contract: StudyContract, manifest: Manifest) -> None:
    """The study contract is the committed code, on the manifest's chain, bound to this
    manifest's hash, committee, quorum, roster, rounds and deadline; VerificationError
    naming the first field that differs. Run by an operator before approving."""
    contract.verify_binding(
        manifest_hash=manifest.digest(),
        chain_id=manifest.chain_id,
        committee=[m.eth_address for m in manifest.committee],
        quorum=manifest.quorum,
        data_owners=[o.payout_address for o in manifest.owners],
        rounds=manifest.rounds,
        deadline=manifest.deadline,
    )


class FinalizedReads(Protocol):
    """What :func:`check_finalized` asks of a study contract: the contract client
    (:class:`~cohort.bounties.study.StudyContract`) or an owner's one-request view of it
    (:class:`~cohort.bounties.reads.StudyReads`)."""

    def finalized(self, round: int) -> tuple[bytes, bytes] | None: ...


def check_finalized(
    contract: FinalizedReads,
    manifest: Manifest,
    *,
    round: int,
    client_ids: Sequence[str],
    aggregate_hash: bytes,
) -> None:
    """The contract finalized exactly this (aggregate, client set) for ``round``.

    Run by a data owner that can reach the chain, before it decrypts: the contract finalizes
    one result per round, so even a coordinator working with a committee member that signs
    two client sets cannot have two aggregates of one round decrypted by two owners.
    """
    payouts = []
    for cid in client_ids:
        owner = manifest.owner(cid)
        if owner is None:
            raise VerificationError(f"round {round}: {cid!r} is not in the study's roster")
        payouts.append(owner.payout_address)
    final = contract.finalized(round)
    if final is None:
        raise VerificationError(f"round {round}: the study contract has not finalized it")
    final_aggregate, final_contributors = final
    if final_aggregate != aggregate_hash:
        raise VerificationError(f"round {round}: the study contract finalized another aggregate")
    if final_contributors != contributors_hash(payouts):
        raise VerificationError(
            f"round {round}: the study contract finalized another set of contributors"
        )


def study_dir(workdir: Path, study_id: str) -> Path:
    return workdir / STUDIES_DIR / check_study_id(study_id)


def approve(
    signed: SignedManifest,
    *,
    workdir: Path,
    identity: Identity,
    role: Role,
    note: str = "",
    contract_checked: bool = False,
) -> Approval:
    """Record this party's approval of ``signed`` (run by the party's operator).

    Verifies the sponsor's signature and the party's place in the manifest first. Approving
    the same manifest again is a no-op that returns the stored approval.
    """
    manifest = signed.verify()
    check_party_in(manifest, identity, role)
    home = study_dir(workdir, manifest.study_id)
    if (home / APPROVAL_FILE).exists():
        approved_manifest(workdir, manifest.study_id, identity, role)
        return _load_approval(home / APPROVAL_FILE)
    approval = Approval(
        study_id=manifest.study_id,
        party_id=identity.party_id,
        role=role,
        approved_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        note=note,
        contract_checked=contract_checked,
        signature=identity.sign(_digest(manifest.study_id, identity.party_id, role)),
    )
    signed.save(home / MANIFEST_FILE)
    write_atomic(home / APPROVAL_FILE, json.dumps(approval.to_dict(), indent=1).encode())
    return approval


def _load_approval(path: Path) -> Approval:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != APPROVAL_FORMAT:
            raise ValueError("format")
        return Approval(
            study_id=check_study_id(doc["study_id"]),
            party_id=str(doc["party_id"]),
            role=Role(doc["role"]),
            approved_at=str(doc["approved_at"]),
            note=str(doc["note"]),
            contract_checked=bool(doc["contract_checked"]),
            signature=bytes.fromhex(doc["signature"]),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BadInputError(f"approval {path}: unreadable or malformed") from None


def approved_manifest(workdir: Path, study_id: object, identity: Identity, role: Role) -> Manifest:
    """The manifest this party's operator approved under ``study_id``; VerificationError if none.

    Re-verifies everything on each call: the id's form, the sponsor's signature, that the
    stored manifest hashes to the id, the approval's signature by this party and its role.
    """
    home = study_dir(workdir, check_study_id(study_id))
    if not (home / APPROVAL_FILE).exists():
        raise VerificationError(
            f"study {str(study_id)[:16]} is not approved by the operator of {identity.party_id!r}"
        )
    approval = _load_approval(home / APPROVAL_FILE)
    signed = SignedManifest.load(home / MANIFEST_FILE)
    manifest = signed.verify()
    if manifest.study_id != study_id or approval.study_id != study_id:
        raise VerificationError(f"approved manifest under {str(study_id)[:16]} has another hash")
    if approval.party_id != identity.party_id or approval.role is not role:
        raise VerificationError(f"approval of study {str(study_id)[:16]} is for another party")
    verify_signature(
        identity.public, _digest(manifest.study_id, identity.party_id, role), approval.signature
    )
    check_party_in(manifest, identity, role)
    return manifest


def approved_signed(workdir: Path, study_id: object) -> SignedManifest:
    """The signed manifest stored with an approval (for forwarding); verify with
    :func:`approved_manifest` before acting on it."""
    return SignedManifest.load(study_dir(workdir, check_study_id(study_id)) / MANIFEST_FILE)
