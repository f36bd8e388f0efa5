"""Round steps every committee mode shares, run by the coordinator: choose the client set
the committee can aggregate, collect the members' signed results and accept what a quorum
agrees on, relay the attestations on-chain."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from cohort.aggregator.committee import Committee
from cohort.aggregator.member import AggregateResult
from cohort.aggregator.quorum import AttestationCheck, QuorumDecision, QuorumNotReached
from cohort.errors import CohortError
from cohort.federation.modes.base import RoundHost
from cohort.logs import fields, get_logger

log = get_logger(__name__)


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


def aggregate_quorum(
    rnd: int,
    client_set: list[str],
    chosen: Sequence[str],
    members: Committee,
    faulty: dict[str, str],
    ledger: Sequence[bytes] = (),
    *,
    call: Callable[[str], AggregateResult] | None = None,
    step: str = "aggregate",
) -> QuorumDecision | None:
    """Ask the ``chosen`` members (those holding every upload of S) for their signed result,
    with ``call`` (default: the Aggregate RPC); accept what a quorum agrees on. Members that
    fail or disagree are named in ``faulty``."""

    def ask(member_id: str) -> AggregateResult | None:
        try:
            if call is not None:
                return call(member_id)
            return members.aggregate(member_id, rnd, client_set, ledger_commitments=ledger)
        except CohortError as exc:
            faulty[member_id] = f"{step} failed: {exc}"
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


def attest(
    host: RoundHost,
    rnd: int,
    decision: QuorumDecision,
    client_set: list[str],
    ledger: Sequence[bytes] = (),
) -> bool:
    """Relay every agreeing member's attestation; True once the chain finalized this hash.

    All of them are relayed, not just a quorum: late attestations are recorded on-chain
    too, so an auditor sees which members vouched for the round.
    """
    contributors = [host.outcome.clients[p].payout_address for p in client_set]
    # the (head, epsilon) per contributor the members attested (aggregator.member._sign)
    heads = AttestationCheck.for_manifest(
        host.manifest, client_set, round=rnd, ledger_commitments=ledger
    ).ledger_heads
    with host.timed("chain"):
        for attestation in decision.attestations:
            try:
                host.contract.submit_attestation(
                    relayer=host.sponsor,
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
        return host.contract.finalized_hash(rnd) == decision.aggregate_hash


def open_committee_round(host: RoundHost, members: Committee, rnd: int) -> list[str]:
    """Open ``rnd`` at every member; a quorum must hold it open before any hospital spends
    budget on it (ProtocolAbort otherwise). Returns the members that opened it."""
    errors = members.open_round(rnd)
    host.require_quorum(errors, f"opened round {rnd}")
    return [m for m in host.manifest.member_ids if m not in errors]
