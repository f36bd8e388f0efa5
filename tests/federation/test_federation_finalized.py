"""Owners that can reach the chain decrypt only what the study contract finalized.

Two quorums of a 3-member committee with t = 2 share one member; if that member colludes
with the coordinator it can sign two client sets for one round. The contract finalizes one
result per round, so an owner whose policy names a chain checks the finalized aggregate and
contributors before it decrypts (here against the embedded EVM, with real attestations).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from studykit import hospitals, make_study

from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import study_id_bytes
from cohort.bounties.attestation import (
    attestation_digest,
    sign_attestation,
    unreported_ledger_heads,
)
from cohort.bounties.chain import EmbeddedChain
from cohort.bounties.study import StudyContract, predict_address
from cohort.errors import ConfigError, VerificationError
from cohort.federation.approval import check_finalized
from cohort.federation.approval import deploy_bound as deploy
from cohort.federation.manifest import CommitteeEntry
from cohort.federation.policy import HospitalPolicy

AGGREGATE = b"\x42" * 32


def test_only_the_finalized_aggregate_and_client_set_pass(tmp_path: Path) -> None:
    provider = EmbeddedChain()
    sponsor = provider.accounts()[0]
    keys = [MemberKeys.generate(f"member-{i}") for i in (1, 2, 3)]
    entries = [
        CommitteeEntry(
            member_id=k.identity.party_id,
            sign_key=k.identity.public.sign_key,
            box_key=k.identity.public.box_key,
            eth_address=k.eth_address,
            endpoint="127.0.0.1:9",
        )
        for k in keys
    ]
    study = make_study(hospitals(tmp_path, 3), committee=entries, approve_owners=False)
    signed = study.resign(
        sponsor_address=sponsor,
        chain_id=provider.chain_id,
        contract=predict_address(provider, sponsor),
        deadline=provider.latest_timestamp() + 3600,
    )
    manifest = signed.manifest
    contract: StudyContract = deploy(provider, signed)
    chosen = ("hospital-1", "hospital-2", "hospital-3")
    payouts = [o.payout_address for o in manifest.owners]
    digest = attestation_digest(
        chain_id=manifest.chain_id,
        contract=manifest.contract,
        study_id=study_id_bytes(manifest.study_id),
        round=1,
        aggregate_hash=AGGREGATE,
        contributors=payouts,
        ledger_heads=unreported_ledger_heads(payouts),
    )
    with pytest.raises(VerificationError, match="has not finalized it"):
        check_finalized(contract, manifest, round=1, client_ids=chosen, aggregate_hash=AGGREGATE)
    for member in keys[:2]:
        contract.submit_attestation(
            relayer=sponsor,
            round=1,
            aggregate_hash=AGGREGATE,
            contributors=payouts,
            ledger_heads=unreported_ledger_heads(payouts),
            signature=sign_attestation(member.eth_private_key, digest),
        )
    check_finalized(contract, manifest, round=1, client_ids=chosen, aggregate_hash=AGGREGATE)
    with pytest.raises(VerificationError, match="finalized another aggregate"):
        check_finalized(contract, manifest, round=1, client_ids=chosen, aggregate_hash=b"\x01" * 32)
    with pytest.raises(VerificationError, match="another set of contributors"):
        check_finalized(
            contract, manifest, round=1, client_ids=chosen[:2], aggregate_hash=AGGREGATE
        )
    with pytest.raises(VerificationError, match="'ghost' is not in the study's roster"):
        check_finalized(
            contract, manifest, round=1, client_ids=("ghost",), aggregate_hash=AGGREGATE
        )


def test_chain_url_is_a_local_policy_setting() -> None:
    policy = HospitalPolicy.from_mapping({"epsilon-cap": 3, "chain-url": "http://127.0.0.1:8545"})
    assert policy.chain_url == "http://127.0.0.1:8545"
    with pytest.raises(ConfigError, match="chain-url must be an http"):
        dataclasses.replace(policy, chain_url="file:///etc/passwd")
