"""The signed study manifest the committee benchmarks configure their members with."""

from __future__ import annotations

import time
from collections.abc import Sequence

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

CHAIN_ID = 1337


def bench_manifest(
    *,
    name: str,
    committee: Sequence[CommitteeEntry],
    owners: Sequence[tuple[Identity, str]],
    coordinator: Identity,
    sponsor: Identity,
    sponsor_address: str,
    contract: str,
    update_length: int,
    rounds: int,
    tls_ca: str = "",
) -> SignedManifest:
    """A CKKS study over real identities (owner, payout address), signed by ``sponsor``:
    quorum a strict majority, every owner in the minimum client set, the first owner deals."""
    manifest = Manifest(
        name=name,
        nonce=new_nonce(),
        secure=SecureMode.CKKS,
        committee=tuple(committee),
        quorum=len(committee) // 2 + 1,
        min_clients=len(owners),
        owners=tuple(
            OwnerEntry(o.party_id, o.public.sign_key, o.public.box_key, payout)
            for o, payout in owners
        ),
        key_dealer=owners[0][0].party_id,
        coordinator_key=coordinator.public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=sponsor_address,
        rounds=rounds,
        dp=DpTerms(
            epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=32, max_grad_norm=1.0, lr=0.1
        ),
        model="mlp",
        features=30,
        num_classes=2,
        update_length=update_length,
        init_seed=0,
        server_lr=1.0,
        payout_rule="proportional-to-included-rounds",
        bounty_wei=0,
        chain_id=CHAIN_ID,
        contract=contract,
        deadline=int(time.time()) + 86_400,
        tls_ca=tls_ca,
    )
    return SignedManifest.sign(manifest, sponsor)
