"""The coordinator's side of a study (run by the sponsor inside Cohort's ServerApp).

The coordinator works from the signed study manifest that every data owner and committee
member approved; its messages carry the round's work (study id, round number, the global
model, client sets), never terms. One study, step by step (see docs/architecture.md):

1. enrol the data owners of the manifest's roster that connected (which node is which owner,
   example counts);
2. set up the study's secure mode (:mod:`cohort.federation.modes`): in CKKS the manifest's
   key dealer deals the context and the committee is configured with it; in MPC the
   committee is configured with the manifest's field and threshold (both tolerate members
   that are down while a quorum remains);
3. each round, the same steps whatever the mode: the mode opens the round at the members
   (the study stops with a reason, before any hospital trains, if fewer than a quorum
   opened it), the global model goes out, receipts (never updates) come back, and the mode
   turns the usable receipts into the sum of a client set's updates (CKKS: replicate,
   aggregate on quorum, attest, two owners decrypt; MPC: validate norms inside MPC, sum
   shares, reconstruct from a threshold of partials, confirm, attest); the coordinator
   applies the mean update and evaluates. In CKKS the owners of S usually decrypt the sum
   beside the next round's training instead, one message exchange for both
   (:mod:`cohort.federation.reveal`): the round is then concluded in the next one;
4. settle the bounty by accepted contributions (the contract allows it only after the final
   round or the deadline) and release each owner's payout.

The coordinator never holds a CKKS secret key or a share, and never receives an individual
update in any form; :mod:`cohort.federation.transcript` records what it did receive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from cohort.aggregator.committee import Committee
from cohort.aggregator.control import ControlSigner
from cohort.bounties.study import StudyContract
from cohort.clients.client_dp import ClientLevelEvent, client_level_epsilon
from cohort.clients.data import Dataset
from cohort.clients.model import build_model, evaluate, get_flat, set_flat
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, CohortError, ProtocolAbort
from cohort.federation import wire
from cohort.federation.manifest import Manifest, SignedManifest
from cohort.federation.modes import (
    Aggregated,
    CoordinatorMode,
    Reveal,
    Revealed,
    RoundSkipped,
    coordinator_mode,
)
from cohort.federation.modes.committee_steps import choose_client_set
from cohort.federation.reveal import next_model
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.federation.coordinator_state import CoordinatorState, StateStore

log = get_logger(__name__)

REPLY_TIMEOUT_S = 600.0
NODE_WAIT_S = 120.0
#: The steps of a round the coordinator times (:attr:`RoundRecord.phases`): open it at the
#: committee, the train message exchange, the committee's work (replicate, aggregate),
#: relaying attestations on-chain, the decrypt message exchange (CKKS), evaluation.
PHASES = ("open", "train", "committee", "chain", "decrypt", "evaluate")


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
    #: Owners whose update the committee's input validation rejected (MPC), with why.
    rejected: dict[str, str] = field(default_factory=dict)
    #: Seconds the coordinator spent in each step of the round (:data:`PHASES`); the rest
    #: of ``seconds`` is its own bookkeeping.
    phases: dict[str, float] = field(default_factory=dict)
    #: The round's message exchanges, in order (:func:`exchange_record`): when the
    #: coordinator sent each, when every reply was in, and when each owner created its reply.
    exchanges: list[dict[str, Any]] = field(default_factory=list)


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
class Pending:
    """A played round whose sum is not yet revealed: its record so far, its aggregation,
    the weight of S. It rides with the next round's train messages
    (:mod:`cohort.federation.reveal`) or is revealed at once with the mode's own messages."""

    record: RoundRecord
    done: Aggregated
    reveal: Reveal
    weight: float
    released: int

    @property
    def round(self) -> int:
        return self.record.round

    def to_json(self) -> dict[str, Any]:
        """For the coordinator's saved state (:mod:`cohort.federation.coordinator_state`)."""
        return {
            "record": dataclasses.asdict(self.record),
            "client_set": list(self.done.client_set),
            "aggregate_hash": self.done.aggregate_hash.hex(),
            "finalized": self.done.finalized,
            "faulty": dict(self.done.faulty),
            "rejected": dict(self.done.rejected),
            "weight": self.weight,
            "released": self.released,
            "reveal": self.reveal.to_json(),
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], mode: CoordinatorMode, party_of: Mapping[int, str]
    ) -> Pending:
        """The pending round a restarted coordinator saved, for the owners now enrolled."""
        try:
            reveal = mode.restore_reveal(data["reveal"], party_of)
            done = Aggregated(
                None,
                [str(p) for p in data["client_set"]],
                bytes.fromhex(data["aggregate_hash"]),
                finalized=bool(data["finalized"]),
                faulty=dict(data["faulty"]),
                rejected=dict(data["rejected"]),
                reveal=reveal,
            )
            record = RoundRecord(**data["record"])
            return cls(record, done, reveal, float(data["weight"]), int(data["released"]))
        except (KeyError, TypeError, ValueError):
            raise BadInputError("coordinator state: malformed round to reveal") from None


@dataclass
class Session:
    """What the coordinator holds between rounds of one study. ``global_vec`` is the model
    after the last round concluded; ``pending`` the round played since, if it is unrevealed."""

    owners: dict[int, wire.EnrollReply]
    party_of: dict[int, str]
    model: torch.nn.Module
    global_vec: np.ndarray
    members: Committee
    mode: CoordinatorMode
    pending: Pending | None = None


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
    _phases: dict[str, float] = field(default_factory=dict, repr=False)  # this round's
    _exchanges: list[dict[str, Any]] = field(default_factory=list, repr=False)  # this round's
    _progress: CoordinatorState | None = field(default=None, repr=False)  # what ``state`` holds

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """Add the time spent inside the block to this round's ``phase`` (:data:`PHASES`)."""
        if phase not in PHASES:
            raise BadInputError(f"phase: one of {', '.join(PHASES)}, got {phase!r}")
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self._phases[phase] = self._phases.get(phase, 0.0) + spent

    # ------------------------------------------------------------------ messaging

    def send(
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
        sent_at = time.time()
        replies = self.grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_S)
        self._exchanges.append(exchange_record(message_type, sent_at, time.time(), replies))
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
        state = self._progress = self._resume(session)
        try:
            for rnd in range(state.next_round if state else 1, self.manifest.rounds + 1):
                if state is not None and self.state is not None:
                    state.opened_round = rnd
                    self.state.save(state)
                if session.pending is not None and not self._rides(session, session.pending):
                    self.reveal_pending(session)  # a restored one whose owners changed
                if not self.play_round(session, rnd):
                    break
            self.reveal_pending(session)  # the study stopped, or a restored last round
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
        if state.pending is not None:  # played, its sum not yet revealed: reveal it, go on
            session.pending = Pending.from_json(state.pending, session.mode, session.party_of)
            log.warning(
                "resuming with a round to reveal", extra=fields(round=session.pending.round)
            )
        if state.opened_round > state.finished_round:
            # Played again from the same global model: owners that trained it answer with
            # their stored receipt and spend nothing, members return what they signed.
            log.warning("resuming an interrupted round", extra=fields(round=state.opened_round))
        if state.finished_round:
            log.info("study resumed", extra=fields(after_round=state.finished_round))
        return state

    def _record(self, session: Session) -> None:
        """Persist the rounds concluded so far and the round whose sum is still to be
        revealed, if any (a restarted coordinator reveals it, see coordinator_state)."""
        state = self._progress
        if state is None or self.state is None:
            return
        state.finished_round = self.outcome.rounds[-1].round if self.outcome.rounds else 0
        state.pending = None if session.pending is None else session.pending.to_json()
        state.rounds = list(self.outcome.rounds)
        state.clients = dict(self.outcome.clients)
        state.node_errors = list(self.outcome.node_errors)
        state.model = session.global_vec
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
            mode = coordinator_mode(self, members)
            mode.set_up(owners)
        except BaseException:
            members.close()
            raise
        party_of = {n: owners[n].party_id for n in owners}
        return Session(owners, party_of, model, global_vec, members, mode)

    def play_round(self, session: Session, rnd: int) -> bool:
        """Run round ``rnd``; False when the study had to stop (reason in the outcome).

        The round's record is concluded now, or, when its sum rides with the next round's
        train messages (``session.pending``), by the next :meth:`play_round` or by
        :meth:`reveal_pending`; its ``seconds``, ``phases`` and ``exchanges`` are this
        call's either way (the reveal's share is the next round's)."""
        started = time.perf_counter()
        self._released = 0
        self._phases = {}
        self._exchanges = []
        try:
            record = self._round(rnd, session)
        except ProtocolAbort as exc:
            self.outcome.stopped = f"round {rnd}: {exc}"
            log.warning("study stopped", extra=fields(round=rnd, reason=str(exc)))
            return False
        record.seconds = round(time.perf_counter() - started, 3)
        record.phases = {p: round(self._phases[p], 3) for p in PHASES if p in self._phases}
        record.exchanges = self._exchanges
        if session.pending is not None and session.pending.record is record:
            self._record(session)  # with its timing
        else:
            self._conclude(session, record, self._released)
        return True

    def reveal_pending(self, session: Session) -> None:
        """Reveal the pending round's sum with the mode's own messages (the study ends or
        stopped before a next round could carry it) and conclude its record."""
        pending, session.pending = session.pending, None
        if pending is None:
            return
        started = time.perf_counter()
        self._phases, self._exchanges = {}, []
        try:
            revealed = pending.reveal.reveal_now()
        except RoundSkipped as exc:
            self._skip_pending(session, pending, str(exc))
        else:
            self._apply_reveal(session, pending.record, pending.done, pending.weight, revealed)
        # the reveal's messages count towards the round they reveal
        record = pending.record
        record.seconds = round(record.seconds + time.perf_counter() - started, 3)
        for phase, spent in self._phases.items():
            record.phases[phase] = round(record.phases.get(phase, 0.0) + spent, 3)
        record.exchanges.extend(self._exchanges)
        self._phases, self._exchanges = {}, []
        self._conclude(session, record, pending.released)

    def _conclude(self, session: Session, record: RoundRecord, released: int) -> None:
        """Add a finished round (played or skipped) to the outcome, and persist it."""
        record.client_level = client_level_record(
            self.manifest, self.outcome.rounds, record.round, released=released
        )
        self.outcome.rounds.append(record)
        self._record(session)
        if self.on_round is not None:
            self.on_round(record)

    def _apply_reveal(
        self,
        session: Session,
        record: RoundRecord,
        done: Aggregated,
        weight: float,
        revealed: Revealed,
    ) -> None:
        """Apply the revealed mean update (``weight``: of S), evaluate, fill in ``record``."""
        session.global_vec = next_model(
            session.global_vec,
            revealed.total,
            weight=weight,
            server_lr=self.manifest.server_lr,
        )
        set_flat(session.model, session.global_vec)
        with self.timed("evaluate"):
            record.accuracy, record.loss = evaluate(session.model, self.test_set)
        record.decryptors = revealed.decryptors
        record.faulty_decryptors = revealed.faulty_decryptors
        for p in done.client_set:
            self.outcome.clients[p].rounds_included += 1
        log.info(
            "round done",
            extra=fields(
                round=record.round, accuracy=record.accuracy, clients=len(done.client_set)
            ),
        )

    def _skip_pending(self, session: Session, pending: Pending, reason: str) -> None:
        """The pending round's sum could not be revealed: it releases no update (as a round
        whose decryptions disagree, see the mode's ``finish``)."""
        record = pending.record
        log.warning("round skipped", extra=fields(round=record.round, reason=reason))
        with self.timed("evaluate"):
            record.accuracy, record.loss = evaluate(session.model, self.test_set)
        record.reason = reason
        record.finalized = False
        record.clients_included = []
        record.aggregate_hash = ""

    def require_quorum(self, errors: Mapping[str, CohortError], what: str) -> None:
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
        replies = self.send(nodes, wire.ENROLL, [request] * len(nodes), group="enroll")
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

    def _round(self, rnd: int, session: Session) -> RoundRecord:
        """One round, the same steps in every mode: open it (mode), send the global model
        (with the previous round's sum to reveal, when it rides along), collect receipts,
        let the mode turn the usable ones into a client set's sum, apply the mean update,
        evaluate. Returns the round's record; it is ``session.pending``'s when the sum is
        to be revealed beside the next round's training."""
        manifest, mode = self.manifest, session.mode
        with self.timed("open"):
            opened = mode.open_round(rnd)
        pending = session.pending
        instruction = wire.TrainInstruction(
            study_id=manifest.study_id,
            round=rnd,
            weight_unit=self._weight_unit,
            reveal_weight=pending.weight if pending is not None else 0.0,
        )
        targets = list(session.party_of)
        contents = []
        for node in targets:
            content = wire.put_vector(instruction.to_record(), session.global_vec)
            if pending is not None:
                pending.reveal.attach(content, session.party_of[node])
            contents.append(content)
        with self.timed("train"):
            replies = self.send(targets, wire.TRAIN, contents, group=f"round-{rnd}")
        trained_from = None
        if pending is not None:
            trained_from = self._reveal_with(session, pending, replies)
        model = session.model

        receipts: dict[str, wire.TrainReceipt] = {}
        updates: dict[str, np.ndarray] = {}
        failed: list[str] = []
        for node in targets:
            party = session.party_of[node]
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
                if trained_from is not None and party not in trained_from:
                    raise BadInputError(
                        f"{party} did not reveal round {rnd - 1}'s agreed sum, so it trained "
                        "from another model"
                    )
                if receipt.status == "ok":
                    update = mode.read_update(reply.content)
                    if update is not None:
                        updates[party] = update
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

        def skipped(reason: str, **extra: Any) -> RoundRecord:
            log.warning("round skipped", extra=fields(round=rnd, reason=reason))
            with self.timed("evaluate"):
                acc, loss = evaluate(model, self.test_set)
            return RoundRecord(
                rnd,
                acc,
                loss,
                "",
                [],
                declined,
                sorted(failed),
                extra.get("faulty", {}),
                False,
                max_eps,
                0.0,
                reason,
                rejected=extra.get("rejected", {}),
            )

        if len(ok) < manifest.min_clients:
            return skipped(f"{len(ok)} usable updates, at least {manifest.min_clients} needed")
        try:
            done = mode.finish(rnd, opened, ok, updates, session.party_of)
        except RoundSkipped as exc:
            self._released = exc.released
            return skipped(str(exc), faulty=exc.faulty, rejected=exc.rejected)
        client_set = done.client_set
        self._released = len(client_set)
        # Owners sent update * examples / weight_unit; divide by the weight of S.
        weight = sum(ok[p].examples for p in client_set) / self._weight_unit
        record = RoundRecord(
            rnd,
            0.0,  # accuracy and loss: once the sum is revealed
            0.0,
            done.aggregate_hash.hex(),
            list(client_set),
            declined,
            sorted(failed),
            done.faulty,
            done.finalized,
            max_eps,
            0.0,
            "",
            rejected=done.rejected,
        )
        if done.reveal is None:  # the mode revealed the sum itself
            assert done.total is not None
            revealed = Revealed(done.total, done.decryptors, done.faulty_decryptors, frozenset())
            self._apply_reveal(session, record, done, weight, revealed)
            return record
        # From here owners of S may decrypt: the round counts as released to the
        # coordinator for client-level DP even if the decryptions then disagree. Saved, so
        # that a restarted coordinator reveals this sum rather than playing the round again
        # (its members have aggregated it).
        session.pending = Pending(record, done, done.reveal, weight, len(client_set))
        self._record(session)
        if rnd < manifest.rounds and self._rides(session, session.pending):
            return record
        pending, session.pending = session.pending, None
        try:
            revealed = pending.reveal.reveal_now()
        except RoundSkipped as exc:
            return skipped(str(exc), faulty=done.faulty, rejected=done.rejected)
        self._apply_reveal(session, record, done, weight, revealed)
        return record

    @staticmethod
    def _rides(session: Session, pending: Pending) -> bool:
        """Whether the pending sum can ride with the next round's train messages: every owner
        that round trains is in its client set (so can decrypt it)."""
        return set(session.party_of.values()) <= set(pending.done.client_set)

    def _reveal_with(
        self, session: Session, pending: Pending, replies: Mapping[int, Message]
    ) -> frozenset[str]:
        """Conclude the pending round from this round's train replies; returns the owners
        that trained from the model its agreed sum gives (none, when it was not revealed)."""
        session.pending = None
        by_party = {session.party_of[n]: m.content for n, m in replies.items()}
        try:
            revealed = pending.reveal.conclude(by_party)
        except RoundSkipped as exc:
            self._skip_pending(session, pending, str(exc))
            self._conclude(session, pending.record, pending.released)
            return frozenset()
        self._apply_reveal(session, pending.record, pending.done, pending.weight, revealed)
        self._conclude(session, pending.record, pending.released)
        return revealed.trained_from

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


def exchange_record(
    message_type: str, sent_at: float, collected_at: float, replies: Iterable[Message]
) -> dict[str, Any]:
    """One message exchange as ``rounds[].exchanges`` lists it (Unix seconds).

    ``sent_at``: just before the coordinator sent the messages; ``collected_at``: once every
    reply was in (or the wait ended). Each reply that is not an error names its node, the
    message it answers (the id the owner's ``message handled`` log line names) and when the
    owner created it (the reply's own metadata, the owner's clock: a timing aid, not
    evidence; a value that is not a finite time is left out).
    """
    listed = []
    for reply in replies:
        created = reply.metadata.created_at
        if reply.has_error() or not (isinstance(created, float) and math.isfinite(created)):
            continue
        listed.append(
            {
                "node": str(reply.metadata.src_node_id),
                "message": reply.metadata.reply_to_message_id,
                "replied_at": round(created, 3),
            }
        )
    return {
        "type": message_type,
        "sent_at": round(sent_at, 3),
        "collected_at": round(collected_at, 3),
        "replies": listed,
    }


__all__ = [
    "PHASES",
    "ClientRecord",
    "Coordinator",
    "RoundRecord",
    "Session",
    "StudyOutcome",
    "choose_client_set",
    "client_level_record",
    "error_reason",
    "exchange_record",
]
