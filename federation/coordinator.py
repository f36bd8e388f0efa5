"""The coordinator's side of a study (run by the sponsor inside Cohort's ServerApp).

One study, step by step (see docs/architecture.md):

1. enrol the data owners (public keys, payout addresses, example counts);
2. deploy the study contract with the bounty, the committee and the data owners;
3. CKKS mode: a key dealer among the owners creates the CKKS context and boxes its secret part
   to every other owner; the committee gets the public context only;
4. each round: open the round at every member, send the global model, collect receipts (never
   updates), pick the client set S the committee can aggregate, collect the members' signed
   aggregates, accept on quorum, relay the members' attestations on-chain, have one owner of S
   (rotating) decrypt the aggregate, apply the mean update, evaluate;
5. settle the bounty by accepted contributions and release each owner's payout.

The coordinator never holds a CKKS secret key and never receives an individual update in
any form; :mod:`cohort.federation.transcript` records what it did receive.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from cohort.aggregator.committee import Committee, MemberRef
from cohort.aggregator.member import AggregateResult, DataOwner, study_id_bytes
from cohort.aggregator.member import StudyConfig as MemberStudy
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.quorum import AttestationCheck, QuorumDecision, QuorumNotReached, decide
from cohort.bounties.chain import ChainProvider
from cohort.bounties.study import StudyContract
from cohort.clients.data import Dataset
from cohort.clients.model import build_model, evaluate, get_flat, set_flat
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import BadInputError, CohortError, ProtocolAbort
from cohort.federation import wire
from cohort.federation.config import SecureMode, StudyConfig
from cohort.logs import fields, get_logger

log = get_logger(__name__)

REPLY_TIMEOUT_S = 600.0


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
    final_model: np.ndarray | None = None
    node_errors: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Coordinator:
    """Drives one study over a Flower grid. Run by the coordinator (sponsor)."""

    config: StudyConfig
    grid: Grid
    test_set: Dataset
    committee: Sequence[MemberRef]
    chain: ChainProvider
    sponsor: str
    on_round: Callable[[RoundRecord], None] | None = None
    outcome: StudyOutcome = field(default_factory=StudyOutcome)
    _member_study: MemberStudy | None = field(default=None, repr=False)
    _weight_unit: int = field(default=1, repr=False)

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
        deadline = time.monotonic() + 120
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.config.clients:
                return nodes[: self.config.clients]
            if time.monotonic() > deadline:
                raise ProtocolAbort(
                    f"only {len(nodes)} of {self.config.clients} data owners connected"
                )
            time.sleep(0.5)

    # ------------------------------------------------------------------ the study

    def run(self) -> StudyOutcome:
        cfg = self.config
        study_id = cfg.study_id
        self.outcome.study_id = study_id
        nodes = self._wait_for_nodes()

        owners = self._enroll(nodes, study_id)
        party_of = {n: owners[n].party_id for n in owners}
        features = {o.features for o in owners.values()}
        if len(features) != 1 or features != {self.test_set.features.shape[1]}:
            raise BadInputError(
                f"data owners and the test set disagree on the feature count: {sorted(features)}"
            )
        contract = StudyContract.deploy(
            self.chain,
            sponsor=self.sponsor,
            study_id=study_id_bytes(study_id),
            committee=[m.eth_address for m in self.committee],
            quorum=cfg.quorum,
            data_owners=[o.payout_address for o in owners.values()],
            bounty_wei=cfg.bounty_wei,
        )
        self.outcome.contract = contract.address
        self.outcome.chain = self.chain.name
        self.outcome.bounty_wei = cfg.bounty_wei

        torch.manual_seed(
            cfg.seed if cfg.seed is not None else int.from_bytes(np.random.bytes(4), "big")
        )
        model = build_model(cfg.model, in_features=self.test_set.features.shape[1], num_classes=2)
        global_vec = get_flat(model).astype(np.float32)

        members = Committee(self.committee)
        try:
            if cfg.secure is SecureMode.CKKS:
                public_context = self._deal_keys(owners, study_id)
                self._member_study = MemberStudy(
                    study_id=study_id,
                    owners=tuple(
                        DataOwner(identity=o.identity(), payout_address=o.payout_address)
                        for o in owners.values()
                    ),
                    mode=CkksSpec(public_context=public_context),
                    update_length=int(global_vec.shape[0]),
                    committee=members.member_ids,
                    quorum=cfg.quorum,
                    chain_id=self.chain.chain_id,
                    contract=contract.address,
                )
                members.configure(self._member_study)

            for rnd in range(1, cfg.rounds + 1):
                started = time.perf_counter()
                global_vec, record = self._round(
                    rnd, nodes, party_of, owners, global_vec, model, members, contract
                )
                record.seconds = round(time.perf_counter() - started, 3)
                self.outcome.rounds.append(record)
                if self.on_round is not None:
                    self.on_round(record)
        finally:
            members.close()

        self._settle(contract)
        self.outcome.final_model = global_vec
        return self.outcome

    def _enroll(self, nodes: list[int], study_id: str) -> dict[int, wire.EnrollReply]:
        request = wire.EnrollRequest(study_id=study_id).to_record()
        replies = self._send(nodes, wire.ENROLL, [request] * len(nodes), group="enroll")
        owners: dict[int, wire.EnrollReply] = {}
        for node, reply in replies.items():
            try:
                owners[node] = wire.EnrollReply.from_record(reply.content)
            except BadInputError as exc:
                log.warning("enrolment rejected", extra=fields(node=node, reason=str(exc)))
        ids = [o.party_id for o in owners.values()]
        if len(set(ids)) != len(ids):
            raise BadInputError(f"data owners enrolled with duplicate party ids: {sorted(ids)}")
        if len(owners) < self.config.min_clients:
            raise ProtocolAbort(
                f"{len(owners)} data owners enrolled, at least {self.config.min_clients} needed"
            )
        self._weight_unit = max(o.examples for o in owners.values())
        for o in owners.values():
            self.outcome.clients[o.party_id] = ClientRecord(
                id=o.party_id, payout_address=o.payout_address, examples=o.examples
            )
        return dict(sorted(owners.items(), key=lambda kv: kv[1].party_id))

    def _deal_keys(self, owners: dict[int, wire.EnrollReply], study_id: str) -> bytes:
        """Have the first owner (by party id) deal the CKKS context; return the public context."""
        dealer_node = next(iter(owners))
        roster = list(owners.values())
        request = wire.KeygenRequest(
            study_id=study_id,
            party_ids=tuple(o.party_id for o in roster),
            sign_keys=tuple(o.sign_key for o in roster),
            box_keys=tuple(o.box_key for o in roster),
        )
        replies = self._send([dealer_node], wire.KEYGEN, [request.to_record()], group="keygen")
        if dealer_node not in replies:
            raise ProtocolAbort(f"key dealer {owners[dealer_node].party_id} did not answer")
        dealt = wire.KeygenReply.from_record(replies[dealer_node].content)
        dealer = owners[dealer_node]
        node_of = {o.party_id: n for n, o in owners.items()}
        targets, contents = [], []
        for recipient, box in zip(dealt.recipients, dealt.boxes, strict=True):
            targets.append(node_of[recipient])
            contents.append(
                wire.InstallKeyRequest(
                    study_id=study_id,
                    dealer_id=dealer.party_id,
                    dealer_sign_key=dealer.sign_key,
                    dealer_box_key=dealer.box_key,
                    box=box,
                    fingerprint=dealt.fingerprint,
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
        return dealt.public_context

    def _round(
        self,
        rnd: int,
        nodes: list[int],
        party_of: dict[int, str],
        owners: dict[int, wire.EnrollReply],
        global_vec: np.ndarray,
        model: torch.nn.Module,
        members: Committee,
        contract: StudyContract,
    ) -> tuple[np.ndarray, RoundRecord]:
        cfg = self.config
        secure = cfg.secure is SecureMode.CKKS
        if secure:
            members.open_round(rnd, study_id=self.outcome.study_id)
        instruction = wire.TrainInstruction(
            study_id=self.outcome.study_id,
            round=rnd,
            total_rounds=cfg.rounds,
            weight_unit=self._weight_unit,
            secure=cfg.secure.value,
            seed=-1 if cfg.seed is None else cfg.seed,
            model=cfg.model,
            epsilon=cfg.dp.epsilon,
            delta=cfg.dp.delta,
            local_epochs=cfg.dp.local_epochs,
            batch_size=cfg.dp.batch_size,
            max_grad_norm=cfg.dp.max_grad_norm,
            lr=cfg.dp.lr,
            quorum=cfg.quorum,
            min_clients=cfg.min_clients,
            **wire.committee_lists(
                [
                    wire.MemberInfo(
                        m.member_id, m.identity.sign_key, m.identity.box_key, m.endpoint
                    )
                    for m in self.committee
                ]
            ),
        )
        targets = [n for n in nodes if n in party_of]
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
                rnd, acc, loss, "", [], declined, sorted(failed), {}, False, max_eps, 0.0
            )

        if len(ok) < cfg.min_clients:
            return skipped(f"{len(ok)} usable updates, at least {cfg.min_clients} needed")

        faulty: dict[str, str] = {}
        finalized = False
        agg_hash = b""
        if secure:
            client_set, chosen = choose_client_set(
                {p: set(r.delivered) for p, r in ok.items()}, list(members.member_ids), cfg.quorum
            )
            if len(client_set) < cfg.min_clients:
                return skipped("no client set of the minimum size reached a quorum of members")
            decision = self._aggregate(rnd, client_set, chosen, members, faulty)
            if decision is None:
                return skipped("the committee reached no quorum on the aggregate")
            agg_hash = decision.aggregate_hash
            finalized = self._attest(contract, rnd, decision, owners, client_set)
            total = self._decrypt(rnd, client_set, decision, party_of)
        else:
            client_set = sorted(ok)
            total = np.sum([updates[p].astype(np.float64) for p in client_set], axis=0)
            agg_hash = tagged_hash(Tag.AGGREGATE, total.astype(np.float64).tobytes())
        # Owners sent update * examples / weight_unit; divide by the weight of S.
        weight = sum(ok[p].examples for p in client_set) / self._weight_unit
        mean = total / weight
        global_vec = (global_vec.astype(np.float64) + cfg.server_lr * mean).astype(np.float32)
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
        )
        log.info("round done", extra=fields(round=rnd, accuracy=acc, clients=len(client_set)))
        return global_vec, record

    def _aggregate(
        self,
        rnd: int,
        client_set: list[str],
        chosen: list[str],
        members: Committee,
        faulty: dict[str, str],
    ) -> QuorumDecision | None:
        """Ask the members that hold every upload of S; accept what a quorum agrees on."""

        def ask(member_id: str) -> AggregateResult | None:
            try:
                return members.client(member_id).aggregate(
                    rnd, client_set, study_id=self.outcome.study_id
                )
            except CohortError as exc:
                faulty[member_id] = f"aggregate failed: {exc}"
                return None

        with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
            results = [r for r in pool.map(ask, chosen) if r is not None]
        if self._member_study is None:
            raise ProtocolAbort("the committee was never configured for this study")
        check = AttestationCheck.for_study(self._member_study, client_set)
        try:
            decision = decide(
                results,
                quorum=self.config.quorum,
                roster=self.committee,
                study_id=self.outcome.study_id,
                round=rnd,
                client_ids=client_set,
                attestation=check,
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
        contract: StudyContract,
        rnd: int,
        decision: QuorumDecision,
        owners: dict[int, wire.EnrollReply],
        client_set: list[str],
    ) -> bool:
        """Relay every agreeing member's attestation; True once the chain finalized this hash.

        All of them are relayed, not just a quorum: late attestations are recorded on-chain
        too, so an auditor sees which members vouched for the round.
        """
        payout = {o.party_id: o.payout_address for o in owners.values()}
        contributors = [payout[p] for p in client_set]
        for attestation in decision.attestations:
            try:
                contract.submit_attestation(
                    relayer=self.sponsor,
                    round=rnd,
                    aggregate_hash=decision.aggregate_hash,
                    contributors=contributors,
                    signature=attestation.signature,
                )
            except CohortError as exc:
                log.warning(
                    "attestation refused on-chain", extra=fields(round=rnd, reason=str(exc))
                )
        return contract.finalized_hash(rnd) == decision.aggregate_hash

    def _decrypt(
        self, rnd: int, client_set: list[str], decision: QuorumDecision, party_of: dict[int, str]
    ) -> np.ndarray:
        node_of = {p: n for n, p in party_of.items()}
        request = wire.DecryptRequest(
            study_id=self.outcome.study_id,
            round=rnd,
            client_ids=tuple(client_set),
            aggregate=decision.aggregate,
            aggregate_hash=decision.aggregate_hash,
            member_ids=tuple(decision.signatures),
            member_signatures=tuple(decision.signatures.values()),
        )
        # Rotate the decryptor through the client set; fall back to the next on failure.
        order = client_set[rnd % len(client_set) :] + client_set[: rnd % len(client_set)]
        for party in order:
            replies = self._send(
                [node_of[party]], wire.DECRYPT, [request.to_record()], group=f"decrypt-{rnd}"
            )
            reply = replies.get(node_of[party])
            if reply is None:
                continue
            return wire.get_vector(reply.content, message=wire.DECRYPT, length=None).astype(
                np.float64
            )
        raise ProtocolAbort(f"round {rnd}: no data owner of the client set decrypted the aggregate")

    def _settle(self, contract: StudyContract) -> None:
        contract.settle(sponsor=self.sponsor)
        total = 0
        for record in self.outcome.clients.values():
            paid = contract.release(account=record.payout_address, relayer=self.sponsor)
            record.paid_wei = paid
            total += paid
        self.outcome.total_paid_wei = total
        self.outcome.finalized_rounds = contract.finalized_rounds()


_COHORT_ERROR = re.compile(r"cohort\.errors\.(\w+): (.+)")


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

    ``delivered`` maps each data owner to the members that accepted its upload. Returns the
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
