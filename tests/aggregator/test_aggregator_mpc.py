"""MPC mode at the committee, in process: shares in, the norm check inside MPC (real CrypTen
parties over gloo with a TTP, one subprocess per member), signed partials, reconstruction
and confirmation, against the plaintext oracle.

The data owners' uploads are built as a hospital builds them
(:func:`cohort.federation.modes.mpc.owner.share_payloads`, signed for the committee and
sealed to each member alone); the coordinator's side is played step by step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from committee_testkit import (
    LENGTH,
    MEMBER_IDS,
    OWNER_IDS,
    Coordinator,
    MakeMember,
    MakeSigned,
    Owner,
)

from cohort.aggregator.control import ConfirmBody, SignedPartial, ValidateBody
from cohort.aggregator.member import AggregateResult, CommitteeMember
from cohort.aggregator.modes import MpcMode, MpcSpec
from cohort.aggregator.mpc_member import NORM_CHECK_TIMEOUT_S, warm_norm_checks
from cohort.aggregator.mpc_records import ValidationVerdict, mpc_terms_digest, partial_digest
from cohort.crypto.fixed_point import FRAC_BITS, PRIME, FieldEncoding
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.shamir import ShamirScheme
from cohort.crypto.share_payload import pack_field, unpack_field
from cohort.crypto.upload import build_upload
from cohort.errors import CohortError, ProtocolAbort, VerificationError
from cohort.federation.deploy_local import free_ports
from cohort.federation.manifest import MpcTerms, SecureMode, SignedManifest
from cohort.federation.modes.mpc.owner import share_payloads

BOUND = 10.0
SCALE = 50.0  # a model-replacement update: the honest one scaled up


@pytest.fixture
def study(make_signed: MakeSigned) -> SignedManifest:
    ports = free_ports(len(MEMBER_IDS))
    return make_signed(
        secure=SecureMode.MPC,
        mpc=MpcTerms(PRIME, FRAC_BITS, BOUND, tuple(f"127.0.0.1:{p}" for p in ports)),
    )


@pytest.fixture
def mpc_members(
    make_member: MakeMember, study: SignedManifest, signer: Any
) -> tuple[Coordinator, list[CommitteeMember]]:
    coord = Coordinator(signer, study, MpcSpec(mpc_terms_digest(study.manifest)))
    made = []
    for mid in MEMBER_IDS:
        m = make_member(mid, approved=(study,))
        coord.configure(m)
        coord.open_round(m, 1)
        made.append(m)
    return coord, made


def _upload(
    study: SignedManifest, owner: Owner, vector: np.ndarray, members: Sequence[Any]
) -> None:
    manifest = study.manifest
    payloads = share_payloads(manifest, sender=owner.party_id, round=1, update=vector)
    committee = [e.identity for e in manifest.committee]
    for member in members:
        upload = build_upload(
            owner.identity,
            committee,
            member.info.identity,
            study_id=study.study_id,
            round=1,
            payload=payloads[member.member_id],
        )
        member.accept(upload.to_bytes()).raise_if_rejected()


def _validate(
    coord: Coordinator, members: Sequence[CommitteeMember], ids: Sequence[str]
) -> list[ValidationVerdict]:
    participants = tuple(sorted(m.member_id for m in members))
    body = ValidateBody(1, tuple(sorted(ids)), participants)
    with ThreadPoolExecutor(len(members)) as pool:
        futures = [pool.submit(m.validate, coord.control(m.member_id, body)) for m in members]
        return [f.result() for f in futures]


def _confirm(
    coord: Coordinator,
    member: CommitteeMember,
    ids: Sequence[str],
    partials: Sequence[AggregateResult],
) -> AggregateResult:
    body = ConfirmBody(
        1,
        tuple(sorted(ids)),
        (),
        tuple(SignedPartial(p.member_id, p.aggregate, p.signature) for p in partials),
    )
    return member.confirm(coord.control(member.member_id, body))


def _signed_lie(
    study: SignedManifest, partial: AggregateResult, member_keys: dict[str, Any]
) -> AggregateResult:
    """``partial`` moved off the sum polynomial (+1 everywhere) and signed, with its own
    key, by the member that made it: a lying member, not an outsider's forgery."""
    forged = pack_field((unpack_field(partial.aggregate, LENGTH, PRIME) + 1) % PRIME, PRIME)
    signature = member_keys[partial.member_id].identity.sign(
        partial_digest(
            study_id=study.study_id,
            round=1,
            member_id=partial.member_id,
            client_ids=tuple(sorted(OWNER_IDS)),
            partial_hash=tagged_hash(Tag.AGGREGATE, forged),
        )
    )
    return dataclasses.replace(partial, aggregate=forged, signature=signature)


def _oracle(study: SignedManifest, vectors: Sequence[np.ndarray]) -> np.ndarray:
    encoding = FieldEncoding()
    clients = len(study.manifest.owners)
    total = np.zeros(LENGTH, dtype=np.int64)
    for v in vectors:
        total = (total + encoding.encode(v, clients=clients)) % PRIME
    return encoding.decode(total)


def test_a_scaled_up_update_is_rejected_inside_mpc_and_the_rest_sum_exactly(
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
) -> None:
    coord, members = mpc_members
    honest, attacker = OWNER_IDS[:-1], OWNER_IDS[-1]
    vectors = {pid: owners[pid].vector * 0.1 for pid in OWNER_IDS}  # norm ~0.35, bound 10
    vectors[attacker] = vectors[attacker] * SCALE  # norm ~17, in the field range: replacement
    assert (
        np.linalg.norm(vectors[attacker]) > BOUND > max(np.linalg.norm(vectors[p]) for p in honest)
    )
    for pid in OWNER_IDS:
        _upload(study, owners[pid], vectors[pid], members)
    # Two of the three members run the check (t = 2): only the bits are opened.
    verdicts = _validate(coord, members[:2], OWNER_IDS)
    assert {v.rejected for v in verdicts} == {(attacker,)}
    assert {v.accepted for v in verdicts} == {tuple(sorted(honest))}
    for v in verdicts:
        v.verify(next(m for m in members if m.member_id == v.member_id).info.identity)
    # The members refuse to aggregate the rejected owner, and anyone they did not check.
    with pytest.raises(ProtocolAbort, match="validation_failed"):
        coord.aggregate(members[0], 1, OWNER_IDS)
    with pytest.raises(ProtocolAbort, match="not_validated"):
        coord.aggregate(members[2], 1, honest)
    partials = [coord.aggregate(m, 1, honest) for m in members[:2]]
    result = _confirm(coord, members[0], honest, partials)
    again = _confirm(coord, members[1], honest, partials)
    assert result.aggregate == again.aggregate
    assert result.eth_signature
    total = FieldEncoding().decode(unpack_field(result.aggregate, LENGTH, PRIME))
    assert np.array_equal(total, _oracle(study, [vectors[p] for p in honest]))
    expected = sum(np.asarray(vectors[p], dtype=np.float64) for p in honest)
    assert np.max(np.abs(total - expected)) <= len(honest) * 2.0 ** -(FRAC_BITS + 1)


def test_a_member_down_leaves_a_threshold_that_still_sums(
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
) -> None:
    """k - t = 1 member never took part (down since the upload): the other two validate,
    sum and reconstruct the exact sum on their own."""
    coord, members = mpc_members
    up = [members[0], members[2]]
    vectors = [owners[p].vector * 0.1 for p in OWNER_IDS]
    for pid, vector in zip(OWNER_IDS, vectors, strict=True):
        _upload(study, owners[pid], vector, up)
    verdicts = _validate(coord, up, OWNER_IDS)
    assert all(v.rejected == () for v in verdicts)
    partials = [coord.aggregate(m, 1, OWNER_IDS) for m in up]
    result = _confirm(coord, up[1], OWNER_IDS, partials)
    total = FieldEncoding().decode(unpack_field(result.aggregate, LENGTH, PRIME))
    assert np.array_equal(total, _oracle(study, vectors))


def test_a_wrong_partial_is_detected_and_with_redundancy_named(
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
    member_keys: dict[str, Any],
) -> None:
    coord, members = mpc_members
    for pid in OWNER_IDS:
        _upload(study, owners[pid], owners[pid].vector * 0.1, members)
    _validate(coord, members, OWNER_IDS)
    partials = [coord.aggregate(m, 1, OWNER_IDS) for m in members]
    lying = partials[2]
    partials[2] = _signed_lie(study, lying, member_keys)  # member-3 lies, signing it
    # k = 3, t = 2: three points, one wrong, and no way to tell which: detected, refused.
    with pytest.raises(VerificationError, match="cannot be located"):
        _confirm(coord, members[0], OWNER_IDS, partials)
    # An unsigned alteration is refused as such.
    unsigned = dataclasses.replace(lying, aggregate=partials[2].aggregate)
    with pytest.raises(VerificationError, match="not signed"):
        _confirm(coord, members[0], OWNER_IDS, [partials[0], unsigned])


def test_with_five_members_and_threshold_three_the_liar_is_named() -> None:
    """The coordinator's opening step (the members run the same one at Confirm):
    n = 5 >= t + 2e = 5 locates one wrong partial."""
    ids = tuple(f"member-{i}" for i in range(1, 6))
    scheme = ShamirScheme(5, 3)
    opener = MpcMode(study_id="ab" * 32, members=ids, member_id=ids[0], scheme=scheme)
    rng = np.random.default_rng(0)
    secret = rng.integers(0, PRIME, 64)
    coefficients = rng.integers(0, PRIME, (2, 64))
    points = {
        ids[i]: pack_field(
            (secret + coefficients[0] * (i + 1) + coefficients[1] * (i + 1) ** 2) % PRIME, PRIME
        )
        for i in range(5)
    }
    good = opener.open_partials(points, length=64)
    assert good.wrong == ()
    assert np.array_equal(unpack_field(good.aggregate, 64, PRIME), secret)
    bad = dict(points)
    bad["member-4"] = pack_field((unpack_field(points["member-4"], 64, PRIME) + 7) % PRIME, PRIME)
    opened = opener.open_partials(bad, length=64)
    assert opened.wrong == ("member-4",)
    assert np.array_equal(unpack_field(opened.aggregate, 64, PRIME), secret)


def test_configure_refuses_terms_other_than_the_manifests(
    make_member: MakeMember, study: SignedManifest, signer: Any
) -> None:
    member = make_member(MEMBER_IDS[0], approved=(study,))
    coord = Coordinator(signer, study, MpcSpec(b"\x00" * 32))
    with pytest.raises(CohortError, match="bad_setup"):
        coord.configure(member)


def test_a_member_answers_a_repeated_check_from_its_record_and_limits_new_ones(
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
) -> None:
    """Each check opens a bit per owner: a coordinator must not be able to ask without end
    (with a participant that shifts its share, that would probe an update's norm)."""
    coord, members = mpc_members
    for pid in OWNER_IDS:
        _upload(study, owners[pid], owners[pid].vector * 0.1, members)
    first = _validate(coord, members[:2], OWNER_IDS)
    again = _validate(coord, members[:2], OWNER_IDS)  # the same request: from the record
    assert [v.signature for v in again] == [v.signature for v in first]
    _validate(coord, members[1:], OWNER_IDS)  # a retry with other participants: allowed
    third = ValidateBody(1, tuple(sorted(OWNER_IDS[:3])), ("member-2", "member-3"))
    with pytest.raises(VerificationError, match="validation_limit"):
        members[1].validate(coord.control("member-2", third))


def test_validate_and_confirm_refuse_what_the_manifest_and_the_store_do_not_back(
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
) -> None:
    """A coordinator choosing participants or client sets of its own: refused before any
    MPC runs (no party process starts, nothing is opened)."""
    coord, members = mpc_members
    first = members[0]
    for pid in OWNER_IDS[:2]:
        _upload(study, owners[pid], owners[pid].vector * 0.1, members)

    def ask(
        *,
        participants: tuple[str, ...],
        client_ids: tuple[str, ...] = tuple(OWNER_IDS[:2]),
        round: int = 1,
    ) -> None:
        body = ValidateBody(round, client_ids, participants)
        first.validate(coord.control(first.member_id, body))

    with pytest.raises(CohortError, match=r"bad_participants.*threshold"):
        ask(participants=("member-1",))  # below t = 2
    with pytest.raises(CohortError, match=r"bad_participants.*not among"):
        ask(participants=("member-2", "member-3"))  # asked of a non-participant
    with pytest.raises(CohortError, match=r"bad_participants.*not a committee member"):
        ask(participants=("member-1", "zz-mallory"))
    with pytest.raises(CohortError, match=r"bad_participants.*sorted"):
        ask(participants=("member-2", "member-1"))
    with pytest.raises(CohortError, match="missing_uploads"):
        ask(client_ids=tuple(sorted(OWNER_IDS[:3])), participants=("member-1", "member-2"))
    with pytest.raises(CohortError, match="not_in_roster"):
        ask(client_ids=("hospital-x",), participants=("member-1", "member-2"))
    with pytest.raises(CohortError, match="round_not_open"):
        ask(round=2, participants=("member-1", "member-2"))
    # Confirm before this member aggregated anything, or over another client set: refused.
    with pytest.raises(CohortError, match="not_aggregated"):
        _confirm(coord, first, OWNER_IDS[:2], [])


def test_a_member_confirms_one_sum_per_round_also_after_a_restart(
    make_member: MakeMember,
    study: SignedManifest,
    mpc_members: tuple[Coordinator, list[CommitteeMember]],
    owners: dict[str, Owner],
    member_keys: dict[str, Any],
) -> None:
    """With t = 2 any two partials define a sum, and a member's own point lies on every
    line through it: a coordinator holding a liar's signed partial could have one member
    attest two sums. The first confirmed sum is kept on disk; a restart does not free it."""
    coord, members = mpc_members
    for pid in OWNER_IDS:
        _upload(study, owners[pid], owners[pid].vector * 0.1, members)
    _validate(coord, members, OWNER_IDS)
    partials = [coord.aggregate(m, 1, OWNER_IDS) for m in members]
    liar = _signed_lie(study, partials[2], member_keys)  # member-3 lies, signing it
    honest = _confirm(coord, members[0], OWNER_IDS, partials[:2])
    assert _confirm(coord, members[0], OWNER_IDS, partials[:2]).aggregate == honest.aggregate
    with pytest.raises(ProtocolAbort, match="confirm_conflict"):
        _confirm(coord, members[0], OWNER_IDS, [partials[0], liar])
    members[0].close()
    restarted = make_member(MEMBER_IDS[0], approved=(study,))
    with pytest.raises(ProtocolAbort, match="confirm_conflict"):
        _confirm(coord, restarted, OWNER_IDS, [partials[0], liar])
    assert _confirm(coord, restarted, OWNER_IDS, partials[:2]).aggregate == honest.aggregate


def test_a_serving_member_warms_its_norm_checks_up_for_mpc_studies_only(
    make_member: MakeMember, study: SignedManifest, signer: Any, coord: Coordinator
) -> None:
    """``on_mpc_study`` runs when an MPC study is configured or reloaded after a restart,
    never for a CKKS one; the warm-up starts the forkserver once, in the background."""
    calls: list[str] = []
    mpc = make_member(MEMBER_IDS[0], approved=(study,), on_mpc_study=lambda: calls.append("mpc"))
    assert calls == []
    Coordinator(signer, study, MpcSpec(mpc_terms_digest(study.manifest))).configure(mpc)
    assert calls == ["mpc"]
    mpc.close()
    make_member(MEMBER_IDS[0], approved=(study,), on_mpc_study=lambda: calls.append("again"))
    assert calls == ["mpc", "again"]
    ckks = make_member(MEMBER_IDS[1], on_mpc_study=lambda: calls.append("ckks"))
    coord.configure(ckks)  # the default study: CKKS
    assert calls == ["mpc", "again"]
    thread = warm_norm_checks()
    assert warm_norm_checks() is thread
    thread.join(timeout=NORM_CHECK_TIMEOUT_S)
    assert not thread.is_alive()
