"""End-to-end: two real 2-round studies on Flower's simulation runtime.

One study runs in CKKS mode against a committee of three in-process gRPC members, where

* ``member-1`` is honest, but an attacker on the wire replays each upload it receives (from
  a hospital, or as a copy from another member) and also delivers a forged and an unsigned
  copy of it;
* ``member-3`` returns a tampered (validly signed) aggregate.

The other runs the same study (same seed, same hospitals) in plaintext mode. Hospital 3 sets
its own epsilon cap below the study's budget, so it declines round 2 in both. The tests check
that the rounds complete anyway, the tamperer is named, the attacks are rejected with
reasons, the coordinator never received an update, and the CKKS model is *bit-identical* to
the plaintext one (the encrypted aggregate equals the plaintext oracle exactly).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cohort.aggregator.control import SignedControl
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import (
    AggregateResult,
    CommitteeMember,
    Replication,
    Verdict,
    aggregate_result_digest,
)
from cohort.aggregator.peers import PeerFetcher
from cohort.aggregator.replication import FetchRequest
from cohort.aggregator.service import serve
from cohort.bounties.chain import EmbeddedChain
from cohort.bounties.study import StudyContract
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.upload import CommitteeUpload
from cohort.federation import transcript
from cohort.federation.approval import Role, approve
from cohort.federation.audit import audit_run
from cohort.federation.certs import load_cert_key, write_study_certs
from cohort.federation.config import SecureMode, StudyConfig
from cohort.federation.manifest import CommitteeEntry, SignedManifest
from cohort.federation.simulate import TRANSCRIPT, hospital_settings, run_study

pytestmark = pytest.mark.slow

CAPPED = "hospital-3"
CAP = 2.6  # below the 3.0 study budget: enough for round 1, not for round 2


class WireAttacker(CommitteeMember):
    """An honest member, plus an attacker who replays and forges every upload it sees: the
    ones hospitals send it and the copies it fetches from the other members (each sealed to
    this member, so each one a valid upload for it)."""

    attacks: list[tuple[str, Verdict]]

    def __init__(self, keys: MemberKeys, **kwargs: Any) -> None:
        self._peers = PeerFetcher()
        self._copies: list[bytes] = []

        def fetch(manifest: Any, entry: Any, request: FetchRequest) -> bytes:
            copy = self._peers(manifest, entry, request)
            self._copies.append(copy)
            return copy

        super().__init__(keys, fetcher=fetch, **kwargs)

    def close(self) -> None:
        self._peers.close()
        super().close()

    def accept(self, data: bytes) -> Verdict:
        verdict = super().accept(data)
        if verdict.accepted:
            self._attack(data)
        return verdict

    def replicate(self, control: SignedControl) -> Replication:
        replication = super().replicate(control)
        copies, self._copies = self._copies, []
        for copy in copies:
            self._attack(copy)
        return replication

    def _attack(self, data: bytes) -> None:
        upload = CommitteeUpload.from_bytes(data)
        # A fresh nonce each, so they get past the replay check to the signature check.
        forged_sig = bytes([upload.signature[0] ^ 1]) + upload.signature[1:]
        forged = dataclasses.replace(upload, signature=forged_sig, nonce=os.urandom(16))
        unsigned = dataclasses.replace(upload, signature=bytes(64), nonce=os.urandom(16))
        self.attacks.append(("replayed", CommitteeMember.accept(self, data)))
        self.attacks.append(("forged", CommitteeMember.accept(self, forged.to_bytes())))
        self.attacks.append(("unsigned", CommitteeMember.accept(self, unsigned.to_bytes())))


class Tamperer(CommitteeMember):
    """Returns a different aggregate, properly signed: only the quorum can catch it."""

    def aggregate(self, control: SignedControl) -> AggregateResult:
        result = super().aggregate(control)
        tampered = result.aggregate[:-1] + bytes([result.aggregate[-1] ^ 0xFF])
        digest = tagged_hash(Tag.AGGREGATE, tampered)
        signature = self._keys.identity.sign(
            aggregate_result_digest(
                study_id=result.study_id,
                round=result.round,
                client_ids=result.client_ids,
                aggregate_hash=digest,
            )
        )
        return dataclasses.replace(
            result, aggregate=tampered, aggregate_hash=digest, signature=signature
        )


class InProcessCommittee:
    """Three members served over TLS from this process (so the test can subclass them)."""

    def __init__(self, root: Path) -> None:
        ids = ["member-1", "member-2", "member-3"]
        fingerprints = write_study_certs(root / "certs", members=ids)
        self._ca = (root / "certs" / "ca.pem").read_text()
        self.members: list[CommitteeMember] = []
        self.servers: list[Any] = []
        self._entries: list[CommitteeEntry] = []
        self._keys: list[tuple[MemberKeys, Path]] = []
        for member_id, cls in zip(ids, (WireAttacker, CommitteeMember, Tamperer), strict=True):
            keys = MemberKeys.generate(member_id)
            cert = load_cert_key(
                root / "certs" / f"{member_id}.pem", root / "certs" / f"{member_id}-key.pem"
            )
            member = cls(keys, workdir=root / member_id)
            if isinstance(member, WireAttacker):
                member.attacks = []
            server, port = serve(member, tls=cert)
            self.members.append(member)
            self.servers.append(server)
            self._entries.append(
                CommitteeEntry(
                    member_id=member_id,
                    sign_key=keys.identity.public.sign_key,
                    box_key=keys.identity.public.box_key,
                    eth_address=keys.eth_address,
                    endpoint=f"127.0.0.1:{port}",
                    tls_fingerprint=bytes.fromhex(fingerprints[member_id]),
                )
            )
            self._keys.append((keys, root / member_id))

    def entries(self) -> list[CommitteeEntry]:
        return list(self._entries)

    @property
    def ca_pem(self) -> str:
        return self._ca

    def approve(self, signed: SignedManifest) -> None:
        for keys, workdir in self._keys:
            approve(signed, workdir=workdir, identity=keys.identity, role=Role.MEMBER)

    def stop(self) -> None:
        for server in self.servers:
            server.stop(grace=None)


@pytest.fixture(scope="module")
def committee(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessCommittee]:
    handle = InProcessCommittee(tmp_path_factory.mktemp("committee"))
    yield handle
    handle.stop()


def _config(secure: SecureMode) -> StudyConfig:
    return StudyConfig(clients=3, rounds=2, committee=3, quorum=2, secure=secure, seed=11)


def _settings(config: StudyConfig, out: Path) -> list[Any]:
    capped = dataclasses.replace(hospital_settings(config, out)[0].policy, epsilon_cap=CAP)
    return [
        dataclasses.replace(s, policy=capped) if s.party_id == CAPPED else s
        for s in hospital_settings(config, out)
    ]


@pytest.fixture(scope="module")
def studies(
    tmp_path_factory: pytest.TempPathFactory, committee: InProcessCommittee
) -> dict[str, Any]:
    ckks_cfg, none_cfg = _config(SecureMode.CKKS), _config(SecureMode.NONE)
    ckks_out = tmp_path_factory.mktemp("ckks")
    none_out = tmp_path_factory.mktemp("none")
    chain = EmbeddedChain()
    ckks = run_study(
        ckks_cfg,
        ckks_out,
        committee=committee,
        settings=_settings(ckks_cfg, ckks_out),
        chain=chain,
    )
    none = run_study(none_cfg, none_out, settings=_settings(none_cfg, none_out))
    attacker = committee.members[0]
    assert isinstance(attacker, WireAttacker)
    return {
        "ckks": ckks,
        "none": none,
        "ckks_out": ckks_out,
        "none_out": none_out,
        "attacker": attacker,
        "chain": chain,
    }


def test_ckks_rounds_complete_and_are_finalized_on_chain(studies: dict[str, Any]) -> None:
    summary = studies["ckks"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all(r["finalized"] for r in summary["rounds"])
    assert summary["chain"]["finalized_rounds"] == 2
    assert summary["rounds"][0]["clients_included"] == ["hospital-1", "hospital-2", "hospital-3"]
    assert summary["rounds"][-1]["accuracy"] > 0.85
    on_disk = json.loads((studies["ckks_out"] / "summary.json").read_text())
    assert on_disk["rounds"] == summary["rounds"]


def test_each_finalized_round_puts_the_hospitals_ledger_heads_on_chain(
    studies: dict[str, Any],
) -> None:
    out = studies["ckks_out"]
    manifest = SignedManifest.load(out / "manifest.json").manifest
    contract = StudyContract.at(studies["chain"], manifest.contract)
    events = contract.ledger_head_events()
    # round 1: all three; round 2: hospital-3 declined at its own cap
    assert [e.round for e in events] == [1, 1, 1, 2, 2]
    assert all(e.head != bytes(32) and e.epsilon_micro > 0 for e in events)
    report = audit_run(out, contract=contract)
    assert report.ok, report.violations
    assert report.chain_contract == contract.address


def test_tampering_member_is_outvoted_and_named(studies: dict[str, Any]) -> None:
    for record in studies["ckks"]["rounds"]:
        assert set(record["faulty_members"]) == {"member-3"}, record["faulty_members"]
        assert record["aggregate_hash"]


def test_replayed_forged_and_unsigned_envelopes_are_rejected(studies: dict[str, Any]) -> None:
    attacks = studies["attacker"].attacks
    kinds = {kind for kind, _ in attacks}
    assert kinds == {"replayed", "forged", "unsigned"}
    for kind, verdict in attacks:
        assert not verdict.accepted, kind
        if kind == "replayed":
            assert verdict.reason.value in {"duplicate_sender", "replayed_nonce"}
        else:
            assert verdict.reason.value == "bad_signature", (kind, verdict)
        assert verdict.detail
    # Every honest upload of both rounds reached member-1, straight or as a copy (3 + 2).
    assert len(attacks) == 3 * 5


def test_budget_cap_declines_round_two_and_the_round_goes_on(studies: dict[str, Any]) -> None:
    for mode in ("ckks", "none"):
        second = studies[mode]["rounds"][1]
        assert second["declined"] == [CAPPED]
        assert second["clients_included"] == ["hospital-1", "hospital-2"]
        capped = next(c for c in studies[mode]["clients"] if c["id"] == CAPPED)
        assert capped["epsilon_spent"] <= CAP
        others = [c["epsilon_spent"] for c in studies[mode]["clients"] if c["id"] != CAPPED]
        assert all(2.5 < e <= 3.0 for e in others), others


def test_ckks_model_is_bit_identical_to_plaintext_fedavg(studies: dict[str, Any]) -> None:
    ckks_rounds, none_rounds = studies["ckks"]["rounds"], studies["none"]["rounds"]
    for a, b in zip(ckks_rounds, none_rounds, strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["loss"] == b["loss"]
    ckks_model = np.load(studies["ckks_out"] / "model.npy")
    none_model = np.load(studies["none_out"] / "model.npy")
    np.testing.assert_array_equal(ckks_model, none_model)


def test_coordinator_never_received_an_update(studies: dict[str, Any]) -> None:
    inbound = transcript.read(studies["ckks_out"] / TRANSCRIPT)
    trains = [m for m in inbound if m["message_type"] == "train"]
    assert len(trains) == 3 + 3
    model_size = np.load(studies["ckks_out"] / "model.npy").size
    revealing = []
    for message in trains:
        sizes = message["configs"]["cohort"]
        assert sizes["payload_hash"] in (0, 32)
        receipt = {k: v for k, v in sizes.items() if not k.startswith("reveal.")}
        # ids, status, reason text and numbers: far below one copy of the model
        assert sum(receipt.values()) < min(1024, model_size), message
        if message["group_id"] == "round-1":
            assert not set(sizes) - set(receipt), message  # nothing to reveal yet
        else:  # round 1's sum rides with round 2: every owner of S signs its decryption
            assert sizes["reveal.plain_hash"] == 32, message
            assert sizes["reveal.signature"] == 64, message
        if message["arrays"]:
            # a vector in a train reply is only ever the revealed sum, beside its signature
            assert message["arrays"] == {"arrays": {"flat": model_size}}, message
            assert "reveal.signature" in sizes, message
            revealing.append(message["group_id"])
    assert revealing == ["round-2"]  # one owner returns the sum, the others its hash
    arrays = [m for m in inbound if m["arrays"]]
    assert {m["message_type"] for m in arrays} == {"query.decrypt", "train"}
    # The check can fail: in plaintext mode the updates do reach the coordinator.
    plain = transcript.read(studies["none_out"] / TRANSCRIPT)
    assert any(m["message_type"] == "train" and m["arrays"] for m in plain)


def test_privacy_ledgers_record_every_round(studies: dict[str, Any]) -> None:
    root = studies["ckks_out"] / "hospitals"
    ledgers = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/ledger-*.json")}
    assert set(ledgers) == {"hospital-1", "hospital-2", "hospital-3"}
    assert [e["round"] for e in ledgers["hospital-1"]["entries"]] == [1, 2]
    assert [e["round"] for e in ledgers[CAPPED]["entries"]] == [1]


def test_each_round_lists_its_message_exchanges_in_order(studies: dict[str, Any]) -> None:
    """rounds[].exchanges: the train message to every hospital (the one that declines round 2
    answers too), then in CKKS the decryption requests of the last round only (round 1's sum
    rides with round 2's train messages), each answered once, on one clock."""
    for mode, decrypts in (("ckks", True), ("none", False)):
        last = studies[mode]["rounds"][-1]["round"]
        for r in studies[mode]["rounds"]:
            exchanges = r["exchanges"]
            kinds = [e["type"] for e in exchanges]
            assert kinds[0] == "train", kinds
            wanted = {"query.decrypt"} if decrypts and r["round"] == last else set()
            assert set(kinds[1:]) == wanted, kinds
            assert len(exchanges[0]["replies"]) == 3
            answered = [x["message"] for e in exchanges for x in e["replies"]]
            assert len(set(answered)) == len(answered)  # each message answered once
            for before, after in itertools.pairwise(exchanges):
                assert before["collected_at"] <= after["sent_at"]
            for e in exchanges:
                for x in e["replies"]:  # times rounded to the millisecond
                    assert e["sent_at"] - 0.001 <= x["replied_at"] <= e["collected_at"] + 0.001
