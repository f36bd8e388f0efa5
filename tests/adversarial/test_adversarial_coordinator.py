"""A malicious coordinator, scripted over the real Flower runtime and real member processes.

One study runs on Flower's simulation runtime with three hospitals (Ray workers), a committee
of three TLS member processes and the embedded chain. The coordinator is a subclass of
Cohort's own that holds the sponsor's and the coordinator's keys and, between the honest
steps, tries each attack of issue 5: a downgrade to plaintext, roster injection, a fake dealer,
lone client sets and ciphertexts, differencing within a round, a replayed round, rounds
beyond the manifest, a model name that names code, settling early, and a member restarted
mid-round. Each attempt's answer is recorded; each test checks one of them failed with a
named reason. Afterwards the honest study must still complete, the coordinator's transcript
must hold nothing from which an individual update could be computed, and no hospital's
ledger may pass its cap.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict

from cohort.aggregator.committee import Committee, LocalCommittee
from cohort.aggregator.control import OpenRoundBody
from cohort.aggregator.modes import CkksSpec, sign_dealt_context
from cohort.aggregator.quorum import QuorumDecision
from cohort.clients.privacy import PrivacyLedger
from cohort.crypto.ckks import CkksSecretContext, dealt_context_digest
from cohort.crypto.identity import Identity
from cohort.errors import CohortError
from cohort.federation import transcript, wire
from cohort.federation.config import SecureMode, StudyConfig
from cohort.federation.coordinator import Coordinator, Session, error_reason
from cohort.federation.manifest import SignedManifest
from cohort.federation.modes.ckks.coordinator import CkksCoordinator
from cohort.federation.simulate import TRANSCRIPT, run_study

pytestmark = pytest.mark.slow

ROUNDS = 3
FINDINGS: dict[str, Any] = {}
CONTEXT: dict[str, Any] = {}


def _ask(coordinator: Coordinator, node: int, kind: str, content: RecordDict) -> Any:
    """One message to one node over the real grid: the reply, or the error reason text."""
    message = Message(content=content, dst_node_id=node, message_type=kind, group_id="attack")
    (reply,) = coordinator.grid.send_and_receive([message], timeout=300)
    if reply.has_error():
        return error_reason(reply.error.reason or "")
    return reply


def _ask_all(coordinator: Coordinator, session: Session, kind: str, make: Any) -> dict[str, Any]:
    return {p: _ask(coordinator, n, kind, make()) for n, p in session.party_of.items()}


def _train(study_id: str, rnd: int, vector: np.ndarray) -> Any:
    return lambda: wire.put_vector(
        wire.TrainInstruction(study_id=study_id, round=rnd, weight_unit=10_000).to_record(),
        vector,
    )


class AttackMode(CkksCoordinator):
    """CKKS mode with the attacker's hooks around the aggregate step."""

    host: Attacker

    def aggregate(
        self,
        rnd: int,
        client_set: list[str],
        chosen: list[str],
        faulty: dict[str, str],
        ledger: Sequence[bytes],
    ) -> QuorumDecision | None:
        return self.host.attack_aggregate(self, rnd, client_set, chosen, faulty, ledger)


class Attacker(Coordinator):
    """Cohort's coordinator plus scripted attacks (it holds the sponsor's key too)."""

    def open_session(self) -> Session:
        try:
            self.contract.settle(sponsor=self.sponsor)
            FINDINGS["early_settle"] = "ACCEPTED"
        except CohortError as exc:
            FINDINGS["early_settle"] = str(exc)
        session = super().open_session()
        manifest = self.manifest
        sponsor = Identity.load(CONTEXT["out"] / "sponsor" / "sponsor.json")
        start = session.global_vec

        # Downgrade: the same study in plaintext mode, properly signed by the sponsor.
        plain = SignedManifest.sign(dataclasses.replace(manifest, secure=SecureMode.NONE), sponsor)
        FINDINGS["downgrade"] = _ask_all(
            self, session, wire.TRAIN, _train(plain.study_id, 1, start)
        )
        # Code execution: a model name that names a callable.
        code = SignedManifest.sign(dataclasses.replace(manifest, model="os:ftruncate"), sponsor)
        FINDINGS["model_code"] = _ask_all(
            self, session, wire.TRAIN, _train(code.study_id, 1, start)
        )
        # Rounds outside the manifest, at the hospitals and at the members.
        FINDINGS["rounds_beyond"] = {
            rnd: _ask_all(self, session, wire.TRAIN, _train(manifest.study_id, rnd, start))
            for rnd in (0, ROUNDS + 1)
        }
        FINDINGS["open_beyond"] = {
            rnd: {m: str(e) for m, e in session.members.open_round(rnd).items()}
            for rnd in (ROUNDS + 1, 2**64 - 1)
        }
        self._attack_keys(session)
        session.mode = AttackMode(self, session.members)
        return session

    def _attack_keys(self, session: Session) -> None:
        manifest = self.manifest
        node_of = {p: n for n, p in session.party_of.items()}
        dealer = manifest.key_dealer
        # Roster injection: ask the dealer again; whom does it box the key to?
        reply = _ask(
            self, node_of[dealer], wire.KEYGEN, wire.KeygenRequest(manifest.study_id).to_record()
        )
        dealt = wire.KeygenReply.from_record(reply.content)
        dealer_key = manifest.owner(dealer)
        assert dealer_key is not None
        opened = 0
        for box in dealt.boxes:
            try:
                self.identity.unbox_from(dealer_key.identity, box)
                opened += 1
            except CohortError:
                pass
        other = next(p for p in manifest.owner_ids if p != dealer)
        FINDINGS["roster"] = {
            "recipients": list(dealt.recipients),
            "opened": opened,
            "non_dealer": _ask(
                self, node_of[other], wire.KEYGEN, wire.KeygenRequest(manifest.study_id).to_record()
            ),
            "fingerprint": dealt.fingerprint,
        }
        # Fake dealer: the coordinator's own context, boxed and signed with its own key.
        fake = CkksSecretContext.generate()
        fingerprint = fake.public().fingerprint()
        target = manifest.owner(other)
        assert target is not None
        request = wire.InstallKeyRequest(
            study_id=manifest.study_id,
            box=self.identity.box_to(target.identity, fake.to_bytes()),
            fingerprint=fingerprint,
            dealer_signature=self.identity.sign(
                dealt_context_digest(manifest.study_id, fingerprint)
            ),
        )
        FINDINGS["fake_dealer"] = {
            "owner": other,
            "reply": _ask(self, node_of[other], wire.INSTALL_KEY, request.to_record()),
            "members": {
                m: str(e)
                for m, e in session.members.configure(
                    self.signed,
                    CkksSpec(
                        public_context=fake.public().to_bytes(),
                        dealer_signature=sign_dealt_context(
                            self.identity, manifest.study_id, fake.public().to_bytes()
                        ),
                    ),
                ).items()
            },
        }
        # A lone ciphertext handed to an owner for decryption.
        lone = wire.DecryptRequest(
            study_id=manifest.study_id,
            round=1,
            client_ids=(other,),
            aggregate=b"\x00" * 64,
            aggregate_hash=b"\x00" * 32,
            member_ids=(),
            member_signatures=(),
        )
        FINDINGS["lone_decrypt"] = _ask(self, node_of[other], wire.DECRYPT, lone.to_record())

    def play_round(self, session: Session, rnd: int) -> bool:
        if rnd == 1:
            CONTEXT["round1_model"] = session.global_vec.copy()
        if rnd == 2:  # replay round 1's instruction: no hospital trains twice
            study = self.manifest.study_id
            FINDINGS["replay_round"] = _ask_all(
                self, session, wire.TRAIN, _train(study, 1, CONTEXT["round1_model"] + 0.25)
            )
            FINDINGS["replay_same"] = _ask_all(
                self, session, wire.TRAIN, _train(study, 1, CONTEXT["round1_model"])
            )
        return super().play_round(session, rnd)

    def attack_aggregate(
        self,
        mode: CkksCoordinator,
        rnd: int,
        client_set: list[str],
        chosen: list[str],
        faulty: dict[str, str],
        ledger: Sequence[bytes],
    ) -> QuorumDecision | None:
        members = mode.members
        if rnd == 1:
            FINDINGS["lone_aggregate"] = _errors(members, rnd, client_set[:1], chosen)
        if rnd == 2:
            FINDINGS["restart"] = self._restart_member(members, rnd)
        decision = CkksCoordinator.aggregate(mode, rnd, client_set, chosen, faulty, ledger)
        if rnd == 1 and decision is not None:
            FINDINGS["differencing"] = self._difference(mode, rnd, client_set, decision)
        if rnd == 2 and decision is not None:
            FINDINGS["restart"]["agreeing"] = list(decision.agreeing)
        return decision

    def _restart_member(self, members: Committee, rnd: int) -> dict[str, Any]:
        """Capture a signed control call, crash-restart member-2, replay the call."""
        local: LocalCommittee = CONTEXT["committee"]
        signer = members._signer  # the coordinator's own signer: a genuine call
        captured = signer.sign(self.manifest.study_id, "member-2", OpenRoundBody(round=rnd))
        client = members.client("member-2")
        client.open_round(captured)  # re-opening the open round: accepted, a no-op
        local.restart("member-2", crash=True)
        try:
            client.open_round(captured)
            replay = "ACCEPTED"
        except CohortError as exc:
            replay = str(exc)
        return {"replay": replay, "status": members.status("member-2").received}

    def _difference(
        self, mode: CkksCoordinator, rnd: int, client_set: list[str], decision: QuorumDecision
    ) -> dict[str, Any]:
        smaller = client_set[:-1]
        members = mode.members
        member_errors = _errors(members, rnd, smaller, list(members.member_ids))
        node_of = {p: n for n, p in self._party_of().items()}
        # S's quorum-signed aggregate presented as an aggregate of S minus one owner.
        request = mode.decrypt_request(rnd, smaller, decision)
        owner = smaller[0]
        # The same, riding with the next round's training; and a reveal of the very round
        # it trains (out of order). Both refused before anything is decrypted or trained.
        model = CONTEXT["round1_model"]

        def fold(trains: int, reveal: wire.DecryptRequest) -> RecordDict:
            told = wire.TrainInstruction(
                study_id=self.manifest.study_id,
                round=trains,
                weight_unit=10_000,
                reveal_weight=1.0,
            )
            return wire.embed(wire.put_vector(told.to_record(), model), reveal)

        whole = mode.decrypt_request(rnd, client_set, decision)
        return {
            "members": member_errors,
            "decrypt": _ask(self, node_of[owner], wire.DECRYPT, request.to_record()),
            "reveal": _ask(self, node_of[owner], wire.TRAIN, fold(rnd + 1, request)),
            "reveal_same_round": _ask(self, node_of[owner], wire.TRAIN, fold(rnd, whole)),
        }

    def _party_of(self) -> dict[int, str]:
        return CONTEXT["party_of"]  # type: ignore[no-any-return]

    def _enroll(self, nodes: list[int]) -> dict[int, wire.EnrollReply]:
        owners = super()._enroll(nodes)
        CONTEXT["party_of"] = {n: o.party_id for n, o in owners.items()}
        return owners


def _errors(members: Committee, rnd: int, ids: Sequence[str], who: Sequence[str]) -> dict[str, str]:
    out = {}
    for member_id in who:
        try:
            members.aggregate(member_id, rnd, ids)
            out[member_id] = "ACCEPTED"
        except CohortError as exc:
            out[member_id] = str(exc)
    return out


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("attack")
    CONTEXT["out"] = out
    config = StudyConfig(clients=3, rounds=ROUNDS, committee=3, quorum=2, seed=21)
    with LocalCommittee(3, workdir=tmp_path_factory.mktemp("committee"), tls=True) as local:
        CONTEXT["committee"] = local
        summary = run_study(config, out, committee=local, coordinator_class=Attacker)
    yield {"summary": summary, "out": out, "findings": dict(FINDINGS)}
    FINDINGS.clear()
    CONTEXT.clear()


def _reasons(found: dict[str, Any]) -> list[str]:
    assert found, "attack not attempted"
    assert all(isinstance(v, str) for v in found.values()), found  # every answer is an error
    return list(found.values())


def test_downgrade_to_plaintext_is_refused(attack: dict[str, Any]) -> None:
    for reason in _reasons(attack["findings"]["downgrade"]):
        assert "VerificationError" in reason
        assert "not approved by the operator" in reason


def test_roster_injection_gets_no_key(attack: dict[str, Any]) -> None:
    found = attack["findings"]["roster"]
    assert sorted(found["recipients"]) == ["hospital-2", "hospital-3"]
    assert found["opened"] == 0
    assert "names 'hospital-1' as key dealer" in found["non_dealer"]


def test_fake_dealer_key_is_refused(attack: dict[str, Any]) -> None:
    found = attack["findings"]["fake_dealer"]
    assert "does not open" in found["reply"]
    assert set(found["members"]) == {"member-1", "member-2", "member-3"}
    for reason in found["members"].values():
        assert reason.split(": ")[1].startswith(("setup_conflict", "bad_dealer_signature")), reason
    # The owner still holds the real dealer's key, not the coordinator's.
    owner = attack["out"] / "hospitals" / found["owner"] / "keystore"
    held = CkksSecretContext.from_bytes(next(owner.glob("ckks-*.bin")).read_bytes())
    assert held.public().fingerprint() == attack["findings"]["roster"]["fingerprint"]


def test_lone_sets_and_ciphertexts_are_refused(attack: dict[str, Any]) -> None:
    found = attack["findings"]
    assert "at least 2 required" in found["lone_decrypt"]
    for reason in _reasons(found["lone_aggregate"]):
        assert "client_set_too_small" in reason


def test_differencing_within_a_round_is_refused(attack: dict[str, Any]) -> None:
    found = attack["findings"]["differencing"]
    for reason in _reasons(found["members"]):
        assert "client_set_changed" in reason
    assert "VerificationError" in found["decrypt"]
    assert "signature does not verify" in found["decrypt"]
    assert "VerificationError" in found["reveal"]  # through the next round's training too
    assert "signature does not verify" in found["reveal"]
    assert "only round 0 rides with it" in found["reveal_same_round"]


def _receipts(found: dict[str, Any]) -> dict[str, wire.TrainReceipt]:
    assert found, "attack not attempted"
    assert not any(isinstance(v, str) for v in found.values()), found  # receipts, not errors
    return {p: wire.TrainReceipt.from_record(r.content) for p, r in found.items()}


def test_replayed_round_spends_no_budget(attack: dict[str, Any]) -> None:
    """Round 1 asked again: on another global model it is declined; on the very model the
    owners trained it on they send their stored receipt back. Nobody trains it twice."""
    for receipt in _receipts(attack["findings"]["replay_round"]).values():
        assert receipt.status == "declined"
        assert "already trained on another global model" in receipt.reason
    for receipt in _receipts(attack["findings"]["replay_same"]).values():
        assert receipt.status == "ok"
        assert receipt.delivered  # the member that took the round-1 upload
    for ledger in (attack["out"] / "hospitals").glob("*/ledger-*.json"):
        rounds = [e["round"] for e in json.loads(ledger.read_text())["entries"]]
        assert rounds == list(range(1, ROUNDS + 1)), (ledger, rounds)


def test_rounds_beyond_the_manifest_are_refused(attack: dict[str, Any]) -> None:
    for found in attack["findings"]["rounds_beyond"].values():
        for reason in _reasons(found):
            assert f"rounds 1..{ROUNDS}" in reason
    for found in attack["findings"]["open_beyond"].values():
        assert set(found) == {"member-1", "member-2", "member-3"}
        for reason in found.values():
            assert "round_out_of_range" in reason
    # ... and the members were not locked out: every honest round opened afterwards.
    assert len(attack["summary"]["rounds"]) == ROUNDS


def test_model_code_is_never_imported(attack: dict[str, Any]) -> None:
    for reason in _reasons(attack["findings"]["model_code"]):
        assert "not approved by the operator" in reason


def test_early_settlement_is_refused(attack: dict[str, Any]) -> None:
    assert "StudyNotFinished" in attack["findings"]["early_settle"]


def test_member_restart_mid_round_changes_nothing(attack: dict[str, Any]) -> None:
    found = attack["findings"]["restart"]
    assert "stale_counter" in found["replay"]
    assert len(found["status"]) == 3  # its accepted uploads survived the crash
    assert "member-2" in found["agreeing"]
    assert attack["summary"]["rounds"][1]["faulty_members"] == {}


def test_transcript_holds_no_individual_update(attack: dict[str, Any]) -> None:
    inbound = transcript.read(attack["out"] / TRANSCRIPT)
    assert inbound
    errors = [m for m in inbound if "error" in m]
    assert errors  # the refusals of every attack above came back as error replies ...
    assert all("arrays" not in m for m in errors)  # ... carrying nothing but a reason
    replies = [m for m in inbound if "error" not in m]
    with_arrays = {m["message_type"] for m in replies if m["arrays"]}
    # only decryptions of quorum-signed aggregates: decryption replies, and train replies
    # that return a revealed sum beside their signed decryption
    assert with_arrays == {"query.decrypt", "train"}
    for message in replies:
        if message["message_type"] == "train":
            sizes = message["configs"].get("cohort", {})
            assert not message["arrays"] or "reveal.signature" in sizes, message
            receipt = {k: v for k, v in sizes.items() if not k.startswith("reveal.")}
            assert sum(receipt.values()) < 1024


def test_no_ledger_passes_its_cap(attack: dict[str, Any]) -> None:
    ledgers = sorted((attack["out"] / "hospitals").glob("*/ledger-*.json"))
    assert len(ledgers) == 3
    for path in ledgers:
        report = PrivacyLedger.verify(path)
        assert report.ok, report.violations
        assert report.epsilon_recomputed <= 3.0 + 1e-9


def test_honest_study_completes_afterwards(attack: dict[str, Any]) -> None:
    summary = attack["summary"]
    assert [r["round"] for r in summary["rounds"]] == list(range(1, ROUNDS + 1))
    assert all(r["finalized"] and r["aggregate_hash"] for r in summary["rounds"])
    # every owner of S decrypted each sum that rode with the next round; two the last one
    assert [len(r["decryptors"]) for r in summary["rounds"]] == [3] * (ROUNDS - 1) + [2]
    assert summary["chain"]["settled"]
    assert summary["stopped"] == ""
    assert summary["rounds"][-1]["accuracy"] > 0.85
