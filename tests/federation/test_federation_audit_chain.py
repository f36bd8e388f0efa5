"""``cohort audit --chain-url --contract``: published ledgers against the heads on chain.

A study of three hospitals and a 3-member committee (quorum 2) runs its rounds on a real
chain: each hospital records a round in its ledger and signs (head, epsilon) as
``LedgerCommitment``; the members' selection (``AttestationCheck.for_manifest``, the code
members run) turns them into the attested heads, two members sign, the contract finalizes
and emits ``LedgerHead`` events. A ledger edited afterwards and re-hashed consistently (its
own chain verifies, every epsilon still checks) is caught by the chain check alone. Runs
on the embedded chain always and over JSON-RPC against anvil when ``npm ci`` installed it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from anvilkit import running_anvil
from eth_account import Account
from eth_utils.crypto import keccak
from studykit import hospitals, make_study
from typer.testing import CliRunner

from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import study_id_bytes
from cohort.aggregator.quorum import AttestationCheck
from cohort.bounties.attestation import attestation_digest, epsilon_micro, sign_attestation
from cohort.bounties.chain import ChainProvider, EmbeddedChain, RpcChain
from cohort.bounties.study import StudyContract, predict_address
from cohort.clients.client_dp import client_level_epsilon
from cohort.clients.ledger_commitment import LedgerCommitment
from cohort.clients.privacy import LedgerEntry, PrivacyLedger, read_entries
from cohort.errors import VerificationError
from cohort.federation.approval import deploy_bound as deploy
from cohort.federation.audit import audit_run
from cohort.federation.audit_chain import HEAD_MISMATCH, ROUND_MISSING
from cohort.federation.audit_client_dp import CLIENTS_CHAIN_MISMATCH
from cohort.federation.cli import app
from cohort.federation.dp_terms import dp_config
from cohort.federation.manifest import ClientDpTerms, CommitteeEntry, Manifest

ROUNDS = 2
EXAMPLES = 64
ROOT = Path(__file__).resolve().parents[2]
SPONSOR_KEY = keccak(text="audit chain sponsor")
runner = CliRunner()


@dataclasses.dataclass
class Published:
    run: Path
    manifest: Manifest
    contract: StudyContract


def ledger_path(run: Path, hospital: str) -> Path:
    return run / "hospitals" / hospital / "ledger-default.json"


def publish(
    provider: ChainProvider,
    sponsor: str,
    root: Path,
    *,
    client_dp: ClientDpTerms | None = None,
    absent: Mapping[int, set[str]] | None = None,
) -> Published:
    """Run ROUNDS rounds of a 3-hospital study on ``provider``: ledgers and chain.

    ``absent`` maps a round to the hospitals that drop out of it (no ledger entry, not a
    contributor); ``client_dp`` goes into the manifest."""
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
    owners = hospitals(root / "parties", 3)
    study = make_study(owners, committee=entries, rounds=ROUNDS, approve_owners=False)
    signed = study.resign(
        client_dp=client_dp,
        sponsor_address=sponsor,
        chain_id=provider.chain_id,
        contract=predict_address(provider, sponsor),
        deadline=provider.latest_timestamp() + 3600,
    )
    manifest = signed.manifest
    contract = deploy(provider, signed)
    run = root / "run"
    signed.save(run / "manifest.json")
    config = dp_config(manifest)
    ledgers = {
        o.party_id: PrivacyLedger.open(
            ledger_path(run, o.party_id), owner=o.party_id, epsilon_cap=3.0, delta=config.delta
        )
        for o in owners
    }
    for rnd in range(1, ROUNDS + 1):
        present = [o for o in owners if o.party_id not in (absent or {}).get(rnd, set())]
        ids = [o.party_id for o in present]
        raw = []
        for owner in present:
            ledger = ledgers[owner.party_id]
            event = config.event(EXAMPLES, round=rnd)
            epsilon = ledger.projected_epsilon(event)
            ledger.record(event, study_id=manifest.study_id, epsilon=epsilon, seeded=False)
            commitment = LedgerCommitment.sign(
                owner.keystore.identity(),
                study_id=manifest.study_id,
                round=rnd,
                head=ledger.head,
                epsilon_micro=epsilon_micro(ledger.entries[-1].epsilon_after),
            )
            raw.append(commitment.to_bytes())
        check = AttestationCheck.for_manifest(manifest, ids, round=rnd, ledger_commitments=raw)
        aggregate = keccak(text=f"aggregate {rnd}")
        digest = attestation_digest(
            chain_id=manifest.chain_id,
            contract=manifest.contract,
            study_id=study_id_bytes(manifest.study_id),
            round=rnd,
            aggregate_hash=aggregate,
            contributors=check.contributors,
            ledger_heads=check.ledger_heads,
        )
        for member in keys[:2]:
            contract.submit_attestation(
                relayer=sponsor,
                round=rnd,
                aggregate_hash=aggregate,
                contributors=check.contributors,
                ledger_heads=check.ledger_heads,
                signature=sign_attestation(member.eth_private_key, digest),
            )
        assert contract.finalized_hash(rnd) == aggregate
    return Published(run, manifest, contract)


def rehash_touching(path: Path, round: int) -> None:
    """Edit round ``round``'s entry (its timestamp, nothing an accountant reads) and re-hash
    the whole ledger consistently: what a forger holding the file could publish."""
    document = json.loads(path.read_text())
    prev = bytes.fromhex(document["genesis"])
    entries = []
    for entry in read_entries(path):
        if entry.event.round == round:
            entry = dataclasses.replace(entry, recorded_at="2020-01-01T00:00:00Z")
        entry = dataclasses.replace(entry, prev_hash=prev)
        entry = dataclasses.replace(entry, entry_hash=LedgerEntry.link(prev, entry.body()))
        entries.append(entry.to_dict())
        prev = entry.entry_hash
    document["entries"] = entries
    document["head"] = prev.hex()
    path.write_text(json.dumps(document, indent=2))


def check_rehashed_ledger_is_caught_only_by_the_chain(study: Published) -> None:
    report = audit_run(study.run, contract=study.contract)
    assert report.ok, report.violations
    assert report.chain_contract == study.contract.address
    assert len(study.contract.ledger_head_events()) == 3 * ROUNDS
    rehash_touching(ledger_path(study.run, "hospital-2"), round=2)
    assert audit_run(study.run).ok  # hash chain, accountants and terms all still pass
    report = audit_run(study.run, contract=study.contract)
    assert len(report.violations) == 1, report.violations
    assert report.violations[0].startswith(f"hospital-2 round 2: {HEAD_MISMATCH}: ledger ")


def test_embedded_chain_catches_a_rehashed_ledger(tmp_path: Path) -> None:
    provider = EmbeddedChain()
    study = publish(provider, provider.accounts()[0], tmp_path)
    check_rehashed_ledger_is_caught_only_by_the_chain(study)


def test_a_deleted_round_and_another_contract_are_named(tmp_path: Path) -> None:
    provider = EmbeddedChain()
    study = publish(provider, provider.accounts()[0], tmp_path / "a")
    path = ledger_path(study.run, "hospital-3")
    document = json.loads(path.read_text())
    document["entries"] = document["entries"][:1]
    document["head"] = document["entries"][0]["hash"]
    path.write_text(json.dumps(document, indent=2))
    report = audit_run(study.run, contract=study.contract)
    missing = [v for v in report.violations if ROUND_MISSING in v]
    assert len(missing) == 1
    assert missing[0].startswith(f"hospital-3 round 2: {ROUND_MISSING}: the chain records head")
    other = publish(provider, provider.accounts()[0], tmp_path / "b")
    with pytest.raises(VerificationError, match="manifest_hash"):
        audit_run(study.run, contract=other.contract)


def test_a_forged_commitment_is_not_attested() -> None:
    """The coordinator cannot choose a head: a commitment not signed by the owner's key (or
    for another round) is skipped, and the member attests "none reported" for it."""
    owners = hospitals(Path("/nonexistent"), 2)
    study = make_study(owners, rounds=2, approve_owners=False)
    manifest = study.manifest
    ids = ["hospital-1", "hospital-2"]
    honest = LedgerCommitment.sign(
        owners[0].keystore.identity(),
        study_id=manifest.study_id,
        round=1,
        head=b"\x11" * 32,
        epsilon_micro=5,
    )
    forged = dataclasses.replace(
        LedgerCommitment.sign(
            owners[0].keystore.identity(),  # another owner's key, claiming hospital-2
            study_id=manifest.study_id,
            round=1,
            head=b"\x22" * 32,
            epsilon_micro=1,
        ),
        sender="hospital-2",
    )
    stale = LedgerCommitment.sign(
        owners[1].keystore.identity(),
        study_id=manifest.study_id,
        round=2,
        head=b"\x33" * 32,
        epsilon_micro=7,
    )
    raw = [honest.to_bytes(), forged.to_bytes(), stale.to_bytes(), b"garbage"]
    heads = AttestationCheck.for_manifest(manifest, ids, round=1, ledger_commitments=raw)
    by_owner = {o.party_id: o.payout_address for o in manifest.owners}
    assert heads.ledger_heads == {
        by_owner["hospital-1"]: (b"\x11" * 32, 5),
        by_owner["hospital-2"]: (bytes(32), 0),
    }
    assert LedgerCommitment.from_bytes(honest.to_bytes()) == honest


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    with running_anvil(fund=[Account.from_key(SPONSOR_KEY).address]) as url:
        yield url


def test_cli_over_rpc_catches_a_rehashed_ledger(anvil_url: str, tmp_path: Path) -> None:
    provider = RpcChain(anvil_url, private_keys=[SPONSOR_KEY])
    study = publish(provider, Account.from_key(SPONSOR_KEY).address, tmp_path)
    flags = ["--chain-url", anvil_url, "--contract", study.contract.address]
    result = runner.invoke(app, ["audit", str(study.run), *flags])
    assert result.exit_code == 0, result.output
    assert f"ledger heads and epsilons match contract {study.contract.address}" in " ".join(
        result.output.split()
    )
    rehash_touching(ledger_path(study.run, "hospital-2"), round=2)
    assert runner.invoke(app, ["audit", str(study.run)]).exit_code == 0
    result = runner.invoke(app, ["audit", str(study.run), *flags])
    assert result.exit_code == 1
    assert f"hospital-2 round 2: {HEAD_MISMATCH}" in " ".join(result.output.split())
    alone = runner.invoke(app, ["audit", str(study.run), "--chain-url", anvil_url])
    assert alone.exit_code == 2


# --------------------------------------------------------------------------- client-level |S|

CLIENT_DP = ClientDpTerms(clip_norm=0.5, noise_multiplier=0.8)
#: hospital-3 drops out of round 2: the contract finalizes 2 contributors there, not 3.
DROPOUT = {2: {"hospital-3"}}


def write_client_level_summary(study: Published, included: Mapping[int, list[str]]) -> None:
    """A ``summary.json`` whose client-level records are computed, as the coordinator does,
    from ``included`` (round -> owners in the released sum): honest when it is the chain's
    set, a consistent forgery (|S|, clients_included, noise and epsilons agree) otherwise."""
    m, terms = study.manifest.min_clients, CLIENT_DP
    zs: list[float] = []
    rounds: list[dict[str, Any]] = []
    for rnd in range(1, ROUNDS + 1):
        n = len(included[rnd])
        zs.append(terms.noise_multiplier * math.sqrt(n / m))
        level = {
            "clients": n,
            "noise_multiplier": zs[-1],
            "clip_norm": terms.clip_norm,
            "epsilon": client_level_epsilon(zs, delta=study.manifest.dp.delta),
            "delta": study.manifest.dp.delta,
        }
        rounds.append(
            {
                "round": rnd,
                "aggregate_hash": keccak(text=f"aggregate {rnd}").hex(),
                "clients_included": included[rnd],
                "finalized": True,
                "client_level": level,
            }
        )
    summary = {"rounds": rounds, "client_level": {"epsilon": rounds[-1]["client_level"]["epsilon"]}}
    (study.run / "summary.json").write_text(json.dumps(summary))


HONEST = {1: ["hospital-1", "hospital-2", "hospital-3"], 2: ["hospital-1", "hospital-2"]}
INFLATED = {1: HONEST[1], 2: HONEST[1]}  # round 2 claims hospital-3 too: more noise


def client_dp_study(provider: ChainProvider, sponsor: str, root: Path) -> Published:
    return publish(provider, sponsor, root, client_dp=CLIENT_DP, absent=DROPOUT)


def test_embedded_chain_catches_an_inflated_client_set(tmp_path: Path) -> None:
    provider = EmbeddedChain()
    study = client_dp_study(provider, provider.accounts()[0], tmp_path)
    assert [len(f.contributors) for f in study.contract.finalized_events()] == [3, 2]
    write_client_level_summary(study, HONEST)
    report = audit_run(study.run, contract=study.contract)
    assert report.ok, report.violations
    assert report.client_level is not None
    assert report.client_level["chain_checked"]
    assert [r["clients_chain"] for r in report.client_level["rounds"]] == [3, 2]

    write_client_level_summary(study, INFLATED)
    assert audit_run(study.run).ok  # without the chain the forgery is self-consistent
    report = audit_run(study.run, contract=study.contract)
    named = [v for v in report.violations if re.match(r"\S+ round \d+: ", v)]
    assert len(named) == 1, report.violations
    assert named[0].startswith(
        f"study round 2: {CLIENTS_CHAIN_MISMATCH}: the summary accounts 3 owners"
    )
    assert "the contract finalized 2 contributors" in named[0]
    # The auditor composes the chain's set: a larger epsilon than the forged summary's.
    rederived = report.client_level["rounds"][-1] if report.client_level else {}
    assert rederived["clients"] == 2
    assert rederived["epsilon_pld"] > rederived["epsilon_claimed"] + 0.01
    # ... so the final epsilon the summary claims is understated: the one other line.
    (other,) = [v for v in report.violations if v not in named]
    assert other.startswith("study: client-level epsilon: the summary's final")


def test_cli_over_rpc_catches_an_inflated_client_set(anvil_url: str, tmp_path: Path) -> None:
    provider = RpcChain(anvil_url, private_keys=[SPONSOR_KEY])
    study = client_dp_study(provider, Account.from_key(SPONSOR_KEY).address, tmp_path)
    flags = ["--chain-url", anvil_url, "--contract", study.contract.address]
    write_client_level_summary(study, HONEST)
    result = runner.invoke(app, ["audit", str(study.run), *flags])
    assert result.exit_code == 0, result.output
    assert "client set size of every round matches the contract's finalized round" in " ".join(
        result.output.split()
    )
    write_client_level_summary(study, INFLATED)
    assert runner.invoke(app, ["audit", str(study.run)]).exit_code == 0
    result = runner.invoke(app, ["audit", str(study.run), *flags])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert len(re.findall(r"violation: \S+ round \d+", text)) == 1, result.output
    assert f"violation: study round 2: {CLIENTS_CHAIN_MISMATCH}: the summary accounts 3" in text
