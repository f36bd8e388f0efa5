"""Contract tests: one behaviour suite for CohortStudy that every chain provider passes.

:class:`StudyContractSuite` holds the behaviour; each provider subclasses it and supplies
the ``provider`` fixture: the in-process EmbeddedChain always, an anvil-backed RpcChain
when the anvil binary from ``npm ci`` is present. Every test deploys a fresh study.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anvilkit import running_anvil
from eth_abi.abi import encode
from eth_account import Account
from eth_utils.crypto import keccak
from web3 import HTTPProvider

from cohort.bounties import study as study_module
from cohort.bounties.attestation import SECP256K1_N, ledger_lists
from cohort.bounties.chain import ChainProvider, EmbeddedChain, RpcChain
from cohort.bounties.study import (
    ATTESTATION_TYPEHASH,
    ERROR_KINDS,
    StudyContract,
    attestation_digest,
    canonical_contributors,
    contributors_hash,
    create_address,
    load_artifact,
    predict_address,
    roster_hash,
    sign_attestation,
)
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.federation.config import MAX_DATA_OWNERS

ROOT = Path(__file__).resolve().parents[2]
ETHER = 10**18
ARTIFACT_BYTECODE = str(load_artifact()["bytecode"])
STUDY_ID = keccak(text="cohort-test/study")
MANIFEST_HASH = keccak(text="cohort-test/manifest")
ROUNDS = 3  # the default study's rounds; tests that settle after round 1 deploy rounds=1
DEADLINE_AFTER_S = 24 * 3600  # deadlines are set relative to the chain's clock
AGG_A = keccak(text="aggregate A")
AGG_B = keccak(text="aggregate B")
MEMBER_KEYS = [keccak(text=f"cohort-test/committee/{i}") for i in range(3)]
OUTSIDER_KEY = keccak(text="cohort-test/outsider")
# Accounts the RpcChain signs with locally (funded through anvil_setBalance).
RPC_KEYS = [keccak(text=f"cohort-test/rpc-account/{i}") for i in range(10)]

# Measured on both providers (docs/contract.md); ceilings catch accidental regressions.
GAS_CEILINGS = {"deploy": 2_400_000, "attest": 290_000, "settle": 200_000, "withdraw": 50_000}


@dataclass
class World:
    """A freshly deployed study and the parties around it."""

    provider: ChainProvider
    study: StudyContract
    sponsor: str
    relayer: str
    owners: list[str]  # four registered data owners, all able to send transactions
    outsider: str  # a funded account with no role
    members: list[str]  # committee addresses (unfunded: they only sign)
    bounty: int

    def sign(self, key: bytes, *, round: int, agg: bytes, contributors: Sequence[str]) -> bytes:
        digest = self.study.attestation_digest(
            round=round,
            aggregate_hash=agg,
            contributors=contributors,
            ledger_heads=heads_for(contributors),
        )
        return sign_attestation(key, digest)

    def attest(
        self, member: int, *, round: int, agg: bytes = AGG_A, contributors: Sequence[str] = ()
    ) -> bool:
        contributors = list(contributors) or self.owners[:3]
        signature = self.sign(MEMBER_KEYS[member], round=round, agg=agg, contributors=contributors)
        return self.study.submit_attestation(
            relayer=self.relayer,
            round=round,
            aggregate_hash=agg,
            contributors=contributors,
            ledger_heads=heads_for(contributors),
            signature=signature,
        )


def heads_for(contributors: Sequence[str]) -> dict[str, tuple[bytes, int]]:
    """A distinct ledger head and micro-epsilon per contributor (what owners would sign)."""
    return {
        a: (keccak(text=f"ledger head of {a.lower()}"), 1_000_000 + int(a, 16) % 1000)
        for a in contributors
    }


def deadline_in(provider: ChainProvider, seconds: int = DEADLINE_AFTER_S) -> int:
    """A deadline ``seconds`` after the chain's latest block (tests move chain time on)."""
    return provider.latest_timestamp() + seconds


def deploy_world(
    provider: ChainProvider,
    *,
    bounty: int = 3 * ETHER,
    quorum: int = 2,
    rounds: int = ROUNDS,
    deadline: int | None = None,
) -> World:
    accounts = provider.accounts()
    members = [Account.from_key(k).address for k in MEMBER_KEYS]
    study = StudyContract.deploy(
        provider,
        sponsor=accounts[0],
        study_id=STUDY_ID,
        committee=members,
        quorum=quorum,
        data_owners=accounts[2:6],
        bounty_wei=bounty,
        manifest_hash=MANIFEST_HASH,
        rounds=rounds,
        deadline=deadline if deadline is not None else deadline_in(provider),
    )
    return World(
        provider=provider,
        study=study,
        sponsor=accounts[0],
        relayer=accounts[1],
        owners=accounts[2:6],
        outsider=accounts[6],
        members=members,
        bounty=bounty,
    )


def deploy_world_at(provider: ChainProvider, *, expected_address: str) -> World:
    """Like :func:`deploy_world` (default terms), asking for ``expected_address``."""
    accounts = provider.accounts()
    members = [Account.from_key(k).address for k in MEMBER_KEYS]
    study = StudyContract.deploy(
        provider,
        sponsor=accounts[0],
        study_id=STUDY_ID,
        committee=members,
        quorum=2,
        data_owners=accounts[2:6],
        bounty_wei=ETHER,
        manifest_hash=MANIFEST_HASH,
        rounds=ROUNDS,
        deadline=deadline_in(provider),
        expected_address=expected_address,
    )
    return World(
        provider=provider,
        study=study,
        sponsor=accounts[0],
        relayer=accounts[1],
        owners=accounts[2:6],
        outsider=accounts[6],
        members=members,
        bounty=ETHER,
    )


def binding_terms(world: World) -> dict[str, Any]:
    """The manifest terms ``world`` was deployed with, as verify_binding takes them."""
    return {
        "manifest_hash": MANIFEST_HASH,
        "chain_id": world.provider.chain_id,
        "committee": world.members,
        "quorum": 2,
        "data_owners": world.owners,
        "rounds": ROUNDS,
    }


def fee_paid(provider: ChainProvider, account: str, before_block: int) -> int:
    """Wei ``account`` spent on gas in blocks after ``before_block``."""
    total = 0
    w3 = provider.web3
    for number in range(before_block + 1, w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            assert not isinstance(tx, bytes)
            if tx["from"] == account:
                receipt = w3.eth.get_transaction_receipt(tx["hash"])
                total += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return total


def compile_test_contract(source: Path, name: str) -> dict[str, Any]:
    """Compile a test-only contract with the pinned solc-js; skip if it is not installed."""
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules/solc").is_dir():
        pytest.skip("solc-js missing: run `npm ci` in the repository root")
    request = {
        "language": "Solidity",
        "sources": {source.name: {"content": source.read_text()}},
        "settings": {
            "evmVersion": "cancun",
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    script = (
        "const s=require('solc');let d='';process.stdin.on('data',c=>d+=c)"
        ".on('end',()=>process.stdout.write(s.compile(d)))"
    )
    done = subprocess.run(
        [node, "-e", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    output = json.loads(done.stdout)
    errors = [e for e in output.get("errors", []) if e["severity"] == "error"]
    assert not errors, errors
    compiled = output["contracts"][source.name][name]
    return {"abi": compiled["abi"], "bytecode": "0x" + compiled["evm"]["bytecode"]["object"]}


_compiled: dict[str, dict[str, Any]] = {}


def reentrant_owner_artifact() -> dict[str, Any]:
    if "ReentrantOwner" not in _compiled:
        source = Path(__file__).with_name("ReentrantOwner.sol")
        _compiled["ReentrantOwner"] = compile_test_contract(source, "ReentrantOwner")
    return _compiled["ReentrantOwner"]


class StudyContractSuite:
    """The behaviour every ChainProvider must show. Subclasses provide ``provider``."""

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls) -> ChainProvider:
        raise NotImplementedError  # pragma: no cover - overridden per provider

    @pytest.fixture
    def world(self, provider: ChainProvider) -> World:
        return deploy_world(provider)

    # -------------------------------------------------------------- deployment

    def test_deploy_records_rosters_and_bounty(self, world: World) -> None:
        study = world.study
        assert study.study_id() == STUDY_ID
        assert study.sponsor() == world.sponsor
        assert study.quorum() == 2
        assert study.committee() == world.members
        assert study.data_owners() == canonical_contributors(world.owners)
        assert study.data_owner_count() == study.registered_data_owners() == 4
        assert study.data_owners_hash() == roster_hash(world.owners)
        assert all(study.is_data_owner(o) for o in world.owners)
        assert not study.is_data_owner(world.outsider)
        assert study.bounty_wei() == world.bounty
        assert world.provider.balance(study.address) == world.bounty
        assert study.finalized_rounds() == 0
        assert not study.is_settled()
        assert StudyContract.at(world.provider, study.address).address == study.address

    def test_fund_adds_to_bounty_sponsor_only(self, world: World) -> None:
        world.study.fund(sponsor=world.sponsor, amount_wei=5)
        assert world.study.bounty_wei() == world.bounty + 5
        assert world.provider.balance(world.study.address) == world.bounty + 5
        with pytest.raises(VerificationError, match=r"NotSponsor\(" + world.outsider):
            world.study.fund(sponsor=world.outsider, amount_wei=5)
        with pytest.raises(BadInputError, match=r"ZeroValue\(\)"):
            world.study.fund(sponsor=world.sponsor, amount_wei=0)

    @pytest.mark.parametrize(
        ("committee_size", "quorum", "error"),
        [
            (3, 0, r"InvalidQuorum\(0, 3\)"),
            (3, 1, r"InvalidQuorum\(1, 3\)"),  # not a majority
            (4, 2, r"InvalidQuorum\(2, 4\)"),  # exactly half is not a majority
            (3, 4, r"InvalidQuorum\(4, 3\)"),  # more than the committee
            (0, 1, r"InvalidCommitteeSize\(0\)"),
            (65, 33, r"InvalidCommitteeSize\(65\)"),
        ],
    )
    def test_deploy_rejects_bad_quorum(
        self, provider: ChainProvider, committee_size: int, quorum: int, error: str
    ) -> None:
        accounts = provider.accounts()
        members = [Account.from_key(keccak(text=f"m{i}")).address for i in range(committee_size)]
        with pytest.raises(BadInputError, match=f"deploy rejected: {error}"):
            StudyContract.deploy(
                provider,
                sponsor=accounts[0],
                study_id=STUDY_ID,
                committee=members,
                quorum=quorum,
                data_owners=accounts[2:4],
                bounty_wei=1,
                manifest_hash=MANIFEST_HASH,
                rounds=ROUNDS,
                deadline=deadline_in(provider),
            )

    def test_deploy_rejects_bad_rosters(self, provider: ChainProvider) -> None:
        accounts = provider.accounts()
        members = [Account.from_key(k).address for k in MEMBER_KEYS]
        zero = "0x" + "00" * 20
        too_many = range(MAX_DATA_OWNERS + 1)
        many_owners = [Account.from_key(keccak(text=f"o{i}")).address for i in too_many]
        cases: list[tuple[bytes, list[str], list[str], str]] = [
            (STUDY_ID, [*members[:2], members[0]], accounts[2:4], r"DuplicateCommitteeMember\("),
            (STUDY_ID, [*members[:2], zero], accounts[2:4], r"ZeroAddress\(\)"),
            (STUDY_ID, members, [accounts[2], accounts[2].lower()], r"data_owners: .* twice"),
            (STUDY_ID, members, [accounts[2], zero], r"ZeroAddress\(\)"),
            (STUDY_ID, members, [], r"InvalidDataOwnerCount\(0\)"),
            (STUDY_ID, members, many_owners, rf"InvalidDataOwnerCount\({MAX_DATA_OWNERS + 1}\)"),
            (bytes(32), members, accounts[2:4], r"ZeroStudyId\(\)"),
        ]
        for study_id, committee, owners, error in cases:
            with pytest.raises(BadInputError, match=error):
                StudyContract.deploy(
                    provider,
                    sponsor=accounts[0],
                    study_id=study_id,
                    committee=committee,
                    quorum=2,
                    data_owners=owners,
                    bounty_wei=0,
                    manifest_hash=MANIFEST_HASH,
                    rounds=ROUNDS,
                    deadline=deadline_in(provider),
                )

    def test_at_rejects_addresses_without_the_study_code(self, world: World) -> None:
        with pytest.raises(BadInputError, match="no contract"):
            StudyContract.at(world.provider, world.outsider)

    # -------------------------------------------------------------- manifest binding

    def test_deploy_binds_manifest_rounds_and_deadline(self, provider: ChainProvider) -> None:
        deadline = deadline_in(provider, 3600)
        world = deploy_world(provider, rounds=5, deadline=deadline)
        study = world.study
        assert study.manifest_hash() == MANIFEST_HASH
        assert study.rounds() == 5
        assert study.deadline() == deadline
        (event,) = study.contract.events.StudyCreated().get_logs(
            from_block=0, argument_filters={"manifestHash": MANIFEST_HASH}
        )
        args = event["args"]
        assert bytes(args["manifestHash"]) == MANIFEST_HASH
        assert bytes(args["studyId"]) == STUDY_ID
        assert args["sponsor"] == world.sponsor
        assert (args["rounds"], args["deadline"], args["bounty"]) == (5, deadline, world.bounty)
        assert list(args["committee"]) == world.members
        assert args["dataOwnerCount"] == len(world.owners)
        (registered,) = study.contract.events.DataOwnersRegistered().get_logs(
            from_block=event["blockNumber"], to_block=event["blockNumber"]
        )
        assert list(registered["args"]["dataOwners"]) == canonical_contributors(world.owners)
        assert registered["args"]["rosterHash"] == roster_hash(world.owners)
        assert args["quorum"] == 2
        # manifestHash is an indexed topic: an auditor finds the study by its manifest alone.
        other = keccak(text="another manifest")
        assert not study.contract.events.StudyCreated().get_logs(
            from_block=0, argument_filters={"manifestHash": other}
        )

    def test_deploy_validates_manifest_terms(self, provider: ChainProvider) -> None:
        accounts = provider.accounts()
        members = [Account.from_key(k).address for k in MEMBER_KEYS]
        good: dict[str, Any] = {
            "sponsor": accounts[0],
            "study_id": STUDY_ID,
            "committee": members,
            "quorum": 2,
            "data_owners": accounts[2:4],
            "bounty_wei": 1,
            "manifest_hash": MANIFEST_HASH,
            "rounds": ROUNDS,
            "deadline": deadline_in(provider),
        }
        cases: list[tuple[dict[str, Any], type[Exception], str]] = [
            ({"rounds": 0}, ConfigError, r"rounds: expected a number of training rounds >= 1"),
            ({"rounds": True}, ConfigError, r"rounds:"),
            ({"deadline": provider.latest_timestamp()}, ConfigError, r"deadline: .* not after"),
            ({"deadline": -1}, ConfigError, r"deadline: expected unix time in seconds"),
            ({"manifest_hash": MANIFEST_HASH[:31]}, BadInputError, r"manifest_hash: expected 32"),
            ({"manifest_hash": bytes(32)}, BadInputError, r"manifest_hash: must not be zero"),
            ({"expected_address": "0x1234"}, BadInputError, r"expected_address: .* not a 20"),
        ]
        nonce = provider.next_nonce(accounts[0])
        for change, kind, error in cases:
            with pytest.raises(kind, match=error):
                StudyContract.deploy(provider, **{**good, **change})
        assert provider.next_nonce(accounts[0]) == nonce  # nothing was sent

    def test_contract_itself_refuses_bad_manifest_terms(self, provider: ChainProvider) -> None:
        artifact = load_artifact()
        factory = provider.web3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        accounts = provider.accounts()
        members = [Account.from_key(k).address for k in MEMBER_KEYS]
        later = deadline_in(provider)
        cases = [
            ((STUDY_ID, bytes(32), 3, later), r"ZeroManifestHash\(\)"),
            ((STUDY_ID, MANIFEST_HASH, 0, later), r"InvalidRounds\(0\)"),
            (
                (STUDY_ID, MANIFEST_HASH, 3, provider.latest_timestamp()),
                r"InvalidDeadline\(\d+, \d+\)",
            ),
        ]
        for (study_id, manifest, rounds, deadline), error in cases:
            owners = canonical_contributors(accounts[2:4])
            constructor = factory.constructor(
                study_id, manifest, members, 2, owners, len(owners), rounds, deadline
            )
            with pytest.raises(BadInputError, match=f"deploy rejected: {error}"):
                provider.transact(constructor, sender=accounts[0], error_kinds=ERROR_KINDS)

    def test_attest_refuses_rounds_outside_the_manifest(self, world: World) -> None:
        for round_ in (0, ROUNDS + 1, 2**256 - 1):
            with pytest.raises(
                BadInputError, match=rf"attestation rejected: RoundOutOfRange\({round_}, {ROUNDS}\)"
            ):
                world.attest(0, round=round_)
            assert not world.study.has_attested(round_, world.members[0])
        assert world.attest(0, round=ROUNDS) is False  # the last round of the manifest is fine
        assert world.attest(1, round=ROUNDS) is True

    def test_settle_waits_for_the_final_round(self, provider: ChainProvider) -> None:
        world = deploy_world(provider, rounds=2)
        world.attest(0, round=1)
        world.attest(1, round=1)
        world.attest(0, round=2)  # one vote: round 2 is not final yet
        deadline = world.study.deadline()
        with pytest.raises(
            ProtocolAbort, match=rf"settle rejected: StudyNotFinished\(2, {deadline}, \d+\)"
        ):
            world.study.settle(sponsor=world.sponsor)
        assert not world.study.is_settled()
        assert world.attest(1, round=2) is True
        world.study.settle(sponsor=world.sponsor)
        assert world.study.is_settled()
        assert sum(world.study.payouts().values()) == world.bounty

    def test_settle_after_the_deadline_without_the_final_round(
        self, provider: ChainProvider
    ) -> None:
        world = deploy_world(provider, rounds=3, deadline=deadline_in(provider, 1000))
        a, b, c, _ = world.owners
        world.attest(0, round=1, contributors=[a, b, c])
        world.attest(1, round=1, contributors=[a, b, c])
        provider.advance_time(seconds=500)
        with pytest.raises(ProtocolAbort, match=r"StudyNotFinished\(3, "):
            world.study.settle(sponsor=world.sponsor)
        reached = provider.advance_time(
            seconds=world.study.deadline() - provider.latest_timestamp()
        )
        assert reached >= world.study.deadline()
        world.study.settle(sponsor=world.sponsor)
        share = world.bounty // 3
        assert world.study.payouts() == {a: share, b: share, c: share}
        # Still once only, and no attestation after settlement.
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            world.study.settle(sponsor=world.sponsor)
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            world.attest(0, round=2)

    def test_advance_time_moves_the_chain_clock(self, provider: ChainProvider) -> None:
        before = provider.latest_timestamp()
        assert provider.advance_time(seconds=90) >= before + 90
        assert provider.latest_timestamp() >= before + 90
        for bad in (0, -5, True, 1.5):
            with pytest.raises(BadInputError, match="seconds: expected a positive"):
                provider.advance_time(seconds=bad)  # type: ignore[arg-type]

    def test_predict_address_is_the_deployed_address(self, provider: ChainProvider) -> None:
        sponsor = provider.accounts()[0]
        predicted = predict_address(provider, sponsor)
        assert predicted == create_address(sponsor, provider.next_nonce(sponsor))
        world = deploy_world_at(provider, expected_address=predicted)
        assert world.study.address == predicted
        assert predict_address(provider, sponsor) != predicted  # the nonce moved on
        assert StudyContract.at(provider, predicted).manifest_hash() == MANIFEST_HASH

    def test_deploy_refuses_an_unexpected_address(
        self, provider: ChainProvider, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        sponsor = provider.accounts()[0]
        nonce = provider.next_nonce(sponsor)
        wrong = create_address(sponsor, nonce + 1)  # what the manifest would name if stale
        with pytest.raises(VerificationError, match=rf"expected_address: .* not {wrong}"):
            deploy_world_at(provider, expected_address=wrong)
        assert provider.next_nonce(sponsor) == nonce  # refused before sending anything
        # The sponsor's nonce moves between the check and the deployment (a race): the
        # address in the receipt is compared too.
        monkeypatch.setattr(study_module, "predict_address", lambda _provider, _sponsor: wrong)
        with pytest.raises(VerificationError, match=rf"deployed at .*, not {wrong}"):
            deploy_world_at(provider, expected_address=wrong)

    def test_verify_binding_accepts_the_approved_manifest(self, world: World) -> None:
        terms = binding_terms(world)
        world.study.verify_binding(**terms)
        # Rosters compare as sets: the manifest's order need not be the deployment order.
        world.study.verify_binding(
            **{**terms, "committee": world.members[::-1], "data_owners": world.owners[::-1]}
        )
        attached = StudyContract.at(world.provider, world.study.address)
        attached.verify_binding(**terms, study_id=STUDY_ID, deadline=world.study.deadline())

    def test_verify_binding_names_the_first_differing_field(self, world: World) -> None:
        terms = binding_terms(world)
        stranger = Account.from_key(keccak(text="stranger")).address
        changes: list[tuple[dict[str, Any], str]] = [
            ({"manifest_hash": keccak(text="another manifest")}, "manifest_hash"),
            ({"chain_id": world.provider.chain_id + 1}, "chain_id"),
            ({"committee": [*world.members[:2], stranger]}, "committee"),
            ({"committee": world.members[:2]}, "committee"),
            ({"quorum": 3}, "quorum"),
            ({"data_owners": world.owners[:3]}, "data_owners"),
            ({"data_owners": [*world.owners, stranger]}, "data_owners"),
            ({"data_owners": [*world.owners[:3], stranger]}, "data_owners"),  # same size
            ({"rounds": ROUNDS + 1}, "rounds"),
            ({"study_id": keccak(text="other study")}, "study_id"),
            ({"deadline": world.study.deadline() + 1}, "deadline"),
            # Several fields differ: the first in check order is named.
            ({"rounds": 9, "quorum": 3, "committee": world.members[:1]}, "committee"),
            ({"rounds": 9, "chain_id": 1}, "chain_id"),
        ]
        for change, field in changes:
            with pytest.raises(VerificationError, match=rf"^{field}: "):
                world.study.verify_binding(**{**terms, **change})
        with pytest.raises(
            VerificationError, match=rf"missing: {stranger}; not in the manifest: {world.owners[3]}"
        ):
            world.study.verify_binding(**{**terms, "data_owners": [*world.owners[:3], stranger]})
        with pytest.raises(VerificationError, match=r"^code: "):
            StudyContract(world.provider, world.outsider).verify_binding(**terms)
        with pytest.raises(BadInputError, match=r"committee: .* listed twice"):
            world.study.verify_binding(**{**terms, "committee": [*world.members, world.members[0]]})
        with pytest.raises(BadInputError, match="manifest_hash: expected 32 bytes"):
            world.study.verify_binding(**{**terms, "manifest_hash": b"short"})

    # -------------------------------------------------------------- attestation

    def test_digest_matches_the_contract(self, world: World) -> None:
        functions = world.study.contract.functions
        assert bytes(functions.ATTESTATION_TYPEHASH().call()) == ATTESTATION_TYPEHASH
        for round_, agg, contributors in [
            (0, AGG_A, world.owners[:1]),
            (7, AGG_B, world.owners[::-1]),
            (2**256 - 1, b"\x01" * 32, world.owners[1:3]),
        ]:
            ordered = canonical_contributors(contributors)
            heads, epsilons = ledger_lists(ordered, heads_for(contributors))
            call = functions.attestationDigest(round_, agg, ordered, heads, epsilons)
            onchain = bytes(call.call())
            local = attestation_digest(
                chain_id=world.provider.chain_id,
                contract=world.study.address,
                study_id=STUDY_ID,
                round=round_,
                aggregate_hash=agg,
                contributors=contributors,
                ledger_heads=heads_for(contributors),
            )
            assert onchain == local

    def test_two_of_three_finalizes(self, world: World) -> None:
        assert world.attest(0, round=1) is False
        assert world.study.finalized_hash(1) is None
        assert (
            world.study.votes(
                round=1,
                aggregate_hash=AGG_A,
                contributors=world.owners[:3],
                ledger_heads=heads_for(world.owners[:3]),
            )
            == 1
        )
        assert world.study.finalized(1) is None
        assert world.attest(1, round=1) is True
        assert world.study.finalized_hash(1) == AGG_A
        assert world.study.finalized(1) == (AGG_A, contributors_hash(world.owners[:3]))
        assert world.study.is_finalized(1)
        assert world.study.finalized_rounds() == 1
        assert [world.study.contributions(o) for o in world.owners] == [1, 1, 1, 0]
        assert world.study.total_contributions() == 3
        # Members only sign: the relayer paid for everything.
        assert all(world.provider.balance(m) == 0 for m in world.members)

    def test_every_two_member_subset_finalizes(self, world: World) -> None:
        for round_, (first, second) in enumerate(itertools.combinations(range(3), 2), start=1):
            assert world.attest(first, round=round_) is False
            assert world.attest(second, round=round_) is True
            assert world.study.finalized_hash(round_) == AGG_A
        assert world.study.finalized_rounds() == 3
        assert [world.study.contributions(o) for o in world.owners] == [3, 3, 3, 0]

    def test_late_attestation_is_recorded_but_changes_nothing(self, world: World) -> None:
        world.attest(0, round=1)
        world.attest(1, round=1)
        assert world.attest(2, round=1, agg=AGG_B) is False
        assert world.study.has_attested(1, world.members[2])
        assert world.study.finalized_hash(1) == AGG_A
        assert world.study.finalized_rounds() == 1
        assert [world.study.contributions(o) for o in world.owners] == [1, 1, 1, 0]
        # A late vote for the winning result is counted too, without a second finalization.
        world2 = deploy_world(world.provider)
        world2.attest(0, round=1)
        world2.attest(1, round=1)
        assert world2.attest(2, round=1) is False
        assert (
            world2.study.votes(
                round=1,
                aggregate_hash=AGG_A,
                contributors=world2.owners[:3],
                ledger_heads=heads_for(world2.owners[:3]),
            )
            == 3
        )
        assert world2.study.total_contributions() == 3
        events = world2.study.attestation_events()
        assert [(e.member, e.votes) for e in events] == list(
            zip(world2.members, [1, 2, 3], strict=True)
        )
        assert all(e.relayer == world2.relayer for e in events)
        (final,) = world2.study.finalized_events()
        assert final.round == 1
        assert final.aggregate_hash == AGG_A
        assert final.contributors == tuple(canonical_contributors(world2.owners[:3]))
        assert final.contributors_hash == contributors_hash(world2.owners[:3])

    def test_mismatching_results_do_not_finalize(self, world: World) -> None:
        assert world.attest(0, round=1, agg=AGG_A) is False
        assert world.attest(1, round=1, agg=AGG_B) is False
        assert world.study.finalized_hash(1) is None
        # Same hash, different contributor set: a different result, no quorum either.
        assert world.attest(0, round=2, contributors=world.owners[:2]) is False
        assert world.attest(1, round=2, contributors=world.owners[:3]) is False
        assert world.study.finalized_rounds() == 0
        # The third member breaks the tie for round 1 in favour of AGG_B.
        assert world.attest(2, round=1, agg=AGG_B) is True
        assert world.study.finalized_hash(1) == AGG_B

    def test_finalization_emits_each_contributors_ledger_head(self, world: World) -> None:
        contributors = world.owners[:3]
        world.attest(0, round=1, contributors=contributors)
        assert world.study.ledger_head_events() == []  # nothing before quorum
        world.attest(1, round=1, contributors=contributors[::-1])
        world.attest(2, round=1, contributors=contributors)  # a late vote emits nothing
        events = world.study.ledger_head_events()
        expected = heads_for(contributors)
        assert [(e.round, e.contributor) for e in events] == [
            (1, a) for a in canonical_contributors(contributors)
        ]
        assert {e.contributor: (e.head, e.epsilon_micro) for e in events} == expected

    def test_ledger_lists_must_match_the_contributors(self, world: World) -> None:
        contributors = world.owners[:3]
        signature = world.sign(MEMBER_KEYS[0], round=1, agg=AGG_A, contributors=contributors)
        with pytest.raises(BadInputError, match="ledger_heads: must name exactly"):
            world.study.submit_attestation(
                relayer=world.relayer,
                round=1,
                aggregate_hash=AGG_A,
                contributors=contributors,
                ledger_heads=heads_for(contributors[:2]),
                signature=signature,
            )
        ordered = canonical_contributors(contributors)
        heads, epsilons = ledger_lists(ordered, heads_for(contributors))
        fn = world.study.contract.functions.attest(
            1, AGG_A, ordered, heads[:2], epsilons, signature
        )
        with pytest.raises(BadInputError, match=r"LedgerLengthMismatch\(3, 2, 3\)"):
            world.provider.transact(fn, sender=world.relayer, error_kinds=ERROR_KINDS)

    def test_contributor_order_does_not_matter_to_signers(self, world: World) -> None:
        assert world.attest(0, round=1, contributors=world.owners[:3]) is False
        assert world.attest(1, round=1, contributors=world.owners[2::-1]) is True

    def test_non_member_signature_rejected(self, world: World) -> None:
        outsider = Account.from_key(OUTSIDER_KEY).address
        signature = world.sign(OUTSIDER_KEY, round=1, agg=AGG_A, contributors=world.owners[:3])
        with pytest.raises(
            VerificationError, match=rf"attestation rejected: NotCommitteeMember\({outsider}\)"
        ):
            world.study.submit_attestation(
                relayer=world.relayer,
                round=1,
                aggregate_hash=AGG_A,
                contributors=world.owners[:3],
                ledger_heads=heads_for(world.owners[:3]),
                signature=signature,
            )
        assert not world.study.has_attested(1, outsider)

    def test_replayed_and_double_votes_rejected(self, world: World) -> None:
        contributors = world.owners[:3]
        signature = world.sign(MEMBER_KEYS[0], round=1, agg=AGG_A, contributors=contributors)
        submit: dict[str, Any] = {
            "round": 1,
            "aggregate_hash": AGG_A,
            "contributors": contributors,
            "ledger_heads": heads_for(contributors),
            "signature": signature,
        }
        assert world.study.submit_attestation(relayer=world.relayer, **submit) is False
        expected = rf"AlreadyAttested\(1, {world.members[0]}\)"
        with pytest.raises(VerificationError, match=expected):
            world.study.submit_attestation(relayer=world.outsider, **submit)
        # A second, different vote by the same member in the same round is refused too.
        with pytest.raises(VerificationError, match=expected):
            world.attest(0, round=1, agg=AGG_B)
        assert (
            world.study.votes(
                round=1,
                aggregate_hash=AGG_A,
                contributors=contributors,
                ledger_heads=heads_for(contributors),
            )
            == 1
        )

    def test_signature_is_bound_to_round_contract_and_result(self, world: World) -> None:
        contributors = world.owners[:3]
        other = deploy_world(world.provider)
        honest: dict[str, Any] = {
            "chain_id": world.provider.chain_id,
            "contract": world.study.address,
            "study_id": STUDY_ID,
            "round": 1,
            "aggregate_hash": AGG_A,
            "contributors": contributors,
            "ledger_heads": heads_for(contributors),
        }
        changes: dict[str, dict[str, Any]] = {
            "another round": {"round": 2},
            "another contract": {"contract": other.study.address},
            "another contributor set": {
                "contributors": world.owners[:2],
                "ledger_heads": heads_for(world.owners[:2]),
            },
            "another ledger head": {
                "ledger_heads": {**heads_for(contributors), contributors[0]: (b"\x07" * 32, 1)}
            },
            "another epsilon": {
                "ledger_heads": {**heads_for(contributors), contributors[0]: (bytes(32), 2)}
            },
            "another aggregate": {"aggregate_hash": AGG_B},
            "another chain": {"chain_id": world.provider.chain_id + 1},
            "another study": {"study_id": keccak(text="other study")},
        }
        forged = {
            why: attestation_digest(**{**honest, **change}) for why, change in changes.items()
        }
        for why, digest in forged.items():
            with pytest.raises(VerificationError, match="NotCommitteeMember"):
                world.study.submit_attestation(
                    relayer=world.relayer,
                    round=1,
                    aggregate_hash=AGG_A,
                    contributors=contributors,
                    ledger_heads=heads_for(contributors),
                    signature=sign_attestation(MEMBER_KEYS[0], digest),
                )
            assert not world.study.has_attested(1, world.members[0]), why

    def test_malformed_signatures_rejected(self, world: World) -> None:
        contributors = world.owners[:3]
        good = world.sign(MEMBER_KEYS[0], round=1, agg=AGG_A, contributors=contributors)
        s = int.from_bytes(good[32:64], "big")
        high_s_twin = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([good[64] ^ 1])
        cases = {
            good[:64]: r"InvalidSignatureLength\(64\)",
            good + b"\x00": r"InvalidSignatureLength\(66\)",
            good[:64] + bytes([29]): r"InvalidSignature\(\)",
            good[:64] + bytes([good[64] - 27]): r"InvalidSignature\(\)",  # v in {0, 1}
            high_s_twin: r"InvalidSignature\(\)",  # same signer, malleated
            bytes(64) + bytes([27]): r"InvalidSignature\(\)",
        }
        for signature, error in cases.items():
            with pytest.raises(VerificationError, match=error):
                world.study.submit_attestation(
                    relayer=world.relayer,
                    round=1,
                    aggregate_hash=AGG_A,
                    contributors=contributors,
                    ledger_heads=heads_for(contributors),
                    signature=signature,
                )
        assert world.attest(0, round=1) is False  # the well-formed one still works

    def test_zero_aggregate_hash_rejected(self, world: World) -> None:
        with pytest.raises(BadInputError, match=r"attestation rejected: ZeroAggregateHash\(\)"):
            world.attest(0, round=1, agg=bytes(32))
        assert not world.study.has_attested(1, world.members[0])

    def test_non_canonical_contributors_rejected_by_contract(self, world: World) -> None:
        ordered = canonical_contributors(world.owners[:3])
        outsider = world.outsider
        raw_cases = [
            ([ordered[1], ordered[0], ordered[2]], BadInputError, r"ContributorsNotCanonical\(1\)"),
            ([ordered[0], ordered[0]], BadInputError, r"ContributorsNotCanonical\(1\)"),
            ([], BadInputError, r"EmptyContributors\(\)"),
            (
                [*ordered, outsider] if int(outsider, 16) > int(ordered[-1], 16) else [outsider],
                BadInputError,
                rf"NotDataOwner\({outsider}\)",
            ),
        ]
        for contributors, kind, error in raw_cases:
            # A signature over exactly these bytes: the contract must refuse the list itself.
            heads = [bytes(32)] * len(contributors)
            epsilons = [0] * len(contributors)
            ledger = keccak(encode(["bytes32[]", "uint256[]"], [heads, epsilons]))
            digest = keccak(
                b"\x19Ethereum Signed Message:\n32"
                + keccak(
                    ATTESTATION_TYPEHASH
                    + world.provider.chain_id.to_bytes(32, "big")
                    + bytes(12)
                    + bytes.fromhex(world.study.address[2:])
                    + STUDY_ID
                    + (1).to_bytes(32, "big")
                    + AGG_A
                    + keccak(b"".join(bytes(12) + bytes.fromhex(a[2:]) for a in contributors))
                    + ledger
                )
            )
            fn = world.study.contract.functions.attest(
                1, AGG_A, contributors, heads, epsilons, sign_attestation(MEMBER_KEYS[0], digest)
            )
            with pytest.raises(kind, match=error):
                world.provider.transact(
                    fn,
                    sender=world.relayer,
                    action="attestation",
                    error_kinds={
                        "ContributorsNotCanonical": BadInputError,
                        "EmptyContributors": BadInputError,
                        "NotDataOwner": BadInputError,
                    },
                )

    def test_client_canonicalizes_or_refuses_contributors(self, world: World) -> None:
        with pytest.raises(BadInputError, match="listed twice"):
            world.attest(0, round=1, contributors=[world.owners[0], world.owners[0].lower()])
        with pytest.raises(BadInputError, match=rf"NotDataOwner\({world.outsider}\)"):
            world.attest(0, round=1, contributors=[world.owners[0], world.outsider])
        assert world.attest(0, round=1, contributors=world.owners[::-1]) is False

    # -------------------------------------------------------------- data-owner roster

    def test_roster_is_registered_in_ascending_batches(self, provider: ChainProvider) -> None:
        accounts = provider.accounts()
        sponsor, outsider = accounts[0], accounts[6]
        owners = canonical_contributors(accounts[2:6])
        members = [Account.from_key(k).address for k in MEMBER_KEYS]
        factory = provider.web3.eth.contract(abi=load_artifact()["abi"], bytecode=ARTIFACT_BYTECODE)
        constructor = factory.constructor(
            STUDY_ID, MANIFEST_HASH, members, 2, owners[:2], 4, ROUNDS, deadline_in(provider)
        )
        receipt = provider.transact(constructor, sender=sponsor, error_kinds=ERROR_KINDS)
        assert receipt["contractAddress"] is not None
        study = StudyContract.at(provider, receipt["contractAddress"])
        terms: dict[str, Any] = {
            "manifest_hash": MANIFEST_HASH,
            "chain_id": provider.chain_id,
            "committee": members,
            "quorum": 2,
            "data_owners": owners,
            "rounds": ROUNDS,
        }
        assert (study.registered_data_owners(), study.data_owner_count()) == (2, 4)
        with pytest.raises(VerificationError, match=r"^data_owners: only 2 of the contract's 4"):
            study.verify_binding(**terms)
        world = World(provider, study, sponsor, accounts[1], owners, outsider, members, 0)
        with pytest.raises(ProtocolAbort, match=r"attestation rejected: RosterIncomplete\(2, 4\)"):
            world.attest(0, round=1, contributors=owners[:2])

        def register(batch: list[str], sender: str = sponsor) -> None:
            fn = study.contract.functions.registerDataOwners(batch)
            provider.transact(fn, sender=sender, error_kinds=ERROR_KINDS)

        rejected = [
            ([owners[2]], outsider, rf"NotSponsor\({outsider}\)"),
            ([owners[0]], sponsor, r"DataOwnersNotAscending\(0\)"),  # below the last one
            ([owners[1]], sponsor, r"DataOwnersNotAscending\(0\)"),  # already listed
            ([owners[2], owners[2]], sponsor, r"DataOwnersNotAscending\(1\)"),
            ([owners[3], owners[2]], sponsor, r"DataOwnersNotAscending\(1\)"),
            ([owners[2], owners[3], outsider], sponsor, r"RosterFull\(4, 1\)"),
            ([], sponsor, r"EmptyBatch\(\)"),
        ]
        for batch, sender, error in rejected:
            with pytest.raises((BadInputError, VerificationError), match=error):
                register(batch, sender)
        assert study.registered_data_owners() == 2
        register(owners[2:])
        assert study.data_owners() == owners
        assert study.data_owners_hash() == roster_hash(owners)
        study.verify_binding(**terms)
        with pytest.raises(BadInputError, match=r"RosterFull\(4, 1\)"):
            register([outsider])
        assert world.attest(0, round=1, contributors=owners) is False
        assert world.attest(1, round=1, contributors=owners) is True

    def test_largest_roster_fits_the_transaction_gas_cap(self, provider: ChainProvider) -> None:
        """MAX_DATA_OWNERS owners: registration, a round that finalizes with every one of
        them, and settlement, each transaction under EIP-7825's 2^24 gas."""
        accounts = provider.accounts()
        owners = [
            Account.from_key(keccak(text=f"roster/{i}")).address for i in range(MAX_DATA_OWNERS)
        ]
        members = [Account.from_key(k).address for k in MEMBER_KEYS]
        start = provider.web3.eth.block_number
        bounty = 10**18 + 7
        study = StudyContract.deploy(
            provider,
            sponsor=accounts[0],
            study_id=STUDY_ID,
            committee=members,
            quorum=2,
            data_owners=owners,
            bounty_wei=bounty,
            manifest_hash=MANIFEST_HASH,
            rounds=1,
            deadline=deadline_in(provider),
        )
        study.verify_binding(
            manifest_hash=MANIFEST_HASH,
            chain_id=provider.chain_id,
            committee=members,
            quorum=2,
            data_owners=owners[::-1],
            rounds=1,
        )
        world = World(provider, study, accounts[0], accounts[1], owners, accounts[6], members, 0)
        assert world.attest(0, round=1, contributors=owners) is False
        assert world.attest(1, round=1, contributors=owners) is True
        study.settle(sponsor=accounts[0])
        share = bounty // len(owners)
        payouts = study.payouts()
        assert all(payouts[o] == share for o in owners)
        assert payouts[accounts[0]] == bounty - share * len(owners)
        used = gas_of_blocks(provider, after_block=start)
        assert len(used) > 6  # deploy + registrations, 2 votes, several settle batches
        assert max(used) < 2**24, used

    # -------------------------------------------------------------- settlement

    def test_settlement_runs_in_ascending_batches(self, provider: ChainProvider) -> None:
        world = deploy_world(provider, rounds=1)
        study, sponsor = world.study, world.sponsor
        contributors = canonical_contributors(world.owners[:3])
        idle = next(o for o in world.owners if o not in contributors)
        world.attest(0, round=1, contributors=contributors)
        world.attest(1, round=1, contributors=contributors)

        def settle(batch: list[str]) -> None:
            fn = study.contract.functions.settle(batch)
            provider.transact(fn, sender=sponsor, error_kinds=ERROR_KINDS)

        for batch, error in [
            (contributors[1::-1], r"SettlementOrder\(1\)"),
            ([idle], r"SettlementOrder\(0\)"),  # no contribution
            ([], r"EmptyBatch\(\)"),
        ]:
            with pytest.raises(BadInputError, match=error):
                settle(batch)
        assert not study.is_settling()
        settle(contributors[:1])
        assert study.is_settling()
        assert not study.is_settled()
        # Settlement has begun: the pool is fixed and no round or owner can be added.
        with pytest.raises(ProtocolAbort, match=r"attestation rejected: StudyAlreadySettled"):
            world.attest(2, round=1, contributors=contributors)
        with pytest.raises(ProtocolAbort, match=r"fund rejected: StudyAlreadySettled"):
            study.fund(sponsor=sponsor, amount_wei=1)
        register = study.contract.functions.registerDataOwners([world.outsider])
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled"):
            provider.transact(register, sender=sponsor, error_kinds=ERROR_KINDS)
        with pytest.raises(BadInputError, match=r"SettlementOrder\(0\)"):
            settle(contributors[:1])  # credited once only
        study.settle(sponsor=sponsor)  # resumes after the first contributor
        share = world.bounty // 3
        assert study.payouts() == dict.fromkeys(contributors, share)
        assert study.is_settled()
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            study.settle(sponsor=sponsor)

    @pytest.mark.parametrize("bounty", [6 * ETHER, 10**18 + 5])
    def test_settle_credits_in_proportion_and_dust_to_sponsor(
        self, provider: ChainProvider, bounty: int
    ) -> None:
        world = deploy_world(provider, bounty=bounty)
        a, b, c, d = world.owners
        for round_, contributors in enumerate([[a, b, c], [a, b], [a]], start=1):
            world.attest(0, round=round_, contributors=contributors)
            world.attest(2, round=round_, contributors=contributors)
        assert [world.study.contributions(o) for o in world.owners] == [3, 2, 1, 0]
        world.study.settle(sponsor=world.sponsor)
        # Oracle: integer shares of the bounty, the remainder to the sponsor.
        expected = {a: bounty * 3 // 6, b: bounty * 2 // 6, c: bounty * 1 // 6, d: 0}
        dust = bounty - sum(expected.values())
        for owner, amount in expected.items():
            assert world.study.credit(owner) == amount
        assert world.study.credit(world.sponsor) == dust
        assert world.study.payouts() == {
            k: v for k, v in {**expected, world.sponsor: dust}.items() if v > 0
        }
        assert world.study.is_settled()
        start = provider.web3.eth.block_number
        before = {acct: provider.balance(acct) for acct in [a, b, c, d, world.sponsor]}
        paid = {acct: world.study.withdraw(account=acct) for acct in before}
        assert paid == {**expected, world.sponsor: dust}
        for acct, amount in paid.items():
            spent = fee_paid(provider, acct, start)
            assert provider.balance(acct) == before[acct] + amount - spent
        assert provider.balance(world.study.address) == 0

    def test_settle_refunds_sponsor_when_nothing_finalized(self, world: World) -> None:
        world.attest(0, round=1)  # one vote, no quorum
        world.provider.advance_time(seconds=DEADLINE_AFTER_S)  # only the deadline ends it
        world.study.settle(sponsor=world.sponsor)
        assert world.study.credit(world.sponsor) == world.bounty
        assert all(world.study.credit(o) == 0 for o in world.owners)
        assert world.study.withdraw(account=world.owners[0]) == 0
        assert world.study.withdraw(account=world.sponsor) == world.bounty
        assert world.provider.balance(world.study.address) == 0

    def test_only_sponsor_settles_and_only_once(self, provider: ChainProvider) -> None:
        world = deploy_world(provider, rounds=2)
        world.attest(0, round=1)
        world.attest(1, round=1)
        with pytest.raises(
            VerificationError, match=rf"settle rejected: NotSponsor\({world.outsider}\)"
        ):
            world.study.settle(sponsor=world.outsider)
        world.attest(0, round=2)
        world.attest(1, round=2)
        world.study.settle(sponsor=world.sponsor)
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            world.study.settle(sponsor=world.sponsor)
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            world.attest(2, round=2)
        with pytest.raises(ProtocolAbort, match=r"StudyAlreadySettled\(\)"):
            world.study.fund(sponsor=world.sponsor, amount_wei=1)

    def test_withdraw_once_then_zero(self, provider: ChainProvider) -> None:
        world = deploy_world(provider, rounds=1)
        world.attest(0, round=1, contributors=world.owners[:1])
        world.attest(1, round=1, contributors=world.owners[:1])
        owner = world.owners[0]
        assert world.study.withdraw(account=owner) == 0  # nothing before settlement
        world.study.settle(sponsor=world.sponsor)
        assert world.study.withdraw(account=owner) == world.bounty
        assert world.study.credit(owner) == 0
        assert world.study.withdraw(account=owner) == 0
        with pytest.raises(
            ProtocolAbort, match=rf"withdraw rejected: NothingToWithdraw\({owner}\)"
        ):
            world.provider.transact(world.study.contract.functions.withdraw(), sender=owner)

    def test_release_pays_the_owner_not_the_relayer(self, provider: ChainProvider) -> None:
        world = deploy_world(provider, rounds=1)
        world.attest(0, round=1, contributors=world.owners[:1])
        world.attest(1, round=1, contributors=world.owners[:1])
        owner = world.owners[0]
        assert world.study.release(account=owner, relayer=world.sponsor) == 0
        world.study.settle(sponsor=world.sponsor)
        before_owner = world.provider.balance(owner)
        assert world.study.release(account=owner, relayer=world.sponsor) == world.bounty
        assert world.provider.balance(owner) - before_owner == world.bounty  # owner paid no gas
        assert world.study.credit(owner) == 0
        with pytest.raises(ProtocolAbort, match=rf"release rejected: NothingToWithdraw\({owner}\)"):
            world.provider.transact(
                world.study.contract.functions.release(owner), sender=world.sponsor
            )

    def test_reentrant_withdraw_is_stopped(self, provider: ChainProvider) -> None:
        artifact = reentrant_owner_artifact()
        accounts = provider.accounts()
        factory = provider.web3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        receipt = provider.transact(factory.constructor(), sender=accounts[1])
        attacker = provider.web3.eth.contract(
            address=receipt["contractAddress"], abi=artifact["abi"]
        )
        with pytest.raises(BadInputError, match="not the committed CohortStudy"):
            StudyContract.at(provider, attacker.address)
        owners = [attacker.address, *accounts[2:4]]
        study = StudyContract.deploy(
            provider,
            sponsor=accounts[0],
            study_id=STUDY_ID,
            committee=[Account.from_key(k).address for k in MEMBER_KEYS],
            quorum=2,
            data_owners=owners,
            bounty_wei=4 * ETHER,
            manifest_hash=MANIFEST_HASH,
            rounds=1,
            deadline=deadline_in(provider),
        )
        for member in (0, 1):
            digest = study.attestation_digest(
                round=1, aggregate_hash=AGG_A, contributors=owners, ledger_heads=heads_for(owners)
            )
            study.submit_attestation(
                relayer=accounts[1],
                round=1,
                aggregate_hash=AGG_A,
                contributors=owners,
                ledger_heads=heads_for(owners),
                signature=sign_attestation(MEMBER_KEYS[member], digest),
            )
        study.settle(sponsor=accounts[0])
        share = study.credit(attacker.address)
        assert share > 0
        provider.transact(attacker.functions.attack(study.address), sender=accounts[1])
        assert provider.balance(attacker.address) == share
        assert attacker.functions.reentered().call()
        assert not attacker.functions.reentrySucceeded().call()
        reason = bytes(attacker.functions.reentryError().call())
        assert reason == keccak(text="Reentrancy()")[:4]
        assert provider.balance(study.address) == 4 * ETHER - share

    # -------------------------------------------------------------- provider

    def test_unknown_sender_is_bad_input(self, world: World) -> None:
        stranger = Account.from_key(keccak(text="stranger")).address
        with pytest.raises(BadInputError, match="cannot send from"):
            world.study.settle(sponsor=stranger)

    def test_gas_stays_within_documented_budget(self, world: World) -> None:
        used = gas_profile(world)
        for step, ceiling in GAS_CEILINGS.items():
            assert used[step] <= ceiling, (step, used[step])

    def test_no_private_key_in_logs(
        self, provider: ChainProvider, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG, logger="cohort"):
            world = deploy_world(provider)
            world.attest(0, round=1)
            world.attest(1, round=1)
            with pytest.raises(VerificationError):
                world.attest(1, round=1)
        text = caplog.text.lower() + " ".join(str(r.__dict__) for r in caplog.records).lower()
        assert "attestation relayed" in caplog.text
        for key in [*MEMBER_KEYS, *RPC_KEYS]:
            assert key.hex() not in text


def gas_of_blocks(provider: ChainProvider, *, after_block: int) -> list[int]:
    """Gas used by every transaction mined after ``after_block``."""
    w3 = provider.web3
    used = []
    for number in range(after_block + 1, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            assert not isinstance(tx, bytes)
            used.append(int(w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"]))
    return used


def gas_profile(world: World) -> dict[str, int]:
    """Gas used by each step of a 3-member, 4-owner study (used for docs/contract.md)."""
    provider, study = world.provider, world.study
    factory = provider.web3.eth.contract(abi=study.contract.abi, bytecode=ARTIFACT_BYTECODE)
    owners = canonical_contributors(world.owners)
    constructor = factory.constructor(
        STUDY_ID, MANIFEST_HASH, world.members, 2, owners, len(owners), 1, deadline_in(provider)
    )
    used = {"deploy": provider.transact(constructor, sender=world.sponsor)["gasUsed"]}
    contributors = world.owners[:3]
    gas: list[int] = []
    for member in (0, 1, 2):
        signature = world.sign(MEMBER_KEYS[member], round=1, agg=AGG_A, contributors=contributors)
        ordered = canonical_contributors(contributors)
        heads, epsilons = ledger_lists(ordered, heads_for(contributors))
        fn = study.contract.functions.attest(1, AGG_A, ordered, heads, epsilons, signature)
        gas.append(provider.transact(fn, sender=world.relayer)["gasUsed"])
    used["attest"] = max(gas)
    used["attest_first"], used["attest_finalizing"], used["attest_late"] = gas
    # The world's final round (ROUNDS) is not finalized: settlement waits for the deadline.
    provider.advance_time(seconds=study.deadline() - provider.latest_timestamp())
    settle = study.contract.functions.settle(canonical_contributors(contributors))
    used["settle"] = provider.transact(settle, sender=world.sponsor)["gasUsed"]
    used["withdraw"] = provider.transact(
        study.contract.functions.withdraw(), sender=world.owners[0]
    )["gasUsed"]
    return used


# ---------------------------------------------------------------------- providers


class TestEmbeddedChain(StudyContractSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls) -> ChainProvider:
        return EmbeddedChain()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    """A fresh anvil node on a free 127.0.0.1 port, stopped after the module."""
    fund = [Account.from_key(key).address for key in RPC_KEYS]
    with running_anvil(fund=fund, balance_wei=10**6 * ETHER) as url:
        yield url


class TestAnvilRpcChain(StudyContractSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls, anvil_url: str) -> ChainProvider:
        return RpcChain(anvil_url, private_keys=RPC_KEYS)

    def test_a_finalized_read_is_two_calls_and_the_chain_id_is_asked_once(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """What an owner asks its chain before it decrypts: web3's validation wanted the
        chain id twice per call (14 requests per check); the provider remembers it."""
        world.attest(0, round=1)
        world.attest(1, round=1)
        provider = world.provider.web3.provider
        assert isinstance(provider, HTTPProvider)
        asked: list[str] = []
        send = provider._make_request  # what goes out to the node, after web3's cache

        def recorded(method: Any, request_data: bytes) -> Any:
            asked.append(str(method))
            return send(method, request_data)

        monkeypatch.setattr(provider, "_make_request", recorded)
        for _ in range(3):
            assert world.study.finalized(1) == (AGG_A, contributors_hash(world.owners[:3]))
        assert asked.count("eth_call") == 6
        assert asked.count("eth_chainId") <= 1
        assert set(asked) <= {"eth_call", "eth_chainId"}


def test_create_address_vectors() -> None:
    # The CREATE rule's well-known vectors (sender 0x6ac7...dbf0, nonces 0 and 1) and an
    # independent recomputation of keccak(rlp([sender, nonce]))[12:] for small nonces.
    sender = "0x6ac7ea33f8831ea9dcc53393aaa88b25a785dbf0"
    assert create_address(sender, 0).lower() == "0xcd234a471b72ba2f1ccf0a70fcaba648a5eecd8d"
    assert create_address(sender, 1).lower() == "0x343c43a37d37dff08ae8c4a11544c718abb4fcf8"
    raw = bytes.fromhex(sender[2:])
    for nonce in (0, 1, 0x7F, 0x80, 0x1234):
        # RLP: a nonce of 0 is the empty string 0x80, below 0x80 a single byte, else 0x8n||be.
        if nonce == 0:
            encoded_nonce = b"\x80"
        elif nonce < 0x80:
            encoded_nonce = bytes([nonce])
        else:
            be = nonce.to_bytes((nonce.bit_length() + 7) // 8, "big")
            encoded_nonce = bytes([0x80 + len(be)]) + be
        payload = b"\x94" + raw + encoded_nonce
        expected = keccak(bytes([0xC0 + len(payload)]) + payload)[12:]
        assert create_address(sender, nonce).lower() == "0x" + expected.hex()
    for bad_nonce in (-1, True):
        with pytest.raises(BadInputError, match="nonce"):
            create_address(sender, bad_nonce)
    with pytest.raises(BadInputError, match="sender"):
        create_address("0x1234", 0)


def test_rpc_chain_validates_its_arguments() -> None:
    with pytest.raises(BadInputError, match="url"):
        RpcChain("ws://127.0.0.1:8545")
    secret = b"\x11" * 31
    with pytest.raises(BadInputError, match=r"private_keys\[0\]: expected 32 bytes") as info:
        RpcChain("http://127.0.0.1:9", private_keys=[secret])
    assert secret.hex() not in str(info.value)
    with pytest.raises(ProtocolAbort, match="no Ethereum JSON-RPC node"):
        RpcChain("http://127.0.0.1:9", request_timeout_s=0.5)


def test_rpc_chain_without_keys_is_read_only(anvil_url: str) -> None:
    chain = RpcChain(anvil_url)
    assert chain.accounts() == []
    assert chain.chain_id == 31337


# ----------------------------------------------------------------------- StudyReads


class _Relay:
    """A JSON-RPC endpoint in front of anvil that counts the requests it gets and, as told,
    refuses batches (one error object, as some nodes answer), answers HTTP 500 or answers
    something that is not JSON."""

    def __init__(self, upstream: str, *, mode: str = "pass") -> None:
        import http.server
        import threading
        import urllib.request

        relay = self
        self.requests: list[object] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                relay.requests.append(json.loads(body))
                if mode == "http-500":
                    self.send_error(500)
                    return
                if mode == "not-json":
                    answer = b"<html>gateway</html>"
                elif mode == "no-batches" and isinstance(relay.requests[-1], list):
                    refusal = {"code": -32600, "message": "no batches"}
                    answer = json.dumps({"jsonrpc": "2.0", "id": None, "error": refusal}).encode()
                else:
                    ask = urllib.request.Request(
                        upstream, data=body, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(ask, timeout=10) as response:
                        answer = response.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class TestStudyReads:
    """An owner's one-request view of what the contract finalized gives the contract
    client's answers (:meth:`StudyContract.finalized`), on a real node."""

    @pytest.fixture(scope="class")
    @classmethod
    def world(cls, anvil_url: str) -> World:
        return deploy_world(RpcChain(anvil_url, private_keys=RPC_KEYS))

    def test_it_reads_what_the_contract_client_reads_in_one_request(
        self, world: World, anvil_url: str
    ) -> None:
        from cohort.bounties.reads import StudyReads

        relay = _Relay(anvil_url)
        try:
            reads = StudyReads(relay.url, world.study.address)
            assert reads.finalized(1) is None is world.study.finalized(1)
            world.attest(0, round=1)
            assert reads.finalized(1) is None  # one vote of a quorum of two
            world.attest(1, round=1)
            world.attest(0, round=2, agg=AGG_B, contributors=world.owners[1:4])
            expected = (AGG_A, contributors_hash(world.owners[:3]))
            assert reads.finalized(1) == expected == world.study.finalized(1)
            assert reads.finalized(2) is None is world.study.finalized(2)
            assert reads.finalized(7) is None  # a round beyond the study: zero words
            assert len(relay.requests) == 5  # one POST per read
            assert all(isinstance(r, list) and len(r) == 3 for r in relay.requests)
        finally:
            relay.close()

    def test_a_node_without_batches_is_asked_one_call_at_a_time(
        self, world: World, anvil_url: str
    ) -> None:
        from cohort.bounties.reads import StudyReads

        world.attest(0, round=3)
        world.attest(1, round=3)
        relay = _Relay(anvil_url, mode="no-batches")
        try:
            reads = StudyReads(relay.url, world.study.address)
            assert reads.finalized(3) == world.study.finalized(3) is not None
            assert [type(r).__name__ for r in relay.requests] == ["list", "dict", "dict", "dict"]
        finally:
            relay.close()

    def test_an_address_without_the_committed_code_is_refused(
        self, world: World, anvil_url: str
    ) -> None:
        from cohort.bounties.reads import StudyReads

        empty = Account.from_key(keccak(text="cohort-test/nobody")).address
        with pytest.raises(BadInputError, match="no contract at"):
            StudyReads(anvil_url, empty).finalized(1)
        other = Account.from_key(keccak(text="cohort-test/other-code")).address
        world.provider.web3.provider.make_request(
            "anvil_setCode",  # type: ignore[arg-type]
            [other, "0x6001600055"],
        )
        with pytest.raises(BadInputError, match="not the committed CohortStudy build"):
            StudyReads(anvil_url, other).finalized(1)

    @pytest.mark.parametrize(
        ("mode", "message"),
        [("http-500", "HTTP 500"), ("not-json", "the answer is not JSON")],
    )
    def test_a_node_that_answers_out_of_protocol_is_named(
        self, world: World, anvil_url: str, mode: str, message: str
    ) -> None:
        from cohort.bounties.reads import StudyReads

        relay = _Relay(anvil_url, mode=mode)
        try:
            with pytest.raises(ProtocolAbort, match=message):
                StudyReads(relay.url, world.study.address).finalized(1)
        finally:
            relay.close()


def test_study_reads_name_a_dead_node_without_its_credentials() -> None:
    from cohort.bounties.reads import StudyReads

    port = _free_port()
    address = Account.from_key(keccak(text="cohort-test/nobody")).address
    reads = StudyReads(f"http://operator:s3cret@127.0.0.1:{port}/rpc", address, timeout_s=2)
    with pytest.raises(ProtocolAbort, match="no Ethereum JSON-RPC node answers at") as info:
        reads.finalized(1)
    assert "s3cret" not in str(info.value)
    assert f"http://127.0.0.1:{port}/rpc" in str(info.value)
    for bad, match in [
        ("ws://127.0.0.1:8545", "expected http"),
        ("http://127.0.0.1:99999", "bad port"),
        ("http://user:pw@", "expected http"),
    ]:
        with pytest.raises(BadInputError, match=match) as refused:
            StudyReads(bad, address)
        assert "pw" not in str(refused.value).replace("expected", "")
    with pytest.raises(BadInputError, match="round"):
        reads.finalized(-1)
