"""Signed control calls: who may configure, open, aggregate and ask for status, and what the
member checks against its operator's approved manifest before it acts."""

from __future__ import annotations

import dataclasses

import pytest
from committee_testkit import (
    DEALER,
    Coordinator,
    MakeMember,
    MakeSigned,
    Owner,
    SealFn,
    dealt_setup,
    entry_for,
)

from cohort.aggregator.control import (
    AggregateBody,
    ConfigureBody,
    ControlBody,
    ControlKind,
    ControlSigner,
    OpenRoundBody,
    Refusal,
    SignedControl,
    StatusBody,
    control_digest,
)
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import CommitteeMember, PublicStatus
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, ProtocolAbort, VerificationError

U64_MAX = 2**64 - 1


def _resign(control: SignedControl, identity: Identity, **changes: object) -> SignedControl:
    """A control with ``changes`` applied, signed again by ``identity`` for member-1."""
    changed = dataclasses.replace(control, **changes)  # type: ignore[arg-type]
    digest = control_digest(
        study_id=changed.study_id,
        recipient="member-1",
        kind=changed.kind,
        counter=changed.counter,
        body=changed.body,
    )
    return dataclasses.replace(changed, signature=identity.sign(digest))


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("kind", ["open_round", "aggregate", "status"])
def test_unsigned_and_wrongly_signed_calls_change_nothing(
    kind: str, member: CommitteeMember, coord: Coordinator, seal: SealFn
) -> None:
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    bodies: dict[str, ControlBody] = {
        "open_round": OpenRoundBody(2),
        "aggregate": AggregateBody(1, ("hospital-a", "hospital-b")),
        "status": StatusBody(),
    }
    body = bodies[kind]
    call = getattr(member, kind)
    good = coord.control("member-1", body)
    mallory = ControlSigner(Identity.generate("coordinator", seed=b"\x66" * 32))
    for bad in (
        dataclasses.replace(good, signature=b""),
        dataclasses.replace(good, signature=bytes(64)),
        mallory.sign(coord.study_id, "member-1", body),
        coord.control("member-2", body),  # signed for another member
        dataclasses.replace(good, body=good.body + b"\x08\x02"),  # body changed in transit
        dataclasses.replace(good, counter=good.counter + 1),
    ):
        with pytest.raises(VerificationError, match=Refusal.BAD_CONTROL_SIGNATURE.value):
            call(bad)
    status = coord.status(member)
    assert (status.open_round, status.aggregated) == (1, ())
    call(coord.control("member-1", body))  # a genuine call still works afterwards


def test_replayed_and_older_calls_are_refused(
    member: CommitteeMember, coord: Coordinator, coordinator: Identity
) -> None:
    earlier = coord.control("member-1", StatusBody())
    opened = coord.control("member-1", OpenRoundBody(2))
    member.open_round(opened)
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        member.open_round(opened)  # replay
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        member.status(earlier)  # signed before the last accepted call, delivered after
    low = ControlSigner(coordinator, clock=lambda: 5)  # a signer with its clock far behind
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        member.open_round(low.sign(coord.study_id, "member-1", OpenRoundBody(3)))
    assert coord.status(member).highest_round == 2


def test_a_call_of_one_kind_cannot_be_used_as_another(
    member: CommitteeMember, coord: Coordinator
) -> None:
    control = coord.control("member-1", OpenRoundBody(2))
    with pytest.raises(BadInputError, match=Refusal.WRONG_KIND.value):
        member.aggregate(control)
    # the kind is signed: relabelling breaks the signature
    relabelled = dataclasses.replace(control, kind=ControlKind.AGGREGATE)
    with pytest.raises(VerificationError, match=Refusal.BAD_CONTROL_SIGNATURE.value):
        member.aggregate(relabelled)


def test_a_malformed_body_is_refused_after_its_signature_and_burns_the_counter(
    member: CommitteeMember, coord: Coordinator, coordinator: Identity
) -> None:
    template = coord.control("member-1", OpenRoundBody(2))
    junk = _resign(template, coordinator, body=b"\xff\xff\xff")
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_CONTROL.value):
        member.open_round(junk)
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        member.open_round(template)  # signed before the junk, so its counter is lower
    nan = coord.control("member-1", OpenRoundBody(2, float("nan")))
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_CONTROL.value):
        member.open_round(nan)


def test_calls_for_a_study_the_member_does_not_hold(
    member: CommitteeMember, coord: Coordinator
) -> None:
    other = coord.control("member-1", StatusBody(), study_id="cd" * 32)
    with pytest.raises(ProtocolAbort, match=Refusal.NOT_CONFIGURED.value):
        member.status(other)


def test_wire_decoding_of_the_control_envelope(coord: Coordinator) -> None:
    control = coord.control("member-1", StatusBody())
    assert SignedControl.from_proto(control.to_proto()) == control
    assert "bytes>" in repr(control)
    bad_study = pb.SignedControl(study_id="not-a-hash", kind="status", signature=bytes(64))
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_CONTROL.value):
        SignedControl.from_proto(bad_study)
    bad_kind = pb.SignedControl(study_id="ab" * 32, kind="reset", signature=bytes(64))
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_CONTROL.value):
        SignedControl.from_proto(bad_kind)


@pytest.mark.parametrize("field", ["study_id", "recipient", "kind", "counter", "body"])
def test_the_control_digest_covers_every_field(field: str) -> None:
    base: dict[str, object] = {
        "study_id": "ab" * 32,
        "recipient": "member-1",
        "kind": ControlKind.OPEN_ROUND,
        "counter": 7,
        "body": b"\x08\x01",
    }
    other = dict(base)
    other[field] = {
        "study_id": "cd" * 32,
        "recipient": "member-2",
        "kind": ControlKind.AGGREGATE,
        "counter": 8,
        "body": b"\x08\x02",
    }[field]
    assert control_digest(**base) != control_digest(**other)  # type: ignore[arg-type]


def test_signer_counters_rise_across_calls_and_restarts(coordinator: Identity) -> None:
    stalled = ControlSigner(coordinator, clock=lambda: 1_000)
    assert [stalled.next_counter() for _ in range(3)] == [1_000, 1_001, 1_002]
    first = ControlSigner(coordinator)
    last = max(first.next_counter() for _ in range(100))
    restarted = ControlSigner(coordinator)  # a coordinator restart: a fresh signer
    assert restarted.next_counter() > last


# --------------------------------------------------------------------------- configure


def test_configure_needs_the_operators_approval(
    make_member: MakeMember, coord: Coordinator
) -> None:
    m = make_member("member-1", approved=())
    with pytest.raises(VerificationError, match=Refusal.NOT_APPROVED.value):
        coord.configure(m)


def test_configure_must_be_signed_by_the_manifests_coordinator(
    make_member: MakeMember, coord: Coordinator, sponsor: Identity
) -> None:
    m = make_member("member-1")
    impostor = Coordinator(ControlSigner(sponsor), coord.signed, coord.setup)
    with pytest.raises(VerificationError, match=Refusal.BAD_CONTROL_SIGNATURE.value):
        impostor.configure(m)
    coord.configure(m)


def test_configure_carries_the_approved_manifest(
    make_member: MakeMember, coord: Coordinator, make_signed: MakeSigned
) -> None:
    other = make_signed()
    m = make_member("member-1")
    body = ConfigureBody(other.to_bytes(), coord.setup)
    with pytest.raises(VerificationError, match=Refusal.MANIFEST_MISMATCH.value):
        m.configure(coord.control("member-1", body))  # signed under the approved study id


def test_configure_checks_the_members_attestation_address(
    make_member: MakeMember,
    member_keys: dict[str, MemberKeys],
    make_signed: MakeSigned,
    coord: Coordinator,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
) -> None:
    entries = [entry_for(member_keys[m]) for m in ("member-1", "member-2", "member-3")]
    entries[0] = dataclasses.replace(entries[0], eth_address=member_keys["member-2"].eth_address)
    wrong = make_signed(committee=entries)
    setup = dealt_setup(owners[DEALER].identity, wrong.study_id, ckks.public().to_bytes())
    m = make_member("member-1", approved=[wrong])
    with pytest.raises(VerificationError, match=Refusal.NOT_IN_COMMITTEE.value):
        Coordinator(coord.signer, wrong, setup).configure(m)


def test_the_context_must_be_dealt_by_the_manifests_key_dealer(
    make_member: MakeMember,
    coord: Coordinator,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    make_signed: MakeSigned,
) -> None:
    m = make_member("member-1")
    context = ckks.public().to_bytes()
    study = coord.study_id
    for bad in (
        dealt_setup(owners["hospital-b"].identity, study, context),  # an owner, not the dealer
        dealt_setup(owners[DEALER].identity, make_signed().study_id, context),  # other study
        CkksSpec(context),  # no signature at all
        CkksSpec(CkksSecretContext.generate().public().to_bytes(), coord.setup.dealer_signature),  # type: ignore[attr-defined]
    ):
        with pytest.raises(VerificationError, match=Refusal.BAD_DEALER_SIGNATURE.value):
            coord.configure(m, setup=bad)
    leaky = dealt_setup(owners[DEALER].identity, study, ckks.to_bytes())
    with pytest.raises(BadInputError, match=Refusal.BAD_SETUP.value):
        coord.configure(m, setup=leaky)  # the dealer itself sent the secret key: refused
    coord.configure(m)


def test_configure_again_is_a_no_op_and_there_is_no_reset(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    owners: dict[str, Owner],
) -> None:
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    assert coord.configure(member) == coord.study_id  # same set-up: a safe retry
    other = CkksSecretContext.generate().public().to_bytes()
    swapped = dealt_setup(owners[DEALER].identity, coord.study_id, other)
    with pytest.raises(ProtocolAbort, match=Refusal.SETUP_CONFLICT.value):
        coord.configure(member, setup=swapped)  # even a dealer-signed second context
    assert "reset" not in pb.ConfigureBody.DESCRIPTOR.fields_by_name
    status = coord.status(member)
    assert (status.open_round, status.received) == (1, ("hospital-a",))


def test_a_member_holds_several_studies(
    make_member: MakeMember,
    coord: Coordinator,
    make_signed: MakeSigned,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    seal: SealFn,
) -> None:
    second = make_signed()
    setup = dealt_setup(owners[DEALER].identity, second.study_id, ckks.public().to_bytes())
    other = Coordinator(coord.signer, second, setup)
    m = make_member("member-1", approved=[coord.signed, second])
    coord.configure(m)
    other.configure(m)
    coord.open_round(m, 1)
    other.open_round(m, 3)
    m.accept(seal("hospital-a", m.info)).raise_if_rejected()
    m.accept(seal("hospital-b", m.info, round=3, study_id=second.study_id)).raise_if_rejected()
    assert coord.status(m).received == ("hospital-a",)
    assert other.status(m).received == ("hospital-b",)
    assert (coord.status(m).open_round, other.status(m).open_round) == (1, 3)


# --------------------------------------------------------------------------- rounds


@pytest.mark.parametrize("number", [0, 6, 10_000, U64_MAX])
def test_rounds_outside_the_manifest_are_refused_without_locking_the_member(
    number: int, make_member: MakeMember, coord: Coordinator, seal: SealFn
) -> None:
    m = make_member("member-1")
    coord.configure(m)
    with pytest.raises(BadInputError, match=Refusal.ROUND_OUT_OF_RANGE.value):
        coord.open_round(m, number)
    assert coord.status(m).highest_round == 0
    assert coord.open_round(m, 1) == 1  # not locked out
    assert m.accept(seal("hospital-a", m.info)).accepted


def test_rounds_only_move_forward(member: CommitteeMember, coord: Coordinator) -> None:
    assert coord.open_round(member, 1) == 1  # the open round again: a retry
    coord.open_round(member, 3)  # abandons round 1
    for older in (1, 2):
        with pytest.raises(ProtocolAbort, match=Refusal.ROUND_NOT_AFTER.value):
            coord.open_round(member, older)
    assert coord.status(member).open_round == 3


# --------------------------------------------------------------------------- status


def test_status_is_signed_and_info_shows_no_study_state(
    member: CommitteeMember, coord: Coordinator, seal: SealFn
) -> None:
    member.accept(seal("hospital-c", member.info)).raise_if_rejected()
    assert coord.status(member).received == ("hospital-c",)
    unsigned = dataclasses.replace(coord.control("member-1", StatusBody()), signature=b"")
    with pytest.raises(VerificationError, match=Refusal.BAD_CONTROL_SIGNATURE.value):
        member.status(unsigned)
    public = member.public_status()
    assert [f.name for f in dataclasses.fields(PublicStatus)] == [
        "info",
        "modes",
        "tls_fingerprint",
    ]
    assert "hospital-c" not in repr(public)
    assert set(pb.InfoReply.DESCRIPTOR.fields_by_name) == {"member", "modes", "tls_fingerprint"}
