"""CommitteeMember: every rejection reason with a real envelope, aggregation against the
plaintext oracle, round transitions, client-set rules from the manifest, persistence across a
reopen of the same work directory, key store."""

from __future__ import annotations

import dataclasses
import logging
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from committee_testkit import (
    DEALER,
    LENGTH,
    MEMBER_IDS,
    Coordinator,
    MakeMember,
    MakeSigned,
    Owner,
    SealFn,
    dealt_setup,
)

from cohort.aggregator.control import ControlSigner, OpenRoundBody, Refusal
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import (
    CommitteeMember,
    Reason,
    aggregate_result_digest,
    study_id_bytes,
)
from cohort.bounties.attestation import (
    attestation_digest,
    recover_signer,
    unreported_ledger_heads,
)
from cohort.clients.ledger_commitment import LedgerCommitment
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import Envelope, build_envelope
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, seal_to, verify_signature
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError

Sum = Callable[[Sequence[str]], np.ndarray]


def _tamper(data: bytes, **changes: object) -> bytes:
    return dataclasses.replace(Envelope.from_bytes(data), **changes).to_bytes()  # type: ignore[arg-type]


# --------------------------------------------------------------------------- happy path


def test_aggregate_equals_plaintext_sum_and_is_signed(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    owners: dict[str, Owner],
    plain_sum: Sum,
) -> None:
    ids = ["hospital-c", "hospital-a", "hospital-b"]
    for pid in ids:
        verdict = member.accept(seal(pid, member.info))
        assert verdict.accepted, verdict
        assert verdict.reason is None
        assert len(verdict.payload_hash) == 32
    result = coord.aggregate(member, 1, ids)
    assert result.client_ids == ("hospital-a", "hospital-b", "hospital-c")
    np.testing.assert_allclose(ckks.decrypt(result.aggregate)[:LENGTH], plain_sum(ids), atol=1e-3)
    assert result.aggregate_hash == tagged_hash(Tag.AGGREGATE, result.aggregate)
    study = coord.study_id
    digest = aggregate_result_digest(
        study_id=study, round=1, client_ids=result.client_ids, aggregate_hash=result.aggregate_hash
    )
    verify_signature(member.info.identity, digest, result.signature)
    manifest = coord.signed.manifest
    eth_digest = attestation_digest(
        chain_id=manifest.chain_id,
        contract=manifest.contract,
        study_id=study_id_bytes(study),
        round=1,
        aggregate_hash=result.aggregate_hash,
        contributors=[owners[i].payout for i in ids],
        ledger_heads=unreported_ledger_heads([owners[i].payout for i in ids]),
    )
    assert recover_signer(eth_digest, result.eth_signature) == member.info.eth_address
    assert result.eth_address == member.info.eth_address
    assert result.rejections == ()
    assert "bytes>" in repr(result)  # the aggregate is never dumped in a repr


def test_member_attests_only_the_owners_signed_ledger_heads(
    member: CommitteeMember, coord: Coordinator, seal: SealFn, owners: dict[str, Owner]
) -> None:
    """The Aggregate call relays each owner's signed (head, epsilon); the member attests
    those that verify and "none reported" for the rest (here a head the coordinator made
    up for hospital-b, signed with another owner's key)."""
    ids = ["hospital-a", "hospital-b", "hospital-c"]
    for pid in ids:
        assert member.accept(seal(pid, member.info)).accepted
    study = coord.study_id
    honest = LedgerCommitment.sign(
        owners["hospital-a"].identity, study_id=study, round=1, head=b"\x0a" * 32, epsilon_micro=7
    )
    forged = dataclasses.replace(
        LedgerCommitment.sign(
            owners["hospital-a"].identity,
            study_id=study,
            round=1,
            head=b"\x0b" * 32,
            epsilon_micro=1,
        ),
        sender="hospital-b",
    )
    result = coord.aggregate(
        member, 1, ids, ledger_commitments=[forged.to_bytes(), honest.to_bytes()]
    )
    manifest = coord.signed.manifest
    payouts = [owners[i].payout for i in ids]
    expected = {**unreported_ledger_heads(payouts), owners["hospital-a"].payout: (b"\x0a" * 32, 7)}
    eth_digest = attestation_digest(
        chain_id=manifest.chain_id,
        contract=manifest.contract,
        study_id=study_id_bytes(study),
        round=1,
        aggregate_hash=result.aggregate_hash,
        contributors=payouts,
        ledger_heads=expected,
    )
    assert recover_signer(eth_digest, result.eth_signature) == member.info.eth_address


def test_honest_members_agree_bit_for_bit(
    members: list[CommitteeMember], coord: Coordinator, seal: SealFn
) -> None:
    ids = ["hospital-a", "hospital-b", "hospital-d"]
    for m in members:
        for pid in ids:
            m.accept(seal(pid, m.info)).raise_if_rejected()
    hashes = {coord.aggregate(m, 1, ids).aggregate_hash for m in members}
    assert len(hashes) == 1


# --------------------------------------------------------------------------- rejections


def _forged(member: CommitteeMember, owners: dict[str, Owner], study: str) -> bytes:
    # Mallory holds her own keys but claims to be hospital-a.
    impostor = Identity.generate("hospital-a", seed=b"\x99" * 32)
    payload = CkksSecretContext.generate().encrypt(owners["hospital-a"].vector)
    return build_envelope(
        impostor, member.info.identity, study_id=study, round=1, payload=payload
    ).to_bytes()


def _unknown_sender(member: CommitteeMember, ckks: CkksSecretContext, study: str) -> bytes:
    mallory = Identity.generate("mallory", seed=b"\x42" * 32)
    payload = ckks.encrypt(np.zeros(LENGTH))
    return build_envelope(
        mallory, member.info.identity, study_id=study, round=1, payload=payload
    ).to_bytes()


def _hash_mismatch(seal: SealFn, member: CommitteeMember, ckks: CkksSecretContext) -> bytes:
    # Signed envelope whose sealed payload was swapped in transit for another valid one.
    other = seal_to(member.info.identity, ckks.encrypt(np.ones(LENGTH)))
    return _tamper(seal("hospital-a", member.info), sealed_payload=other)


CASES: dict[str, tuple[Reason, type[Exception]]] = {
    "garbage_bytes": (Reason.MALFORMED, BadInputError),
    "truncated": (Reason.MALFORMED, BadInputError),
    "wrong_study": (Reason.WRONG_STUDY, VerificationError),
    "wrong_round": (Reason.WRONG_ROUND, ProtocolAbort),
    "wrong_recipient": (Reason.WRONG_RECIPIENT, VerificationError),
    "unknown_sender": (Reason.UNKNOWN_SENDER, VerificationError),
    "forged_signature": (Reason.BAD_SIGNATURE, VerificationError),
    "zero_signature": (Reason.BAD_SIGNATURE, VerificationError),
    "flipped_signature_bit": (Reason.BAD_SIGNATURE, VerificationError),
    "unseal_failure": (Reason.UNSEAL_FAILED, VerificationError),
    "payload_hash_mismatch": (Reason.PAYLOAD_HASH_MISMATCH, VerificationError),
    "wrong_length": (Reason.MODE_CHECK_FAILED, BadInputError),
    "garbage_payload": (Reason.MODE_CHECK_FAILED, BadInputError),
    "foreign_ckks_context": (Reason.MODE_CHECK_FAILED, BadInputError),
}


def _build_case(
    case: str,
    member: CommitteeMember,
    others: list[CommitteeMember],
    seal: SealFn,
    ckks: CkksSecretContext,
    owners: dict[str, Owner],
) -> bytes:
    good = seal("hospital-d", member.info)
    envelope = Envelope.from_bytes(good)
    study = envelope.study_id
    owner = owners["hospital-d"]
    if case == "garbage_bytes":
        return b"\x00not an envelope" * 4
    if case == "truncated":
        return good[: len(good) // 2]
    if case == "wrong_study":
        return seal("hospital-d", member.info, study_id="ab" * 32)
    if case == "wrong_round":
        return seal("hospital-d", member.info, round=2)
    if case == "wrong_recipient":
        return seal("hospital-d", others[1].info)
    if case == "unknown_sender":
        return _unknown_sender(member, ckks, study)
    if case == "forged_signature":
        return _forged(member, owners, study)
    if case == "zero_signature":
        return _tamper(good, signature=bytes(64))
    if case == "flipped_signature_bit":
        sig = bytearray(envelope.signature)
        sig[5] ^= 0x01
        return _tamper(good, signature=bytes(sig))
    if case == "unseal_failure":
        return _tamper(good, sealed_payload=b"\x01" * 200)
    if case == "payload_hash_mismatch":
        return _hash_mismatch(seal, member, ckks)
    if case == "wrong_length":
        return seal("hospital-d", member.info, vector=np.ones(LENGTH - 3))
    if case == "garbage_payload":
        return build_envelope(
            owner.identity, member.info.identity, study_id=study, round=1, payload=b"junk" * 50
        ).to_bytes()
    if case == "foreign_ckks_context":
        payload = CkksSecretContext.generate().encrypt(owner.vector)
        return build_envelope(
            owner.identity, member.info.identity, study_id=study, round=1, payload=payload
        ).to_bytes()
    raise AssertionError(case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rejection_reason_and_the_round_still_aggregates(
    case: str,
    members: list[CommitteeMember],
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    owners: dict[str, Owner],
    plain_sum: Sum,
    caplog: pytest.LogCaptureFixture,
) -> None:
    member = members[0]
    reason, error = CASES[case]
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    bad = _build_case(case, member, members, seal, ckks, owners)
    with caplog.at_level(logging.WARNING, logger="cohort"):
        verdict = member.accept(bad)
    assert not verdict.accepted
    assert verdict.reason is reason, verdict
    assert verdict.detail
    with pytest.raises(error, match=reason.value):
        verdict.raise_if_rejected()
    # logged with a reason code, never with payload bytes
    records = [r for r in caplog.records if r.getMessage() == "upload rejected"]
    assert len(records) == 1
    logged = records[0].fields  # type: ignore[attr-defined]
    assert logged["reason"] == reason.value
    assert logged["member"] == "member-1"
    assert "round" in logged
    assert "sender" in logged
    assert all(not isinstance(v, bytes) for v in logged.values())
    assert bad.hex()[:64] not in str(logged)
    # the good uploads still aggregate, and the rejection is summarized
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    result = coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    decrypted = ckks.decrypt(result.aggregate)[:LENGTH]
    np.testing.assert_allclose(decrypted, plain_sum(["hospital-a", "hospital-b"]), atol=1e-3)
    # counted per study: an upload that names no configured study is only logged
    unattributed = reason in (Reason.MALFORMED, Reason.WRONG_STUDY)
    counted = [] if unattributed else [(reason, 1)]
    assert [(r.reason, r.count) for r in result.rejections] == counted


def test_rejections_name_known_senders_only(
    member: CommitteeMember, coord: Coordinator, seal: SealFn, ckks: CkksSecretContext
) -> None:
    member.accept(seal("hospital-a", member.info, round=7))
    member.accept(_unknown_sender(member, ckks, coord.study_id))
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    result = coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    assert {(r.sender, r.reason) for r in result.rejections} == {
        ("hospital-a", Reason.WRONG_ROUND),
        ("", Reason.UNKNOWN_SENDER),
    }


def test_replayed_envelope_is_rejected(member: CommitteeMember, seal: SealFn) -> None:
    data = seal("hospital-a", member.info)
    assert member.accept(data).accepted
    verdict = member.accept(data)
    assert verdict.reason is Reason.REPLAYED_NONCE
    with pytest.raises(VerificationError):
        verdict.raise_if_rejected()


def test_duplicate_sender_keeps_the_first_upload(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    plain_sum: Sum,
) -> None:
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    second = member.accept(seal("hospital-a", member.info, vector=np.full(LENGTH, 5.0)))
    assert second.reason is Reason.DUPLICATE_SENDER
    with pytest.raises(ProtocolAbort, match="duplicate_sender"):
        second.raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    result = coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    np.testing.assert_allclose(
        ckks.decrypt(result.aggregate)[:LENGTH],
        plain_sum(["hospital-a", "hospital-b"]),
        atol=1e-3,
    )


def test_no_round_open_and_not_configured(
    make_member: MakeMember, coord: Coordinator, seal: SealFn
) -> None:
    m = make_member("member-1")
    assert m.accept(seal("hospital-a", m.info)).reason is Reason.NOT_CONFIGURED
    coord.configure(m)
    assert m.accept(seal("hospital-a", m.info)).reason is Reason.ROUND_NOT_OPEN


def test_deadline_refuses_late_uploads(
    make_member: MakeMember, coord: Coordinator, seal: SealFn
) -> None:
    now = [1000.0]
    m = make_member("member-1", clock=lambda: now[0])
    coord.configure(m)
    coord.open_round(m, 1, deadline=1010.0)
    assert m.accept(seal("hospital-a", m.info)).accepted
    assert m.accept(seal("hospital-c", m.info)).accepted
    now[0] = 1011.0
    late = m.accept(seal("hospital-b", m.info))
    assert late.reason is Reason.DEADLINE_PASSED
    result = coord.aggregate(m, 1, ["hospital-a", "hospital-c"])
    assert result.client_ids == ("hospital-a", "hospital-c")


def test_old_envelope_cannot_be_replayed_in_a_later_round(
    member: CommitteeMember, coord: Coordinator, seal: SealFn
) -> None:
    data = seal("hospital-a", member.info)
    member.accept(data).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    coord.open_round(member, 2)
    assert member.accept(data).reason is Reason.WRONG_ROUND
    assert member.accept(seal("hospital-a", member.info, round=2)).accepted


def test_nonce_reused_in_a_later_round_is_a_replay(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
) -> None:
    first = Envelope.from_bytes(seal("hospital-a", member.info))
    member.accept(first.to_bytes()).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    coord.open_round(member, 2)
    again = build_envelope(
        owners["hospital-a"].identity,
        member.info.identity,
        study_id=coord.study_id,
        round=2,
        payload=ckks.encrypt(owners["hospital-a"].vector),
        nonce=first.nonce,
    )
    assert member.accept(again.to_bytes()).reason is Reason.REPLAYED_NONCE


def test_concurrent_uploads_accept_exactly_one_per_sender(
    member: CommitteeMember, coord: Coordinator, seal: SealFn
) -> None:
    same = seal("hospital-a", member.info)
    fresh = [seal("hospital-b", member.info) for _ in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        replays = list(pool.map(member.accept, [same] * 6))
        duplicates = list(pool.map(member.accept, fresh))
    assert sum(v.accepted for v in replays) == 1
    assert {v.reason for v in replays if not v.accepted} == {Reason.REPLAYED_NONCE}
    assert sum(v.accepted for v in duplicates) == 1
    assert {v.reason for v in duplicates if not v.accepted} == {Reason.DUPLICATE_SENDER}
    assert coord.status(member).received == ("hospital-a", "hospital-b")


# --------------------------------------------------------------------------- aggregation


def test_missing_clients_abort_and_a_smaller_set_succeeds(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    plain_sum: Sum,
) -> None:
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    with pytest.raises(ProtocolAbort, match=r"missing_uploads: .*hospital-c, hospital-d"):
        coord.aggregate(member, 1, ["hospital-a", "hospital-b", "hospital-c", "hospital-d"])
    result = coord.aggregate(member, 1, ["hospital-b", "hospital-a"])
    decrypted = ckks.decrypt(result.aggregate)[:LENGTH]
    np.testing.assert_allclose(decrypted, plain_sum(["hospital-a", "hospital-b"]), atol=1e-3)


def test_one_client_set_per_round(
    member: CommitteeMember, coord: Coordinator, seal: SealFn
) -> None:
    for pid in ("hospital-a", "hospital-b", "hospital-c"):
        member.accept(seal(pid, member.info)).raise_if_rejected()
    first = coord.aggregate(member, 1, ["hospital-a", "hospital-b", "hospital-c"])
    assert coord.aggregate(member, 1, ["hospital-c", "hospital-b", "hospital-a"]) == first
    # S and then S minus {c} would hand whoever decrypts both the update of c alone
    with pytest.raises(ProtocolAbort, match=Refusal.CLIENT_SET_CHANGED.value):
        coord.aggregate(member, 1, ["hospital-a", "hospital-b"])
    assert member.accept(seal("hospital-d", member.info)).reason is Reason.ROUND_NOT_OPEN
    assert coord.status(member).open_round is None
    assert coord.status(member).aggregated == (1,)
    with pytest.raises(ProtocolAbort, match=Refusal.ROUND_NOT_AFTER.value):
        coord.open_round(member, 1)
    coord.open_round(member, 2)
    with pytest.raises(ProtocolAbort, match=Refusal.ROUND_NOT_OPEN.value):
        coord.aggregate(member, 3, ["hospital-a", "hospital-b"])


@pytest.mark.parametrize(
    ("ids", "refusal"),
    [
        ([], Refusal.BAD_CLIENT_SET),
        (["hospital-a", "hospital-a"], Refusal.BAD_CLIENT_SET),
        (["hospital-a", ""], Refusal.BAD_CLIENT_SET),
        (["hospital-a", "nobody"], Refusal.NOT_IN_ROSTER),
        (["hospital-a"], Refusal.CLIENT_SET_TOO_SMALL),
    ],
)
def test_bad_client_sets(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    ids: list[str],
    refusal: Refusal,
) -> None:
    member.accept(seal("hospital-a", member.info)).raise_if_rejected()
    member.accept(seal("hospital-b", member.info)).raise_if_rejected()
    with pytest.raises(BadInputError, match=refusal.value):
        coord.aggregate(member, 1, ids)
    # refused before anything was signed: a valid S still aggregates
    assert coord.aggregate(member, 1, ["hospital-a", "hospital-b"]).round == 1


def test_min_clients_comes_from_the_manifest(
    make_member: MakeMember,
    signer: ControlSigner,
    make_signed: MakeSigned,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    seal: SealFn,
) -> None:
    strict = make_signed(min_clients=3)
    setup = dealt_setup(owners[DEALER].identity, strict.study_id, ckks.public().to_bytes())
    study = Coordinator(signer, strict, setup)
    m = make_member("member-1", approved=[strict])
    study.configure(m)
    study.open_round(m, 1)
    for pid in ("hospital-a", "hospital-b"):
        m.accept(seal(pid, m.info, study_id=strict.study_id)).raise_if_rejected()
    with pytest.raises(BadInputError, match=r"client_set_too_small: .*at least 3"):
        study.aggregate(m, 1, ["hospital-a", "hospital-b"])


# --------------------------------------------------------------------------- persistence


def test_a_reopened_member_resumes_and_refuses_replays(
    make_member: MakeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    plain_sum: Sum,
) -> None:
    m = make_member("member-1")
    coord.configure(m)
    opened = coord.control(m.member_id, OpenRoundBody(1))
    m.open_round(opened)
    uploads = [seal(pid, m.info) for pid in ("hospital-a", "hospital-b", "hospital-c")]
    for data in uploads:
        m.accept(data).raise_if_rejected()
    m.close()
    again = make_member("member-1", approved=())
    assert coord.status(again).received == ("hospital-a", "hospital-b", "hospital-c")
    assert {again.accept(d).reason for d in uploads} == {Reason.REPLAYED_NONCE}
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        again.open_round(opened)
    result = coord.aggregate(again, 1, ["hospital-a", "hospital-b", "hospital-c"])
    np.testing.assert_allclose(
        ckks.decrypt(result.aggregate)[:LENGTH],
        plain_sum(["hospital-a", "hospital-b", "hospital-c"]),
        atol=1e-3,
    )
    again.close()
    third = make_member("member-1", approved=())
    assert coord.aggregate(third, 1, ["hospital-c", "hospital-a", "hospital-b"]) == result


def test_one_process_per_work_directory(make_member: MakeMember) -> None:
    make_member("member-1")
    with pytest.raises(ConfigError, match="in use by another member process"):
        make_member("member-1", approved=())


# --------------------------------------------------------------------------- key store


def test_key_store_round_trip(tmp_path: Path) -> None:
    store = tmp_path / "keys"
    keys = MemberKeys.load_or_create(store, member_id="member-9")
    again = MemberKeys.load_or_create(store, member_id="member-9")
    assert again.identity.public == keys.identity.public
    assert again.eth_address == keys.eth_address
    for name in ("identity.json", "eth_key.json"):
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o600
    assert keys.eth_private_key.hex() not in repr(keys)
    with pytest.raises(BadInputError, match="member-8"):
        MemberKeys.load_or_create(store, member_id="member-8")
    (store / "eth_key.json").chmod(0o644)
    with pytest.raises(BadInputError, match="chmod 600"):
        MemberKeys.load(store)
    (store / "eth_key.json").chmod(0o600)
    (store / "eth_key.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"eth_key\.json"):
        MemberKeys.load(store)


def test_member_ids_are_the_committee(member_keys: dict[str, MemberKeys]) -> None:
    assert tuple(member_keys) == MEMBER_IDS
