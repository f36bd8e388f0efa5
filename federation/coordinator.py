"""The coordinator's side of a study (run by the sponsor inside Cohort's ServerApp).

The coordinator works from the signed study manifest that every data owner and committee
member approved; its messages carry the round's work (study id, round number, the global
model, client sets), never terms. One study, step by step (see docs/architecture.md):

1. enrol the data owners of the manifest's roster that connected (which node is which owner,
   example counts);
2. CKKS mode: the manifest's key dealer creates the CKKS context and boxes its secret part to
   the roster; the committee gets the public context with the dealer's signature, inside a
   Configure call signed with the coordinator key (tolerating members that are down while a
   quorum remains);
3. each round: open the round at the members (stop the study with a reason, before any
   hospital trains, if fewer than a quorum opened it), send the global model, collect
   receipts (never updates), have the members copy each upload from the member that took
   it, pick the client set S the committee can aggregate, collect the
   members' signed aggregates, accept on quorum, relay the attestations on-chain, have one
   owner of S decrypt and a second one check the decryption, apply the mean update,
   evaluate;
4. settle the bounty by accepted contributions (the contract allows it only after the final
   round or the deadline) and release each owner's payout.

The coordinator never holds a CKKS secret key and never receives an individual update in
any form; :mod:`cohort.federation.transcript` records what it did receive.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from cohort.aggregator.committee import Committee
from cohort.aggregator.control import ControlSigner
from cohort.aggregator.member import AggregateResult
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.quorum import AttestationCheck, QuorumDecision, QuorumNotReached
from cohort.aggregator.replication import UploadReceipt, copy_faults, holders
from cohort.bounties.study import StudyContract
from cohort.clients.client_dp import ClientLevelEvent, client_level_epsilon
from cohort.clients.data import Dataset
from cohort.clients.model import build_model, evaluate, get_flat, set_flat
from cohort.crypto.ckks import dealt_context_digest
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, verify_signature
from cohort.errors import BadInputError, CohortError, ProtocolAbort, VerificationError
from cohort.federation import wire
from cohort.federation.manifest import Manifest, SecureMode, SignedManifest
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.federation.coordinator_state import CoordinatorState, StateStore

log = get_logger(__name__)

REPLY_TIMEOUT_S = 600.0
NODE_WAIT_S = 120.0


@dataclass
class RoundRecord:
    round: int
    accuracy: float
    loss: float
    aggregate_hash: str
    clients_included: list[str]
    declined: list[str]
    failed: list[str]
    faulty_members: dict[str, str]
    finalized: bool
    max_epsilon: float
    seconds: float
    reason: str = ""  # why the round was skipped, "" when it completed
    decryptors: list[str] = field(default_factory=list)
    faulty_decryptors: list[str] = field(default_factory=list)
    #: Client-level DP after this round (:func:`client_level_record`); None without it.
    client_level: dict[str, Any] | None = None


@dataclass
class ClientRecord:
    id: str
    payout_address: str
    examples: int
    epsilon_spent: float = 0.0
    rounds_included: int = 0
    paid_wei: int = 0


@dataclass
class StudyOutcome:
    """What the coordinator learned; turned into summary.json by the caller."""

    study_id: str = ""
    rounds: list[RoundRecord] = field(default_factory=list)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    contract: str = ""
    chain: str = ""
    bounty_wei: int = 0
    total_paid_wei: int = 0
    finalized_rounds: int = 0
    settled: bool = False
    stopped: str = ""  # why the study stopped early, "" when every round ran
    final_model: np.ndarray | None = None
    node_errors: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Session:
    """What the coordinator holds between rounds of one study."""

    owners: dict[int, wire.EnrollReply]
    party_of: dict[int, str]
    model: torch.nn.Module
    global_vec: np.ndarray
    members: Committee


@dataclass
class Coordinator:
    """Drives one study over a Flower grid. Run by the coordinator (sponsor).

    ``identity`` holds the coordinator signing key the manifest names; ``registry`` is the
    sponsor's own model registry (as a hospital's, never taken from a message).
    """

    signed: SignedManifest
    identity: Identity
    grid: Grid
    test_set: Dataset
    contract: StudyContract
    sponsor: str
    registry: Mapping[str, str] = field(default_factory=dict)
    on_round: Callable[[RoundRecord], None] | None = None
    state: StateStore | None = None
    outcome: StudyOutcome = field(default_factory=StudyOutcome)
    _weight_unit: int = field(default=1, repr=False)
    _released: int = field(default=0, repr=False)  # owners in this round's released sum

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    # ------------------------------------------------------------------ messaging

    def _send(
        self,
        node_ids: Sequence[int],
        message_type: str,
        contents: Sequence[RecordDict],
        *,
        group: str,
    ) -> dict[int, Message]:
        messages = [
            Message(content=c, dst_node_id=n, message_type=message_type, group_id=group)
            for n, c in zip(node_ids, contents, strict=True)
        ]
        replies = self.grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S)
        by_node: dict[int, Message] = {}
        for reply in replies:
            src = reply.metadata.src_node_id
            if reply.has_error():
                reason = error_reason(reply.error.reason or "no reason given")
                log.warning(
                    "node replied with an error",
                    extra=fields(node=src, type=message_type, reason=reason),
                )
                self.outcome.node_errors.append(
                    {"node": str(src), "message_type": message_type, "reason": reason}
                )
                continue
            by_node[src] = reply
        return by_node

    def _wait_for_nodes(self) -> list[int]:
        wanted = len(self.manifest.owners)
        deadline = time.monotonic() + NODE_WAIT_S
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                return nodes
            if time.monotonic() > deadline:
                if len(nodes) >= self.manifest.min_clients:
                    log.warning("not every data owner connected", extra=fields(nodes=len(nodes)))
                    return nodes
                raise ProtocolAbort(f"only {len(nodes)} of {wanted} data owners connected")
            time.sleep(0.5)

    # ------------------------------------------------------------------ the study

    def run(self) -> StudyOutcome:
        """The whole study: :meth:`open_session`, every round, settlement.

        With a ``state`` store the coordinator resumes after the last round it finished
        (see :mod:`cohort.federation.coordinator_state`) and records each round as it goes.
        """
        session = self.open_session()
        state = self._resume(session)
        try:
            for rnd in range(state.next_round if state else 1, self.manifest.rounds + 1):
                if state is not None and self.state is not None:
                    state.opened_round = rnd
                    self.state.save(state)
                if not self.play_round(session, rnd):
                    break
                if state is not None:
                    self._record(state, session, rnd)
        finally:
            session.members.close()
        self._settle()
        self.outcome.final_model = session.global_vec
        return self.outcome

    def _resume(self, session: Session) -> CoordinatorState | None:
        from cohort.federation.coordinator_state import CoordinatorState

        if self.state is None:
            return None
        study_id = self.manifest.study_id
        state = self.state.load(study_id) or CoordinatorState(study_id)
        if state.model is not None:
            session.global_vec = state.model.astype(np.float32)
            set_flat(session.model, session.global_vec)
        state.restore(self.outcome)
        if state.opened_round > state.finished_round:
            # Played again from the same global model: owners that trained it answer with
            # their stored receipt and spend nothing, members return what they signed.
            log.warning("resuming an interrupted round", extra=fields(round=state.opened_round))
        if state.finished_round:
            log.info("study resumed", extra=fields(after_round=state.finished_round))
        return state

    def _record(self, state: CoordinatorState, session: Session, rnd: int) -> None:
        state.finished_round = rnd
        state.rounds = list(self.outcome.rounds)
        state.clients = dict(self.outcome.clients)
        state.node_errors = list(self.outcome.node_errors)
        state.model = session.global_vec
        assert self.state is not None
        self.state.save(state)

    def open_session(self) -> Session:
        """Enrol the owners, build the initial model, deal keys and configure the committee."""
        manifest = self.manifest
        self.outcome.study_id = manifest.study_id
        self.outcome.contract = self.contract.address
        self.outcome.chain = self.contract.provider.name
        self.outcome.bounty_wei = manifest.bounty_wei
        owners = self._enroll(self._wait_for_nodes())
        torch.manual_seed(manifest.init_seed)
        model = build_model(
            manifest.model,
            in_features=manifest.features,
            num_classes=manifest.num_classes,
            registry=self.registry,
        )
        global_vec = get_flat(model).astype(np.float32)
        if global_vec.shape[0] != manifest.update_length:
            raise ProtocolAbort(
                f"model {manifest.model!r} has {global_vec.shape[0]} parameters, the manifest "
                f"says {manifest.update_length}"
            )
        members = Committee(manifest, ControlSigner(self.identity))
        try:
            if manifest.secure is SecureMode.CKKS:
                setup = self._deal_keys(owners)
                self._require_quorum(members.configure(self.signed, setup), "configured the study")
        except BaseException:
            members.close()
            raise
        party_of = {n: owners[n].party_id for n in owners}
        return Session(owners, party_of, model, global_vec, members)

    def play_round(self, session: Session, rnd: int) -> bool:
        """Run round ``rnd``; False when the study had to stop (reason in the outcome)."""
        started = time.perf_counter()
        self._released = 0
        try:
            session.global_vec, record = self._round(
                rnd,
                session.party_of,
                session.owners,
                session.global_vec,
                session.model,
                session.members,
            )
        except ProtocolAbort as exc:
            self.outcome.stopped = f"round {rnd}: {exc}"
            log.warning("study stopped", extra=fields(round=rnd, reason=str(exc)))
            return False
        record.seconds = round(time.perf_counter() - started, 3)
        record.client_level = client_level_record(
            self.manifest, self.outcome.rounds, rnd, released=self._released
        )
        self.outcome.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)
        return True

    def _require_quorum(self, errors: Mapping[str, CohortError], what: str) -> None:
        """Go on while a quorum of members did ``what``; otherwise stop with the reasons."""
        manifest = self.manifest
        for member_id, exc in errors.items():
            log.warning("committee member failed", extra=fields(member=member_id, reason=str(exc)))
        done = len(manifest.committee) - len(errors)
        if done < manifest.quorum:
            reasons = "; ".join(f"{m}: {e}" for m, e in sorted(errors.items()))
            raise ProtocolAbort(
                f"only {done} of {len(manifest.committee)} committee members {what} "
                f"(quorum {manifest.quorum}): {reasons}"
            )

    def _enroll(self, nodes: list[int]) -> dict[int, wire.EnrollReply]:
        manifest = self.manifest
        request = wire.EnrollRequest(study_id=manifest.study_id).to_record()
        replies = self._send(nodes, wire.ENROLL, [request] * len(nodes), group="enroll")
        owners: dict[int, wire.EnrollReply] = {}
        seen: set[str] = set()
        for node, reply in replies.items():
            try:
                enrolled = wire.EnrollReply.from_record(reply.content)
                if manifest.owner(enrolled.party_id) is None:
                    raise BadInputError(f"{enrolled.party_id!r} is not in the manifest's roster")
                if enrolled.party_id in seen:
                    raise BadInputError(f"{enrolled.party_id!r} enrolled from two nodes")
                if enrolled.features != manifest.features or enrolled.examples < 1:
                    raise BadInputError(
                        f"{enrolled.party_id!r} reports {enrolled.features} features and "
                        f"{enrolled.examples} examples"
                    )
            except BadInputError as exc:
                log.warning("enrolment rejected", extra=fields(node=node, reason=str(exc)))
                continue
            seen.add(enrolled.party_id)
            owners[node] = enrolled
        if len(owners) < manifest.min_clients:
            raise ProtocolAbort(
                f"{len(owners)} data owners enrolled, at least {manifest.min_clients} needed"
            )
        self._weight_unit = max(o.examples for o in owners.values())
        for o in owners.values():
            entry = manifest.owner(o.party_id)
            assert entry is not None
            self.outcome.clients[o.party_id] = ClientRecord(
                id=o.party_id, payout_address=entry.payout_address, examples=o.examples
            )
        return dict(sorted(owners.items(), key=lambda kv: kv[1].party_id))

    def _deal_keys(self, owners: dict[int, wire.EnrollReply]) -> CkksSpec:
        """Have the manifest's key dealer deal the CKKS context; return the members' setup."""
        manifest = self.manifest
        node_of = {o.party_id: n for n, o in owners.items()}
        dealer_node = node_of.get(manifest.key_dealer)
        if dealer_node is None:
            raise ProtocolAbort(f"key dealer {manifest.key_dealer!r} did not enrol")
        request = wire.KeygenRequest(study_id=manifest.study_id)
        replies = self._send([dealer_node], wire.KEYGEN, [request.to_record()], group="keygen")
        if dealer_node not in replies:
            raise ProtocolAbort(f"key dealer {manifest.key_dealer} did not answer")
        dealt = wire.KeygenReply.from_record(replies[dealer_node].content)
        dealer = manifest.owner(manifest.key_dealer)
        assert dealer is not None
        verify_signature(
            dealer.identity,
            dealt_context_digest(manifest.study_id, dealt.fingerprint),
            dealt.dealer_signature,
        )
        targets, contents = [], []
        for recipient, box in zip(dealt.recipients, dealt.boxes, strict=True):
            if recipient not in node_of:
                continue  # a roster owner that did not connect: it takes no part
            targets.append(node_of[recipient])
            contents.append(
                wire.InstallKeyRequest(
                    study_id=manifest.study_id,
                    box=box,
                    fingerprint=dealt.fingerprint,
                    dealer_signature=dealt.dealer_signature,
                ).to_record()
            )
        installed = self._send(targets, wire.INSTALL_KEY, contents, group="install_key")
        for node in targets:
            reply = installed.get(node)
            ok = (
                reply is not None
                and wire.InstallKeyReply.from_record(reply.content).fingerprint == dealt.fingerprint
            )
            if not ok:
                log.warning("key installation failed", extra=fields(party=owners[node].party_id))
        return CkksSpec(
            public_context=dealt.public_context, dealer_signature=dealt.dealer_signature
        )

    def _round(
        self,
        rnd: int,
        party_of: dict[int, str],
        owners: dict[int, wire.EnrollReply],
        global_vec: np.ndarray,
        model: torch.nn.Module,
        members: Committee,
    ) -> tuple[np.ndarray, RoundRecord]:
        manifest = self.manifest
        secure = manifest.secure is SecureMode.CKKS
        opened: list[str] = list(manifest.member_ids)
        if secure:
            # A quorum must hold the round open before any hospital spends budget on it.
            errors = members.open_round(rnd)
            self._require_quorum(errors, f"opened round {rnd}")
            opened = [m for m in manifest.member_ids if m not in errors]
        instruction = wire.TrainInstruction(
            study_id=manifest.study_id, round=rnd, weight_unit=self._weight_unit
        )
        targets = list(party_of)
        contents = [wire.put_vector(instruction.to_record(), global_vec) for _ in targets]
        replies = self._send(targets, wire.TRAIN, contents, group=f"round-{rnd}")

        receipts: dict[str, wire.TrainReceipt] = {}
        updates: dict[str, np.ndarray] = {}
        failed: list[str] = []
        for node in targets:
            party = party_of[node]
            reply = replies.get(node)
            if reply is None:
                failed.append(party)
                continue
            try:
                receipt = wire.TrainReceipt.from_record(reply.content)
                if receipt.party_id != party:
                    raise BadInputError(
                        f"receipt from {party} claims to be from {receipt.party_id}"
                    )
                if not secure and receipt.status == "ok":
                    updates[party] = wire.get_vector(
                        reply.content, message=wire.TRAIN, length=int(global_vec.shape[0])
                    )
            except BadInputError as exc:
                log.warning(
                    "receipt rejected", extra=fields(party=party, round=rnd, reason=str(exc))
                )
                failed.append(party)
                continue
            receipts[party] = receipt
            self.outcome.clients[party].epsilon_spent = max(
                self.outcome.clients[party].epsilon_spent, receipt.epsilon
            )
            if receipt.status == "failed":
                failed.append(party)

        ok = {p: r for p, r in receipts.items() if r.status == "ok"}
        declined = sorted(p for p, r in receipts.items() if r.status == "declined")
        max_eps = max((c.epsilon_spent for c in self.outcome.clients.values()), default=0.0)

        def skipped(reason: str) -> tuple[np.ndarray, RoundRecord]:
            log.warning("round skipped", extra=fields(round=rnd, reason=reason))
            acc, loss = evaluate(model, self.test_set)
            return global_vec, RoundRecord(
                rnd, acc, loss, "", [], declined, sorted(failed), {}, False, max_eps, 0.0, reason
            )

        if len(ok) < manifest.min_clients:
            return skipped(f"{len(ok)} usable updates, at least {manifest.min_clients} needed")

        faulty: dict[str, str] = {}
        finalized = False
        decryptors: list[str] = []
        wrong: list[str] = []
        if secure:
            held = self._replicate(rnd, ok, opened, members, faulty)
            client_set, chosen = choose_client_set(held, list(opened), manifest.quorum)
            if len(client_set) < manifest.min_clients:
                return skipped("no client set of the minimum size reached a quorum of members")
            # Each owner's signed (ledger head, epsilon), relayed as received: members attest
            # only what verifies against the owner's key.
            ledger = [ok[p].ledger_commitment for p in client_set if ok[p].ledger_commitment]
            decision = self._aggregate(rnd, client_set, chosen, members, faulty, ledger)
            if decision is None:
                return skipped("the committee reached no quorum on the aggregate")
            agg_hash = decision.aggregate_hash
            finalized = self._attest(rnd, decision, client_set, ledger)
            # From here owners of S may decrypt: the round counts as released to the
            # coordinator for client-level DP even if the decryptions then disagree.
            self._released = len(client_set)
            try:
                total, decryptors, wrong = self._decrypt(rnd, client_set, decision, party_of)
            except ProtocolAbort as exc:
                return skipped(str(exc))
        else:
            client_set = sorted(ok)
            self._released = len(client_set)
            total = np.sum([updates[p].astype(np.float64) for p in client_set], axis=0)
            agg_hash = tagged_hash(Tag.AGGREGATE, total.astype(np.float64).tobytes())
        # Owners sent update * examples / weight_unit; divide by the weight of S.
        weight = sum(ok[p].examples for p in client_set) / self._weight_unit
        mean = total / weight
        global_vec = (global_vec.astype(np.float64) + manifest.server_lr * mean).astype(np.float32)
        set_flat(model, global_vec)
        acc, loss = evaluate(model, self.test_set)
        for p in client_set:
            self.outcome.clients[p].rounds_included += 1
        record = RoundRecord(
            rnd,
            acc,
            loss,
            agg_hash.hex(),
            list(client_set),
            declined,
            sorted(failed),
            faulty,
            finalized,
            max_eps,
            0.0,
            "",
            decryptors,
            wrong,
        )
        log.info("round done", extra=fields(round=rnd, accuracy=acc, clients=len(client_set)))
        return global_vec, record

    def _replicate(
        self,
        rnd: int,
        receipts: Mapping[str, wire.TrainReceipt],
        opened: Sequence[str],
        members: Committee,
        faulty: dict[str, str],
    ) -> dict[str, set[str]]:
        """Upload once: every opened member fetches the uploads it lacks from the member
        that signed each owner's receipt. Returns which members hold each owner's upload
        (with the payload hash the owner reported) and names, in ``faulty``, the members
        reported to have withheld or altered a copy they signed a receipt for."""
        manifest = self.manifest
        sources = []
        for party, receipt in sorted(receipts.items()):
            for member_id, signature in zip(receipt.delivered, receipt.receipts, strict=False):
                signed = UploadReceipt(
                    member_id, manifest.study_id, rnd, party, receipt.payload_hash, signature
                )
                entry = manifest.member(member_id)
                try:
                    if entry is None:
                        raise VerificationError(f"{member_id!r} is not a committee member")
                    signed.verify(entry.identity)
                except VerificationError as exc:
                    log.warning(
                        "upload receipt rejected",
                        extra=fields(party=party, round=rnd, reason=str(exc)),
                    )
                    continue
                sources.append(signed.source())
        replications, _ = members.replicate_all(rnd, sources, members=opened)
        for member_id, reason in copy_faults(replications, sources).items():
            log.warning(
                "committee member faulty", extra=fields(round=rnd, member=member_id, reason=reason)
            )
            faulty.setdefault(member_id, reason)
        return holders(replications, sources)

    def _aggregate(
        self,
        rnd: int,
        client_set: list[str],
        chosen: list[str],
        members: Committee,
        faulty: dict[str, str],
        ledger: Sequence[bytes] = (),
    ) -> QuorumDecision | None:
        """Ask the members that hold every upload of S; accept what a quorum agrees on."""

        def ask(member_id: str) -> AggregateResult | None:
            try:
                return members.aggregate(member_id, rnd, client_set, ledger_commitments=ledger)
            except CohortError as exc:
                faulty[member_id] = f"aggregate failed: {exc}"
                return None

        with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
            results = [r for r in pool.map(ask, chosen) if r is not None]
        try:
            decision = members.decide(
                results, round=rnd, client_ids=client_set, ledger_commitments=ledger
            )
        except QuorumNotReached as exc:
            faulty.update({f.member_id: f"{f.reason}: {f.detail}" for f in exc.faults})
            log.warning("no quorum", extra=fields(round=rnd, reason=str(exc)))
            return None
        faulty.update(decision.faulty_reasons)
        for member_id, reason in decision.faulty_reasons.items():
            log.warning(
                "committee member faulty", extra=fields(round=rnd, member=member_id, reason=reason)
            )
        return decision

    def _attest(
        self,
        rnd: int,
        decision: QuorumDecision,
        client_set: list[str],
        ledger: Sequence[bytes] = (),
    ) -> bool:
        """Relay every agreeing member's attestation; True once the chain finalized this hash.

        All of them are relayed, not just a quorum: late attestations are recorded on-chain
        too, so an auditor sees which members vouched for the round.
        """
        contributors = [self.outcome.clients[p].payout_address for p in client_set]
        # the (head, epsilon) per contributor the members attested (aggregator.member._sign)
        heads = AttestationCheck.for_manifest(
            self.manifest, client_set, round=rnd, ledger_commitments=ledger
        ).ledger_heads
        for attestation in decision.attestations:
            try:
                self.contract.submit_attestation(
                    relayer=self.sponsor,
                    round=rnd,
                    aggregate_hash=decision.aggregate_hash,
                    contributors=contributors,
                    ledger_heads=heads,
                    signature=attestation.signature,
                )
            except CohortError as exc:
                log.warning(
                    "attestation refused on-chain", extra=fields(round=rnd, reason=str(exc))
                )
        return self.contract.finalized_hash(rnd) == decision.aggregate_hash

    def _decrypt_some(
        self,
        parties: Sequence[str],
        node_of: Mapping[str, int],
        rnd: int,
        request: wire.DecryptRequest,
    ) -> dict[str, tuple[bytes, np.ndarray]]:
        """Ask ``parties`` to decrypt at once; each answer with its signature and hash checked."""
        nodes = [node_of[p] for p in parties]
        record = request.to_record()
        replies = self._send(nodes, wire.DECRYPT, [record] * len(nodes), group=f"decrypt-{rnd}")
        answers = {}
        for party in parties:
            reply = replies.get(node_of[party])
            if reply is None:
                continue
            try:
                answers[party] = self._check_decryption(party, rnd, request, reply.content)
            except (BadInputError, VerificationError) as exc:
                log.warning("decryption rejected", extra=fields(party=party, reason=str(exc)))
        return answers

    def _check_decryption(
        self, party: str, rnd: int, request: wire.DecryptRequest, content: RecordDict
    ) -> tuple[bytes, np.ndarray]:
        answer = wire.DecryptReply.from_record(content)
        vector = wire.get_vector(content, message=wire.DECRYPT, length=None)
        entry = self.manifest.owner(party)
        assert entry is not None
        digest = wire.decryption_digest(
            study_id=request.study_id,
            round=rnd,
            aggregate_hash=request.aggregate_hash,
            plain_hash=answer.plain_hash,
        )
        verify_signature(entry.identity, digest, answer.signature)
        if wire.plaintext_hash(vector) != answer.plain_hash or answer.party_id != party:
            raise VerificationError(f"decryption by {party} does not match its signed hash")
        return answer.plain_hash, vector.astype(np.float64)

    def decrypt_request(
        self, rnd: int, client_set: Sequence[str], decision: QuorumDecision
    ) -> wire.DecryptRequest:
        """What an owner of S gets asked to decrypt: the aggregate and the quorum's signatures."""
        return wire.DecryptRequest(
            study_id=self.manifest.study_id,
            round=rnd,
            client_ids=tuple(client_set),
            aggregate=decision.aggregate,
            aggregate_hash=decision.aggregate_hash,
            member_ids=tuple(decision.signatures),
            member_signatures=tuple(decision.signatures.values()),
        )

    def _decrypt(
        self, rnd: int, client_set: list[str], decision: QuorumDecision, party_of: dict[int, str]
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Decrypt with one owner of S and check it with a second (rotating through S).

        Decryption is deterministic, so two honest owners return the same plaintext hash. On
        a mismatch further owners are asked until two agree; the odd ones out are returned as
        faulty decryptors. Returns (sum, owners who agree, faulty decryptors).
        """
        node_of = {p: n for n, p in party_of.items()}
        request = self.decrypt_request(rnd, client_set, decision)
        start = rnd % len(client_set)
        order = client_set[start:] + client_set[:start]
        answers: dict[bytes, list[str]] = {}
        vectors: dict[bytes, np.ndarray] = {}
        # The first two owners decrypt in parallel (one message round trip); further owners,
        # one at a time, only when those two disagree or one of them fails.
        batches = [order[:2], *([p] for p in order[2:])]
        for batch in batches:
            got = self._decrypt_some(batch, node_of, rnd, request)
            for party in batch:
                if party not in got:
                    continue
                plain_hash, vector = got[party]
                answers.setdefault(plain_hash, []).append(party)
                vectors.setdefault(plain_hash, vector)
            agreed_hash = next((h for h, ps in answers.items() if len(ps) >= 2), None)
            if agreed_hash is not None:
                agreed = answers[agreed_hash]
                wrong = sorted(p for h, ps in answers.items() if h != agreed_hash for p in ps)
                for p in wrong:
                    log.warning("wrong decryption", extra=fields(round=rnd, party=p))
                return vectors[agreed_hash], agreed, wrong
        if len(answers) == 1:
            ((plain_hash, agreed),) = answers.items()
            log.warning("decryption unchecked: one owner answered", extra=fields(round=rnd))
            return vectors[plain_hash], agreed, []
        raise ProtocolAbort("no two data owners of the client set agree on the decryption")

    def _settle(self) -> None:
        contract = self.contract
        self.outcome.finalized_rounds = contract.finalized_rounds()
        try:
            contract.settle(sponsor=self.sponsor)
        except CohortError as exc:
            log.warning("study not settled", extra=fields(reason=str(exc)))
            return
        self.outcome.settled = True
        total = 0
        for record in self.outcome.clients.values():
            paid = contract.release(account=record.payout_address, relayer=self.sponsor)
            record.paid_wei = paid
            total += paid
        self.outcome.total_paid_wei = total


def client_level_record(
    manifest: Manifest, earlier: Sequence[RoundRecord], rnd: int, *, released: int
) -> dict[str, Any] | None:
    """Client-level DP after round ``rnd`` (None when the manifest has no ``client_dp``).

    Computed from public data only: how many owners' noised updates each released sum held
    (``released``, 0 when the round released nothing; ``earlier`` rounds' own records), C,
    sigma and min_clients (:mod:`cohort.clients.client_dp`). ``epsilon`` is every released
    round so far composed: the bound for an owner included in all of them.
    """
    terms = manifest.client_dp
    if terms is None:
        return None
    sizes = [(r.round, int(r.client_level["clients"])) for r in earlier if r.client_level]
    sizes.append((rnd, released))
    events = [
        ClientLevelEvent.of_round(
            r,
            clients=n,
            noise_multiplier=terms.noise_multiplier,
            min_clients=manifest.min_clients,
        )
        for r, n in sizes
        if n > 0
    ]
    current = events[-1] if events and events[-1].round == rnd else None
    return {
        "clients": released,
        "noise_multiplier": None if current is None else current.noise_multiplier,
        "clip_norm": terms.clip_norm,
        "epsilon": client_level_epsilon(
            [e.noise_multiplier for e in events], delta=manifest.dp.delta
        ),
        "delta": manifest.dp.delta,
    }


_COHORT_ERROR = re.compile(r"cohort\.(?:[a-z_]+\.)+([A-Z]\w*): (.+)")


def error_reason(raw: str) -> str:
    """The Cohort error inside a node's error reply (Flower wraps it in a remote traceback)."""
    matches = _COHORT_ERROR.findall(raw)
    if matches:
        kind, message = matches[-1]
        return f"{kind}: {message.strip()}"[:500]
    lines = [line.strip() for line in raw.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else raw)[:500]


def choose_client_set(
    delivered: dict[str, set[str]], members: list[str], quorum: int
) -> tuple[list[str], list[str]]:
    """The largest client set that some ``quorum`` members all hold uploads for.

    ``delivered`` maps each data owner to the members that hold its upload. Returns the
    sorted client set and the members that can aggregate it. Ties break on member ids so
    every honest coordinator picks the same set.
    """
    best: tuple[list[str], list[str]] = ([], [])
    for combo in itertools.combinations(sorted(members), quorum):
        clients = sorted(p for p, got in delivered.items() if set(combo) <= got)
        if len(clients) > len(best[0]):
            holders = sorted(m for m in members if all(m in delivered[p] for p in clients))
            best = (clients, holders)
    return best
