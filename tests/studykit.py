"""Test helpers: a signed manifest over real identities, and approved synthetic hospitals.

Used by the hospital step tests and the adversarial tests; nothing here stands in for a
component (identities, signatures, CKKS contexts and approvals are the real ones).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from cohort.clients.model import build_model, num_parameters
from cohort.crypto.fixed_point import FRAC_BITS, PRIME
from cohort.crypto.identity import Identity
from cohort.federation import hospital
from cohort.federation.approval import Role, approve
from cohort.federation.manifest import (
    CommitteeEntry,
    DpTerms,
    Manifest,
    MpcTerms,
    OwnerEntry,
    SecureMode,
    SignedManifest,
    new_nonce,
)
from cohort.federation.policy import HospitalPolicy

FEATURES = 30


@dataclass
class Study:
    """A signed manifest plus the secret identities behind it (tests only)."""

    signed: SignedManifest
    sponsor: Identity
    coordinator: Identity
    members: list[Identity]
    owners: list[hospital.HospitalSettings]

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def study_id(self) -> str:
        return self.manifest.study_id

    def resign(self, **changes: Any) -> SignedManifest:
        """The same study with other terms, properly signed by the sponsor (a new study id)."""
        return SignedManifest.sign(dataclasses.replace(self.manifest, **changes), self.sponsor)


def hospitals(
    root: Path, count: int, *, policy: HospitalPolicy | None = None, seed: int = 5
) -> list[hospital.HospitalSettings]:
    rules = policy or HospitalPolicy(epsilon_cap=3.0)
    return [
        hospital.HospitalSettings(
            party_id=f"hospital-{i + 1}",
            workdir=str(root / f"h{i + 1}"),
            data=f"demo:{i}",
            policy=rules,
            demo_hospitals=count,
            demo_seed=seed,
        )
        for i in range(count)
    ]


def member_entries(
    members: Sequence[Identity], endpoints: Sequence[str] | None = None
) -> list[CommitteeEntry]:
    return [
        CommitteeEntry(
            member_id=m.party_id,
            sign_key=m.public.sign_key,
            box_key=m.public.box_key,
            eth_address=Account.create().address,
            endpoint=endpoints[i] if endpoints else f"127.0.0.1:{9 + i}",
        )
        for i, m in enumerate(members)
    ]


def make_study(
    owners: list[hospital.HospitalSettings],
    *,
    members: int = 3,
    quorum: int = 2,
    min_clients: int = 2,
    rounds: int = 3,
    secure: SecureMode = SecureMode.CKKS,
    committee: Sequence[CommitteeEntry] | None = None,
    member_ids: Sequence[Identity] | None = None,
    tls_ca: str = "",
    approve_owners: bool = True,
) -> Study:
    sponsor = Identity.generate("sponsor")
    coordinator = Identity.generate("coordinator")
    identities = list(member_ids or [Identity.generate(f"member-{i + 1}") for i in range(members)])
    roster = [
        OwnerEntry(
            party_id=o.party_id,
            sign_key=o.keystore.identity().public.sign_key,
            box_key=o.keystore.identity().public.box_key,
            payout_address=o.keystore.payout_address(),
        )
        for o in owners
    ]
    manifest = Manifest(
        name="test-study",
        nonce=new_nonce(),
        secure=secure,
        committee=tuple(committee or member_entries(identities)),
        quorum=quorum,
        min_clients=min_clients,
        owners=tuple(roster),
        key_dealer=roster[0].party_id,
        coordinator_key=coordinator.public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=Account.create().address,
        rounds=rounds,
        dp=DpTerms(
            epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=32, max_grad_norm=1.0, lr=0.5
        ),
        model="mlp",
        features=FEATURES,
        num_classes=2,
        update_length=num_parameters(build_model("mlp", in_features=FEATURES, num_classes=2)),
        init_seed=1,
        server_lr=1.0,
        payout_rule="proportional-to-included-rounds",
        bounty_wei=10**18,
        chain_id=1337,
        contract=Account.create().address,
        deadline=int(time.time()) + 3600,
        tls_ca=tls_ca,
        mpc=None
        if secure is not SecureMode.MPC
        else MpcTerms(
            prime=PRIME,
            frac_bits=FRAC_BITS,
            norm_bound=10.0,
            rendezvous=tuple(f"127.0.0.1:{40000 + i}" for i in range(len(identities))),
        ),
    )
    signed = SignedManifest.sign(manifest, sponsor)
    if approve_owners:
        for o in owners:
            approve_owner(o, signed)
    return Study(signed, sponsor, coordinator, identities, owners)


def approve_owner(owner: hospital.HospitalSettings, signed: SignedManifest) -> None:
    owner.policy.check(signed.manifest)
    approve(
        signed, workdir=Path(owner.workdir), identity=owner.keystore.identity(), role=Role.OWNER
    )
