"""``cohort audit --chain-url URL --contract ADDR``: published ledgers against the chain.

Run by a privacy auditor. Each finalized round of a study emits one ``LedgerHead(round,
contributor, head, epsilonMicro)`` event per contributor: the head of the contributor's
privacy ledger right after that round and its cumulative epsilon (floor(epsilon * 1e6)), as
the contributor signed them to the committee and a quorum attested them
(:mod:`cohort.clients.ledger_commitment`). A ledger edited after the fact, even one
re-hashed consistently so that its own chain verifies, no longer has those heads. Per
hospital and finalized round it contributed to:

* ``ledger head does not match the chain``: the entry of that round has another hash (or
  the chain records the zero head, "none reported");
* ``ledger epsilon does not match the chain``: its ``epsilon_after`` scales to another
  micro-epsilon;
* ``round missing from the ledger``: the chain has a head for a round the ledger lacks.

Violations read ``"<hospital> round <r>: <check>: <what>"`` like the rest of the audit.
Before reading events the contract is checked to be the committed code bound to the
manifest (:func:`cohort.federation.approval.check_contract`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cohort.bounties.attestation import epsilon_micro
from cohort.bounties.study import LedgerHeadEvent, StudyContract
from cohort.clients.privacy import read_entries
from cohort.federation.approval import check_contract
from cohort.federation.manifest import Manifest

HEAD_MISMATCH = "ledger head does not match the chain"
EPSILON_MISMATCH = "ledger epsilon does not match the chain"
ROUND_MISSING = "round missing from the ledger"

__all__ = ["EPSILON_MISMATCH", "HEAD_MISMATCH", "ROUND_MISSING", "chain_problems"]


def _short(value: bytes) -> str:
    return "none reported (zero)" if value == bytes(len(value)) else value.hex()[:16]


def chain_problems(
    contract: StudyContract, manifest: Manifest, ledgers: Sequence[tuple[str, Path]]
) -> list[str]:
    """Compare each ``(hospital, ledger path)`` with the contract's ``LedgerHead`` events.

    Raises VerificationError if ``contract`` is not the manifest's study contract.
    """
    check_contract(contract, manifest)
    by_contributor: dict[str, dict[int, LedgerHeadEvent]] = {}
    for event in contract.ledger_head_events():
        by_contributor.setdefault(event.contributor.lower(), {})[event.round] = event
    problems: list[str] = []
    for hospital, path in ledgers:
        owner = manifest.owner(hospital.split("/")[0])
        if owner is None:
            continue  # the ledger audit already reports a ledger outside the roster
        onchain = by_contributor.get(owner.payout_address.lower(), {})
        entries = {e.event.round: e for e in read_entries(path) if e.study_id == manifest.study_id}
        for number in sorted(onchain):
            event = onchain[number]
            where = f"{hospital} round {number}"
            entry = entries.get(number)
            if entry is None:
                problems.append(
                    f"{where}: {ROUND_MISSING}: the chain records head {_short(event.head)} "
                    f"(tx {event.tx_hash[:18]})"
                )
                continue
            if entry.entry_hash != event.head:
                problems.append(
                    f"{where}: {HEAD_MISMATCH}: ledger {entry.entry_hash.hex()[:16]}, chain "
                    f"{_short(event.head)} (tx {event.tx_hash[:18]})"
                )
            recorded = epsilon_micro(entry.epsilon_after)
            if recorded != event.epsilon_micro:
                problems.append(
                    f"{where}: {EPSILON_MISMATCH}: ledger {recorded / 1e6:.6f}, chain "
                    f"{event.epsilon_micro / 1e6:.6f}"
                )
    return problems
