"""Constants, types and helpers shared by the committee tests (imported by conftest and tests;
tests never import conftest itself, whose module name other test folders share)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cohort.aggregator.control import (
    AggregateBody,
    ConfigureBody,
    ControlBody,
    ControlSigner,
    OpenRoundBody,
    ReplicateBody,
    SignedControl,
    StatusBody,
    UploadSource,
)
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import AggregateResult, CommitteeMember, Replication, StudyStatus
from cohort.aggregator.modes import CkksSpec, ModeSpec, sign_dealt_context
from cohort.crypto.identity import Identity
from cohort.federation.manifest import (
    CommitteeEntry,
    DpTerms,
    Manifest,
    OwnerEntry,
    SecureMode,
    SignedManifest,
    new_nonce,
)

LENGTH = 12
ROUNDS = 5
CHAIN_ID = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SPONSOR_ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OWNER_IDS = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
MEMBER_IDS = ("member-1", "member-2", "member-3")
DEALER = "hospital-a"
IDS = ("hospital-a", "hospital-b", "hospital-c")


@dataclass(frozen=True)
class Owner:
    """A data owner as the tests play it: identity, payout address, its update."""

    identity: Identity
    payout: str
    vector: np.ndarray

    @property
    def party_id(self) -> str:
        return self.identity.party_id


SealFn = Callable[..., bytes]
"""seal(owner_id, member_info, *, round=1, vector=None, study_id=<default study>) -> bytes"""
MakeSigned = Callable[..., SignedManifest]
"""make_signed(committee=None, **manifest changes) -> a fresh signed manifest"""
MakeMember = Callable[..., CommitteeMember]
"""make_member(member_id, *, approved=(signed,), **kwargs) -> an in-process member"""


def entry_for(
    keys: MemberKeys, *, endpoint: str = "127.0.0.1:1", tls_fingerprint: bytes = b""
) -> CommitteeEntry:
    """The manifest committee entry of a member with ``keys``."""
    public = keys.identity.public
    return CommitteeEntry(
        member_id=public.party_id,
        sign_key=public.sign_key,
        box_key=public.box_key,
        eth_address=keys.eth_address,
        endpoint=endpoint,
        tls_fingerprint=tls_fingerprint,
    )


def build_manifest(
    *,
    committee: Sequence[CommitteeEntry],
    owners: Sequence[Owner],
    coordinator: Identity,
    sponsor: Identity,
    **changes: Any,
) -> SignedManifest:
    """A CKKS study manifest over real identities, signed by ``sponsor``."""
    terms: dict[str, Any] = {
        "name": "committee-tests",
        "nonce": new_nonce(),
        "secure": SecureMode.CKKS,
        "committee": tuple(committee),
        "quorum": 2,
        "min_clients": 2,
        "owners": tuple(
            OwnerEntry(o.party_id, o.identity.public.sign_key, o.identity.public.box_key, o.payout)
            for o in owners
        ),
        "key_dealer": DEALER,
        "coordinator_key": coordinator.public.sign_key,
        "sponsor_key": sponsor.public.sign_key,
        "sponsor_address": SPONSOR_ADDRESS,
        "rounds": ROUNDS,
        "dp": DpTerms(
            epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=16, max_grad_norm=1.0, lr=0.1
        ),
        "model": "mlp",
        "features": 4,
        "num_classes": 2,
        "update_length": LENGTH,
        "init_seed": 0,
        "server_lr": 1.0,
        "payout_rule": "proportional-to-included-rounds",
        "bounty_wei": 0,
        "chain_id": CHAIN_ID,
        "contract": CONTRACT,
        "deadline": int(time.time()) + 86_400,
        "tls_ca": "",
    }
    terms.update(changes)
    return SignedManifest.sign(Manifest(**terms), sponsor)


def dealt_setup(dealer: Identity, study_id: str, public_context: bytes) -> CkksSpec:
    """The CKKS set-up the key dealer hands the coordinator for ``study_id``."""
    return CkksSpec(public_context, sign_dealt_context(dealer, study_id, public_context))


@dataclass
class Coordinator:
    """The coordinator's side of in-process control calls: sign, then call the member."""

    signer: ControlSigner
    signed: SignedManifest
    setup: ModeSpec

    @property
    def study_id(self) -> str:
        return self.signed.study_id

    def control(
        self, recipient: str, body: ControlBody, *, study_id: str | None = None
    ) -> SignedControl:
        return self.signer.sign(study_id or self.study_id, recipient, body)

    def configure(
        self,
        member: CommitteeMember,
        *,
        signed: SignedManifest | None = None,
        setup: ModeSpec | None = None,
    ) -> str:
        signed = signed or self.signed
        body = ConfigureBody(signed.to_bytes(), setup or self.setup)
        return member.configure(self.control(member.member_id, body, study_id=signed.study_id))

    def open_round(
        self, member: CommitteeMember, round: int, *, deadline: float | None = None
    ) -> int:
        return member.open_round(self.control(member.member_id, OpenRoundBody(round, deadline)))

    def aggregate(
        self,
        member: CommitteeMember,
        round: int,
        client_ids: Sequence[str],
        *,
        ledger_commitments: Sequence[bytes] = (),
    ) -> AggregateResult:
        body = AggregateBody(round, tuple(client_ids), tuple(ledger_commitments))
        return member.aggregate(self.control(member.member_id, body))

    def status(self, member: CommitteeMember) -> StudyStatus:
        return member.status(self.control(member.member_id, StatusBody()))

    def replicate(
        self, member: CommitteeMember, round: int, sources: Sequence[UploadSource]
    ) -> Replication:
        body = ReplicateBody(round, tuple(sources))
        return member.replicate(self.control(member.member_id, body))
