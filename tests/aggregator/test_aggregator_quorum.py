"""Quorum over signed member results: honest agreement, a tampering member named, bad
signatures, equivocation, attestation checks, too few members."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from committee_testkit import IDS, MEMBER_IDS, Coordinator, SealFn

from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import AggregateResult, CommitteeMember, aggregate_result_digest
from cohort.aggregator.quorum import (
    AttestationCheck,
    FaultReason,
    QuorumNotReached,
    decide,
)
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import verify_signature
from cohort.errors import ConfigError, ProtocolAbort


@pytest.fixture
def results(
    members: list[CommitteeMember], coord: Coordinator, seal: SealFn
) -> list[AggregateResult]:
    for m in members:
        for pid in IDS:
            m.accept(seal(pid, m.info)).raise_if_rejected()
    return [coord.aggregate(m, 1, IDS) for m in members]


def _decide(results: list[AggregateResult], members: list[CommitteeMember], **kw: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "quorum": 2,
        "roster": [m.info for m in members],
        "study_id": results[0].study_id if results else "ab" * 32,
        "round": 1,
        "client_ids": list(IDS),
    }
    args.update(kw)
    return decide(results, **args)  # type: ignore[arg-type]


def _resign(result: AggregateResult, keys: MemberKeys, aggregate: bytes) -> AggregateResult:
    """What a malicious member does: change the aggregate and sign the new hash properly."""
    new_hash = tagged_hash(Tag.AGGREGATE, aggregate)
    digest = aggregate_result_digest(
        study_id=result.study_id,
        round=result.round,
        client_ids=result.client_ids,
        aggregate_hash=new_hash,
    )
    return dataclasses.replace(
        result, aggregate=aggregate, aggregate_hash=new_hash, signature=keys.identity.sign(digest)
    )


def test_all_honest(results: list[AggregateResult], members: list[CommitteeMember]) -> None:
    decision = _decide(results, members)
    assert decision.agreeing == MEMBER_IDS
    assert decision.faulty == ()
    assert decision.missing == ()
    assert decision.aggregate == results[0].aggregate
    assert [a.member_id for a in decision.attestations] == list(MEMBER_IDS)
    assert all(len(a.signature) == 65 for a in decision.attestations)


def test_roster_as_a_mapping_of_identities(
    results: list[AggregateResult],
    members: list[CommitteeMember],
    coord: Coordinator,
) -> None:
    roster = {m.member_id: m.info.identity for m in members}
    check = AttestationCheck.for_manifest(coord.signed.manifest, IDS)
    decision = _decide(results, members, roster=roster, attestation=check)
    assert decision.agreeing == MEMBER_IDS
    for m in members:
        digest = aggregate_result_digest(
            study_id=coord.study_id,
            round=1,
            client_ids=IDS,
            aggregate_hash=decision.aggregate_hash,
        )
        verify_signature(m.info.identity, digest, decision.signatures[m.member_id])
    forged = dataclasses.replace(results[2], eth_signature=results[0].eth_signature)
    decision = _decide([results[0], results[1], forged], members, roster=roster, attestation=check)
    assert decision.faulty_reasons == {"member-3": "bad_attestation: " + decision.faulty[0].detail}
    with pytest.raises(ConfigError, match="another identity"):
        _decide(results, members, roster={"member-1": members[1].info.identity})


def test_tampering_member_is_outvoted_and_named(
    results: list[AggregateResult],
    members: list[CommitteeMember],
    member_keys: dict[str, MemberKeys],
    ckks: CkksSecretContext,
) -> None:
    bad = _resign(results[2], member_keys["member-3"], ckks.encrypt(np.full(12, 9.0)))
    decision = _decide([results[0], results[1], bad], members)
    assert decision.agreeing == ("member-1", "member-2")
    assert decision.aggregate_hash == results[0].aggregate_hash
    assert [(f.member_id, f.reason) for f in decision.faulty] == [
        ("member-3", FaultReason.DISAGREES)
    ]
    assert [a.member_id for a in decision.attestations] == ["member-1", "member-2"]


def test_every_two_subset_gives_the_same_decision(
    results: list[AggregateResult], members: list[CommitteeMember]
) -> None:
    decisions = [_decide(list(pair), members) for pair in itertools.combinations(results, 2)]
    assert len({(d.aggregate_hash, d.aggregate) for d in decisions}) == 1
    for d, missing in zip(decisions, ["member-3", "member-2", "member-1"], strict=True):
        assert d.missing == (missing,)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("bytes_in_transit", FaultReason.HASH_MISMATCH),
        ("signature_of_another_member", FaultReason.BAD_SIGNATURE),
        ("zero_signature", FaultReason.BAD_SIGNATURE),
        ("wrong_round", FaultReason.WRONG_CONTEXT),
        ("wrong_clients", FaultReason.WRONG_CONTEXT),
        ("not_a_member", FaultReason.UNKNOWN_MEMBER),
        ("foreign_eth_address", FaultReason.BAD_ATTESTATION),
    ],
)
def test_invalid_results_are_faulty(
    results: list[AggregateResult],
    members: list[CommitteeMember],
    tamper: str,
    reason: FaultReason,
) -> None:
    r = results[2]
    changes: dict[str, object] = {
        "bytes_in_transit": {"aggregate": r.aggregate[:-1] + bytes([r.aggregate[-1] ^ 1])},
        "signature_of_another_member": {"signature": results[0].signature},
        "zero_signature": {"signature": bytes(64)},
        "wrong_round": {"round": 2},
        "wrong_clients": {"client_ids": ("hospital-a", "hospital-b")},
        "not_a_member": {"member_id": "member-9"},
        "foreign_eth_address": {"eth_address": results[0].eth_address},
    }[tamper]  # type: ignore[assignment]
    bad = dataclasses.replace(r, **changes)  # type: ignore[arg-type]
    decision = _decide([results[0], results[1], bad], members)
    assert decision.agreeing == ("member-1", "member-2")
    assert [(f.member_id, f.reason) for f in decision.faulty] == [(bad.member_id, reason)]


def test_attestation_signatures_are_checked_when_asked(
    results: list[AggregateResult], members: list[CommitteeMember], coord: Coordinator
) -> None:
    check = AttestationCheck.for_manifest(coord.signed.manifest, IDS)
    assert check == AttestationCheck.for_manifest(coord.signed.manifest, IDS[::-1])
    assert _decide(results, members, attestation=check).faulty == ()
    swapped = dataclasses.replace(results[2], eth_signature=results[0].eth_signature)
    decision = _decide([results[0], results[1], swapped], members, attestation=check)
    assert [(f.member_id, f.reason) for f in decision.faulty] == [
        ("member-3", FaultReason.BAD_ATTESTATION)
    ]


def test_equivocating_member_is_not_counted(
    results: list[AggregateResult],
    members: list[CommitteeMember],
    member_keys: dict[str, MemberKeys],
    ckks: CkksSecretContext,
) -> None:
    other = _resign(results[2], member_keys["member-3"], ckks.encrypt(np.full(12, 1.0)))
    decision = _decide([results[0], results[2], other, results[1]], members)
    assert decision.agreeing == ("member-1", "member-2")
    assert [(f.member_id, f.reason) for f in decision.faulty] == [
        ("member-3", FaultReason.EQUIVOCATION)
    ]
    # the same result twice is harmless
    assert _decide([results[0], results[0], results[1]], members).agreeing == (
        "member-1",
        "member-2",
    )


def test_fewer_than_quorum_aborts(
    results: list[AggregateResult],
    members: list[CommitteeMember],
    member_keys: dict[str, MemberKeys],
    ckks: CkksSecretContext,
) -> None:
    with pytest.raises(ProtocolAbort, match="needs 2"):
        _decide([results[0]], members)
    with pytest.raises(QuorumNotReached):
        _decide([], members)
    bad2 = _resign(results[1], member_keys["member-2"], ckks.encrypt(np.full(12, 2.0)))
    bad3 = dataclasses.replace(results[2], signature=bytes(64))
    with pytest.raises(QuorumNotReached) as info:
        _decide([results[0], bad2, bad3], members)
    assert [f.member_id for f in info.value.faults] == ["member-3"]
    # quorum 3 with one tamperer cannot be reached either
    with pytest.raises(QuorumNotReached):
        _decide([results[0], results[1], bad3], members, quorum=3)


def test_quorum_must_fit_the_roster(
    results: list[AggregateResult], members: list[CommitteeMember]
) -> None:
    with pytest.raises(ConfigError, match="quorum"):
        _decide(results, members, quorum=4)
    with pytest.raises(ConfigError, match="quorum"):
        _decide(results, members, quorum=0)
    with pytest.raises(ConfigError, match="twice"):
        _decide(results, members, roster=[members[0].info, members[0].info])
