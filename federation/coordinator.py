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
   applies the mean update and evaluates;
4. settle the bounty by accepted contributions (the contract allows it only after the final
   round or the deadline) and release each owner's payout.

The coordinator never holds a CKKS secret key or a share, and never receives an individual
update in any form; :mod:`cohort.federation.transcript` records what it did receive.
"""

from __future__ import annotations

import contextlib
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
from cohort.federation.modes import CoordinatorMode, RoundSkipped, coordinator_mode
from cohort.federation.modes.committee_steps import choose_client_set
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
class Session:
    """What the coordinator holds between rounds of one study."""

    owners: dict[int, wire.EnrollReply]
    party_of: dict[int, str]
    model: torch.nn.Module
    global_vec: np.ndarray
    members: Committee
    mode: CoordinatorMode


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
            mode = coordinator_mode(self, members)
            mode.set_up(owners)
        except BaseException:
            members.close()
            raise
        party_of = {n: owners[n].party_id for n in owners}
        return Session(owners, party_of, model, global_vec, members, mode)

    def play_round(self, session: Session, rnd: int) -> bool:
        """Run round ``rnd``; False when the study had to stop (reason in the outcome)."""
        started = time.perf_counter()
        self._released = 0
        self._phases = {}
        self._exchanges = []
        try:
            session.global_vec, record = self._round(rnd, session)
        except ProtocolAbort as exc:
            self.outcome.stopped = f"round {rnd}: {exc}"
            log.warning("study stopped", extra=fields(round=rnd, reason=str(exc)))
            return False
        record.seconds = round(time.perf_counter() - started, 3)
        record.phases = {p: round(self._phases[p], 3) for p in PHASES if p in self._phases}
        record.exchanges = self._exchanges
        record.client_level = client_level_record(
            self.manifest, self.outcome.rounds, rnd, released=self._released
        )
        self.outcome.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)
        return True

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

    def _round(self, rnd: int, session: Session) -> tuple[np.ndarray, RoundRecord]:
        """One round, the same steps in every mode: open it (mode), send the global model,
        collect receipts, let the mode turn the usable ones into a client set's sum, apply
        the mean update, evaluate."""
        manifest, mode = self.manifest, session.mode
        global_vec, model = session.global_vec, session.model
        with self.timed("open"):
            opened = mode.open_round(rnd)
        instruction = wire.TrainInstruction(
            study_id=manifest.study_id, round=rnd, weight_unit=self._weight_unit
        )
        targets = list(session.party_of)
        contents = [wire.put_vector(instruction.to_record(), global_vec) for _ in targets]
        with self.timed("train"):
            replies = self.send(targets, wire.TRAIN, contents, group=f"round-{rnd}")

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

        def skipped(reason: str, **extra: Any) -> tuple[np.ndarray, RoundRecord]:
            log.warning("round skipped", extra=fields(round=rnd, reason=reason))
            with self.timed("evaluate"):
                acc, loss = evaluate(model, self.test_set)
            return global_vec, RoundRecord(
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
        mean = done.total / weight
        global_vec = (global_vec.astype(np.float64) + manifest.server_lr * mean).astype(np.float32)
        set_flat(model, global_vec)
        with self.timed("evaluate"):
            acc, loss = evaluate(model, self.test_set)
        for p in client_set:
            self.outcome.clients[p].rounds_included += 1
        record = RoundRecord(
            rnd,
            acc,
            loss,
            done.aggregate_hash.hex(),
            list(client_set),
            declined,
            sorted(failed),
            done.faulty,
            done.finalized,
            max_eps,
            0.0,
            "",
            done.decryptors,
            done.faulty_decryptors,
            rejected=done.rejected,
        )
        log.info("round done", extra=fields(round=rnd, accuracy=acc, clients=len(client_set)))
        return global_vec, record

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
