"""MPC mode, coordinator side: configure the committee with the manifest's terms, then per
round pick the client set a set of members all hold shares of, have those members check
every candidate's norm inside MPC, collect their signed partial sums, reconstruct the sum
from any threshold of them (checking the rest against it), have the members confirm and
attest it, and relay the attestations on-chain.

Run by the coordinator (inside Cohort's ServerApp). It never receives a share or a seed:
only receipts, verdict bits, partial sums of at least ``min_clients`` owners and the sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from cohort.aggregator.control import ConfirmBody, SignedPartial
from cohort.aggregator.member import AggregateResult
from cohort.aggregator.modes import MpcMode, MpcSpec
from cohort.aggregator.mpc_records import ValidationVerdict, mpc_terms_digest, partial_digest
from cohort.aggregator.replication import UploadReceipt
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import verify_signature
from cohort.crypto.share_payload import unpack_field
from cohort.errors import CohortError, VerificationError
from cohort.federation import wire
from cohort.federation.manifest import SecureMode
from cohort.federation.modes.base import Aggregated, CoordinatorMode, RoundSkipped
from cohort.federation.modes.committee_steps import (
    aggregate_quorum,
    attest,
    choose_client_set,
    open_committee_round,
)
from cohort.federation.modes.mpc.owner import scheme_of
from cohort.logs import fields, get_logger

log = get_logger(__name__)

REJECTED = "update norm above the manifest's bound (checked inside MPC)"


class MpcCoordinator(CoordinatorMode):
    name: ClassVar[SecureMode] = SecureMode.MPC

    def set_up(self, owners: Mapping[int, wire.EnrollReply]) -> None:
        spec = MpcSpec(mpc_terms_digest(self.manifest))
        self.host.require_quorum(
            self.members.configure(self.host.signed, spec), "configured the study"
        )

    def open_round(self, rnd: int) -> list[str]:
        return open_committee_round(self.host, self.members, rnd)

    def _opener(self) -> MpcMode:
        manifest = self.manifest
        _, scheme = scheme_of(manifest)
        members = manifest.member_ids
        return MpcMode(
            study_id=manifest.study_id, members=members, member_id=members[0], scheme=scheme
        )

    def holders(self, rnd: int, receipts: Mapping[str, wire.TrainReceipt]) -> dict[str, set[str]]:
        """Which members hold each owner's share: the owner's receipts that verify."""
        manifest = self.manifest
        held: dict[str, set[str]] = {}
        for party, receipt in sorted(receipts.items()):
            got: set[str] = set()
            signed = zip(receipt.delivered, receipt.receipts, receipt.payload_hashes, strict=False)
            for member_id, signature, payload_hash in signed:
                entry = manifest.member(member_id)
                try:
                    if entry is None:
                        raise VerificationError(f"{member_id!r} is not a committee member")
                    UploadReceipt(
                        member_id, manifest.study_id, rnd, party, payload_hash, signature
                    ).verify(entry.identity)
                except VerificationError as exc:
                    log.warning(
                        "share receipt rejected",
                        extra=fields(party=party, round=rnd, reason=str(exc)),
                    )
                    continue
                got.add(member_id)
            held[party] = got
        return held

    def _live(self, candidates: Sequence[str], faulty: dict[str, str]) -> list[str]:
        """The candidates answering a signed Status now (the norm check needs all of its
        participants at once, so a member that died since the round opened is left out)."""
        live, errors = self.members.status_all(candidates)
        for member_id, exc in errors.items():
            faulty.setdefault(member_id, f"unreachable: {exc}")
        return sorted(live)

    def validate(
        self, rnd: int, client_set: list[str], participants: list[str], faulty: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        """The norm check by ``participants``; (accepted, rejected owner -> reason)."""
        verdicts, errors = self.members.validate_all(rnd, client_set, participants)
        for member_id, exc in errors.items():
            faulty.setdefault(member_id, f"validate failed: {exc}")
        if errors:
            raise RoundSkipped(
                "the MPC norm check did not complete: "
                + "; ".join(f"{m}: {e}" for m, e in sorted(errors.items())),
                faulty=faulty,
            )
        outcomes: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
        for member_id, verdict in verdicts.items():
            entry = self.manifest.member(member_id)
            assert entry is not None
            try:
                _check_verdict(verdict, member_id, tuple(participants))
                verdict.verify(entry.identity)
            except VerificationError as exc:
                faulty.setdefault(member_id, f"verdict rejected: {exc}")
                raise RoundSkipped(
                    f"a norm-check verdict did not verify: {exc}", faulty=faulty
                ) from None
            outcomes.add((verdict.accepted, verdict.rejected))
        if len(outcomes) != 1:
            raise RoundSkipped("the participants disagree on the norm check", faulty=faulty)
        ((accepted, rejected),) = outcomes
        return list(accepted), dict.fromkeys(rejected, REJECTED)

    def finish(
        self,
        rnd: int,
        opened: Sequence[str],
        ok: Mapping[str, wire.TrainReceipt],
        updates: Mapping[str, np.ndarray],
        party_of: Mapping[int, str],
    ) -> Aggregated:
        manifest = self.manifest
        faulty: dict[str, str] = {}
        live = self._live(list(opened), faulty)
        candidates, chosen = choose_client_set(self.holders(rnd, ok), live, manifest.quorum)
        if len(candidates) < manifest.min_clients:
            raise RoundSkipped(
                "no client set of the minimum size has shares at a threshold of live members",
                faulty=faulty,
            )
        accepted, rejected = self.validate(rnd, candidates, chosen, faulty)
        for party in rejected:
            log.warning("update rejected by the MPC norm check", extra=fields(party=party))
        client_set = sorted(accepted)
        if len(client_set) < manifest.min_clients:
            raise RoundSkipped(
                f"{len(client_set)} updates passed the norm check, at least "
                f"{manifest.min_clients} needed",
                faulty=faulty,
                rejected=rejected,
            )
        ledger = [ok[p].ledger_commitment for p in client_set if ok[p].ledger_commitment]
        partials = self._partials(rnd, client_set, chosen, ledger, faulty)
        opener = self._opener()
        try:
            opened_sum = opener.open_partials(
                {m: r.aggregate for m, r in partials.items()}, length=manifest.update_length
            )
        except VerificationError as exc:
            raise RoundSkipped(str(exc), faulty=faulty, rejected=rejected) from None
        for member_id in opened_sum.wrong:
            log.warning("wrong partial", extra=fields(round=rnd, member=member_id))
            faulty[member_id] = "partial sum off the reconstructed aggregate"
        good = [m for m in sorted(partials) if m not in opened_sum.wrong]
        body = ConfirmBody(
            rnd,
            tuple(client_set),
            tuple(ledger),
            tuple(SignedPartial(m, partials[m].aggregate, partials[m].signature) for m in good),
        )
        decision = aggregate_quorum(
            rnd,
            client_set,
            good,
            self.members,
            faulty,
            ledger,
            call=lambda m: self.members.confirm(m, body),
            step="confirm",
        )
        if decision is None:
            raise RoundSkipped(
                "the committee reached no quorum on the reconstructed sum",
                faulty=faulty,
                rejected=rejected,
            )
        if decision.aggregate != opened_sum.aggregate:
            raise RoundSkipped("the committee confirmed another sum", faulty=faulty)
        finalized = attest(self.host, rnd, decision, client_set, ledger)
        encoding, _ = scheme_of(manifest)
        total = encoding.decode(
            unpack_field(decision.aggregate, manifest.update_length, encoding.prime)
        )
        return Aggregated(
            total,
            client_set,
            decision.aggregate_hash,
            finalized=finalized,
            faulty=faulty,
            rejected=rejected,
        )

    def _partials(
        self,
        rnd: int,
        client_set: list[str],
        chosen: Sequence[str],
        ledger: Sequence[bytes],
        faulty: dict[str, str],
    ) -> dict[str, AggregateResult]:
        """The chosen members' signed partial sums over ``client_set``, signatures checked."""
        results, errors = self.members.aggregate_all(
            rnd, client_set, members=chosen, ledger_commitments=ledger
        )
        for member_id, exc in errors.items():
            faulty.setdefault(member_id, f"aggregate failed: {exc}")
        partials: dict[str, AggregateResult] = {}
        for result in results:
            entry = self.manifest.member(result.member_id)
            try:
                if entry is None or result.client_ids != tuple(client_set):
                    raise VerificationError("partial for another member or client set")
                digest = partial_digest(
                    study_id=self.manifest.study_id,
                    round=rnd,
                    member_id=result.member_id,
                    client_ids=client_set,
                    partial_hash=tagged_hash(Tag.AGGREGATE, result.aggregate),
                )
                verify_signature(entry.identity, digest, result.signature)
            except (VerificationError, CohortError) as exc:
                faulty.setdefault(result.member_id, f"partial rejected: {exc}")
                continue
            partials[result.member_id] = result
        if len(partials) < self.manifest.quorum:
            raise RoundSkipped(
                f"{len(partials)} signed partials, the threshold is {self.manifest.quorum}",
                faulty=faulty,
            )
        return partials


def _check_verdict(
    verdict: ValidationVerdict, member_id: str, participants: tuple[str, ...]
) -> None:
    if verdict.member_id != member_id or verdict.participants != participants:
        raise VerificationError(f"the verdict of {member_id!r} names another member or set")
