"""Upload once: each data owner sends one committee upload to one member, the members fetch
each other's copies, and a member that alters or withholds a copy is named while the round
completes with what a quorum holds. In-process members with real keys, real CKKS and the
real checks; the same over gRPC and TLS is in test_aggregator_service.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from committee_testkit import (
    DEALER,
    LENGTH,
    MEMBER_IDS,
    OWNER_IDS,
    Coordinator,
    MakeSigned,
    Owner,
    dealt_setup,
)

from cohort.aggregator.control import Refusal, UploadSource
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import CommitteeMember, CopyFailure, Reason, Replication
from cohort.aggregator.records import Blame
from cohort.aggregator.replication import (
    FetchRequest,
    UploadReceipt,
    copy_faults,
    fetch_digest,
    holders,
    upload_order,
)
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.crypto.upload import CommitteeUpload, build_upload
from cohort.errors import BadInputError, ProtocolAbort, VerificationError
from cohort.federation.approval import Role, approve
from cohort.federation.coordinator import choose_client_set
from cohort.federation.manifest import Manifest, SignedManifest

Sum = Callable[[Sequence[str]], np.ndarray]
Members = dict[str, CommitteeMember]


class Relayer(CommitteeMember):
    """A member that hands over something other than its honest copy: ``serve`` turns the
    honest copy (None: nothing at all) into what it sends."""

    serve: Callable[[Relayer, FetchRequest, bytes], bytes] | None = None

    def fetch(self, request: FetchRequest) -> bytes:
        honest = super().fetch(request)
        if self.serve is None:
            return honest
        return self.serve(self, request, honest)

    def requester(self, request: FetchRequest) -> PublicIdentity:
        manifest = self._studies[request.study_id].manifest
        entry = manifest.member(request.requester)
        assert entry is not None
        return entry.identity


def _withhold(member: Relayer, request: FetchRequest, honest: bytes) -> bytes:
    raise Refusal.NOT_HELD.error(f"{request.sender} never uploaded here (a lie)")


@pytest.fixture
def committee(
    tmp_path: Path, member_keys: dict[str, MemberKeys], signed: SignedManifest, coord: Coordinator
) -> Iterator[Callable[..., Members]]:
    """committee(classes={member id: class}, approved=(signed,)) -> the three members,
    configured for the default study, round 1 open, fetching from each other in-process."""
    made: list[CommitteeMember] = []

    def make(
        classes: Mapping[str, type[CommitteeMember]] | None = None,
        approved: Sequence[SignedManifest] = (signed,),
    ) -> Members:
        members: Members = {}

        def fetch(manifest: Manifest, entry: Any, request: FetchRequest) -> bytes:
            return members[entry.member_id].fetch(request)

        for mid in MEMBER_IDS:
            home = tmp_path / mid
            for manifest in approved:
                approve(
                    manifest, workdir=home, identity=member_keys[mid].identity, role=Role.MEMBER
                )
            cls = (classes or {}).get(mid, CommitteeMember)
            member = cls(member_keys[mid], workdir=home, fetcher=fetch)
            made.append(member)
            coord.configure(member)
            coord.open_round(member, 1)
            members[mid] = member
        return members

    yield make
    for member in made:
        member.close()


UploadFn = Callable[..., tuple[UploadSource, np.ndarray]]


@pytest.fixture
def upload(ckks: CkksSecretContext, owners: dict[str, Owner], signed: SignedManifest) -> UploadFn:
    """upload(owner_id, member, round=1, vector=None) -> (source, vector): what the data
    owner does each round - one committee upload, to one member - and the receipt it gets."""
    committee = [entry.identity for entry in signed.manifest.committee]

    def send(
        owner_id: str,
        member: CommitteeMember,
        *,
        round: int = 1,
        vector: np.ndarray | None = None,
        study: SignedManifest = signed,
    ) -> tuple[UploadSource, np.ndarray]:
        owner = owners[owner_id]
        values = np.asarray(owner.vector if vector is None else vector, dtype=np.float64)
        data = build_upload(
            owner.identity,
            committee,
            member.info.identity,
            study_id=study.study_id,
            round=round,
            payload=ckks.encrypt(values),
        ).to_bytes()
        verdict = member.accept(data)
        verdict.raise_if_rejected()
        receipt = UploadReceipt(
            member.member_id, study.study_id, round, owner_id, verdict.payload_hash, verdict.receipt
        )
        receipt.verify(member.info.identity)
        return receipt.source(), values

    return send


def _replicate(
    coord: Coordinator, members: Members, sources: Sequence[UploadSource], *, round: int = 1
) -> dict[str, Replication]:
    return {mid: coord.replicate(m, round, sources) for mid, m in members.items()}


def _finish(
    coord: Coordinator,
    members: Members,
    replications: Mapping[str, Replication],
    sources: Sequence[UploadSource],
) -> tuple[list[str], bytes]:
    """The coordinator's side: the client set a quorum holds, every holder's aggregate."""
    quorum = coord.signed.manifest.quorum
    client_set, chosen = choose_client_set(holders(replications, sources), list(members), quorum)
    results = [coord.aggregate(members[m], 1, client_set) for m in chosen]
    assert len(chosen) >= quorum
    assert len({r.aggregate_hash for r in results}) == 1  # honest members agree bit for bit
    return client_set, results[0].aggregate


# --------------------------------------------------------------------------- honest round


def test_one_upload_per_owner_and_every_member_ends_up_holding_all(
    committee: Callable[..., Members],
    upload: UploadFn,
    coord: Coordinator,
    ckks: CkksSecretContext,
    plain_sum: Sum,
) -> None:
    members = committee()
    study = coord.study_id
    sources = []
    for pid in OWNER_IDS:
        first = upload_order(MEMBER_IDS, study_id=study, round=1, sender=pid)[0]
        sources.append(upload(pid, members[first])[0])
    direct = {mid: set(coord.status(m).received) for mid, m in members.items()}
    assert sum(len(got) for got in direct.values()) == len(OWNER_IDS)  # one member each
    replications = _replicate(coord, members, sources)
    for mid, replication in replications.items():
        assert [h.sender for h in replication.held] == sorted(OWNER_IDS), mid
        assert replication.failures == ()
        assert coord.status(members[mid]).received == tuple(sorted(OWNER_IDS))
    assert copy_faults(replications, sources) == {}
    assert holders(replications, sources) == {pid: set(MEMBER_IDS) for pid in OWNER_IDS}
    again = _replicate(coord, members, sources)  # nothing left to fetch: the same answer
    assert again == replications
    client_set, aggregate = _finish(coord, members, replications, sources)
    assert client_set == sorted(OWNER_IDS)
    np.testing.assert_allclose(ckks.decrypt(aggregate)[:LENGTH], plain_sum(OWNER_IDS), atol=1e-3)


def test_the_upload_order_spreads_owners_over_the_committee() -> None:
    firsts = [
        upload_order(MEMBER_IDS, study_id="ab" * 32, round=r, sender=f"hospital-{i}")[0]
        for i in range(100)
        for r in (1, 2, 3)
    ]
    counts = {m: firsts.count(m) for m in MEMBER_IDS}
    assert all(70 <= n <= 130 for n in counts.values()), counts
    order = upload_order(MEMBER_IDS, study_id="ab" * 32, round=1, sender="hospital-1")
    assert sorted(order) == sorted(MEMBER_IDS)
    assert order == upload_order(
        reversed(MEMBER_IDS), study_id="ab" * 32, round=1, sender="hospital-1"
    )


# --------------------------------------------------------------------------- faulty relayers


def _forged_payload(
    ckks: CkksSecretContext,
) -> Callable[[Relayer, FetchRequest, bytes], bytes]:
    other = ckks.encrypt(np.full(LENGTH, 25.0))

    def serve(member: Relayer, request: FetchRequest, honest: bytes) -> bytes:
        copy = CommitteeUpload.from_bytes(honest)
        return copy.sealed_for(member.requester(request), other).to_bytes()

    return serve


def _flipped_signature(member: Relayer, request: FetchRequest, honest: bytes) -> bytes:
    copy = CommitteeUpload.from_bytes(honest)
    signature = bytes([copy.signature[0] ^ 1]) + copy.signature[1:]
    return dataclasses.replace(copy, signature=signature).to_bytes()


def _garbage(member: Relayer, request: FetchRequest, honest: bytes) -> bytes:
    return b"CHCU" + honest[4:100]


ALTERATIONS: dict[str, tuple[Reason, Any]] = {
    "payload": (Reason.PAYLOAD_HASH_MISMATCH, _forged_payload),
    "signature": (Reason.BAD_SIGNATURE, lambda ckks: _flipped_signature),
    "garbage": (Reason.MALFORMED, lambda ckks: _garbage),
    "withheld": (Reason.WITHHELD, lambda ckks: _withhold),
}


@pytest.mark.parametrize("case", sorted(ALTERATIONS))
def test_a_member_that_alters_or_withholds_a_copy_is_named_and_the_round_completes(
    case: str,
    committee: Callable[..., Members],
    upload: UploadFn,
    coord: Coordinator,
    ckks: CkksSecretContext,
    plain_sum: Sum,
) -> None:
    reason, make_serve = ALTERATIONS[case]
    members = committee({"member-3": Relayer})
    bad = members["member-3"]
    assert isinstance(bad, Relayer)
    bad.serve = make_serve(ckks)
    route = {"hospital-a": "member-1", "hospital-b": "member-2", "hospital-c": "member-3"}
    route["hospital-d"] = "member-1"
    sources = [upload(pid, members[mid])[0] for pid, mid in route.items()]
    replications = _replicate(coord, members, sources)
    for mid in ("member-1", "member-2"):
        (failure,) = replications[mid].failures
        assert (failure.sender, failure.relayer, failure.reason) == (
            "hospital-c",
            "member-3",
            reason,
        )
        assert failure.detail
        assert coord.status(members[mid]).copy_failures == (failure,)
    assert replications["member-3"].failures == ()  # it took every honest copy
    named = copy_faults(replications, sources)
    assert list(named) == ["member-3"]
    verb = "withheld" if reason is Reason.WITHHELD else "altered"
    assert named["member-3"].startswith(f"{verb} hospital-c's upload (reported by member-1: ")
    assert "reported by member-2" in named["member-3"]
    # The round completes with the uploads a quorum holds: hospital-c's is only at member-3.
    client_set, aggregate = _finish(coord, members, replications, sources)
    assert client_set == ["hospital-a", "hospital-b", "hospital-d"]
    np.testing.assert_allclose(ckks.decrypt(aggregate)[:LENGTH], plain_sum(client_set), atol=1e-3)


def test_reports_count_only_against_a_member_whose_receipt_the_coordinator_holds() -> None:
    source = UploadSource("hospital-a", "member-1", b"h" * 32, b"s" * 64)
    framed = CopyFailure("hospital-a", "member-2", Reason.WITHHELD, "a lie about member-2")
    coordinator_error = CopyFailure("hospital-a", "member-1", Reason.BAD_RECEIPT, "forged")
    replications = {"member-3": Replication(1, (), (framed, coordinator_error))}
    assert copy_faults(replications, [source]) == {}
    assert framed.blame is Blame.WITHHELD
    assert coordinator_error.blame is None


def test_a_forged_receipt_fetches_nothing_and_blames_no_one(
    committee: Callable[..., Members], upload: UploadFn, coord: Coordinator
) -> None:
    members = committee()
    source, _ = upload("hospital-a", members["member-1"])
    forged = dataclasses.replace(source, receipt=bytes(64))
    replication = coord.replicate(members["member-2"], 1, [forged])
    (failure,) = replication.failures
    assert (failure.relayer, failure.reason) == ("member-1", Reason.BAD_RECEIPT)
    assert copy_faults({"member-2": replication}, [forged]) == {}
    assert [h.sender for h in replication.held] == []
    with pytest.raises(ProtocolAbort, match=Refusal.ROUND_NOT_OPEN.value):
        coord.replicate(members["member-2"], 2, [source])


# --------------------------------------------------------------------------- replays


def test_a_copy_from_an_earlier_round_or_another_study_is_refused(
    committee: Callable[..., Members],
    upload: UploadFn,
    coord: Coordinator,
    make_signed: MakeSigned,
    member_keys: dict[str, MemberKeys],
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
) -> None:
    other = make_signed()
    members = committee({"member-1": Relayer}, approved=(coord.signed, other))
    relayer = members["member-1"]
    assert isinstance(relayer, Relayer)
    second = Coordinator(
        coord.signer,
        other,
        dealt_setup(owners[DEALER].identity, other.study_id, ckks.public().to_bytes()),
    )
    for member in members.values():
        second.configure(member)
        second.open_round(member, 1)

    def copy_for_member_2(study: SignedManifest, round: int) -> bytes:
        request = FetchRequest.sign(
            member_keys["member-2"].identity,
            study_id=study.study_id,
            round=round,
            sender="hospital-a",
            responder="member-1",
        )
        return relayer.fetch(request)

    # Round 1, in both studies: member-1 takes hospital-a's upload; member-2 could have
    # fetched these genuine copies (sealed to it).
    upload("hospital-a", relayer)
    upload("hospital-a", relayer, study=other)
    earlier, foreign = copy_for_member_2(coord.signed, 1), copy_for_member_2(other, 1)
    # Round 2 of the first study: member-1 relays the round-1 copy, then the other
    # study's, instead of the upload it signed a receipt for.
    for member in members.values():
        coord.open_round(member, 2)
    source, _ = upload("hospital-a", relayer, round=2, vector=np.full(LENGTH, 2.0))
    for replayed, reason in ((earlier, Reason.WRONG_ROUND), (foreign, Reason.WRONG_STUDY)):
        relayer.serve = _replay(replayed)
        replication = coord.replicate(members["member-2"], 2, [source])
        assert [(f.relayer, f.reason) for f in replication.failures][-1] == ("member-1", reason)
        assert copy_faults({"member-2": replication}, [source])["member-1"].startswith(
            "altered hospital-a's upload"
        )
        assert replication.held == ()
    # Sent straight to member-2's Upload, the round-1 copy is refused as well. (The other
    # study's copy is a genuine upload of that study's open round: it would be taken there.)
    assert members["member-2"].accept(earlier).reason is Reason.WRONG_ROUND


def _replay(data: bytes) -> Callable[[Relayer, FetchRequest, bytes], bytes]:
    return lambda member, request, honest: data


# --------------------------------------------------------------------------- fetch checks


def test_a_fetch_needs_a_committee_member_s_signature_and_a_held_upload(
    committee: Callable[..., Members],
    upload: UploadFn,
    coord: Coordinator,
    member_keys: dict[str, MemberKeys],
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
) -> None:
    members = committee()
    holder = members["member-1"]
    upload("hospital-a", holder)
    study = coord.study_id
    member_2 = member_keys["member-2"].identity
    mallory = Identity.generate("mallory", seed=b"\x66" * 32)

    def signed_by(identity: Identity, **changes: Any) -> FetchRequest:
        terms: dict[str, Any] = {"study_id": study, "round": 1, "sender": "hospital-a"}
        terms.update(changes)
        responder = terms.pop("responder", "member-1")
        return FetchRequest.sign(identity, responder=responder, **terms)

    def claiming(requester: str, signer: Identity) -> FetchRequest:
        digest = fetch_digest(
            study_id=study, round=1, sender="hospital-a", requester=requester, responder="member-1"
        )
        return FetchRequest(study, 1, "hospital-a", requester, "member-1", signer.sign(digest))

    good = CommitteeUpload.from_bytes(holder.fetch(signed_by(member_2)))
    assert good.sender == "hospital-a"
    assert member_2.unseal(good.sealed_payload)  # sealed to the requester ...
    with pytest.raises(VerificationError):
        member_keys["member-3"].identity.unseal(good.sealed_payload)  # ... and to it alone
    # (an envelope of the first version is kept, never relayed)
    envelope = build_envelope(
        owners["hospital-b"].identity,
        holder.info.identity,
        study_id=study,
        round=1,
        payload=ckks.encrypt(owners["hospital-b"].vector),
    )
    holder.accept(envelope.to_bytes()).raise_if_rejected()
    refused: list[tuple[FetchRequest, type[Exception], Refusal]] = [
        (signed_by(mallory), VerificationError, Refusal.UNKNOWN_REQUESTER),
        (claiming("member-2", mallory), VerificationError, Refusal.BAD_FETCH_SIGNATURE),
        (claiming("member-2", member_keys["member-3"].identity), VerificationError,
         Refusal.BAD_FETCH_SIGNATURE),
        (dataclasses.replace(signed_by(member_2), signature=b""), VerificationError,
         Refusal.BAD_FETCH_SIGNATURE),
        (dataclasses.replace(signed_by(member_2), sender="hospital-d"), VerificationError,
         Refusal.BAD_FETCH_SIGNATURE),
        (signed_by(member_2, responder="member-3"), VerificationError, Refusal.WRONG_RESPONDER),
        (signed_by(member_2, round=2), ProtocolAbort, Refusal.ROUND_NOT_OPEN),
        (signed_by(member_2, sender="hospital-c"), ProtocolAbort, Refusal.NOT_HELD),
        (signed_by(member_2, sender="hospital-b"), ProtocolAbort, Refusal.NOT_HELD),
        (signed_by(member_2, study_id="ab" * 32), ProtocolAbort, Refusal.NOT_CONFIGURED),
    ]  # fmt: skip
    for request, error, refusal in refused:
        with pytest.raises(error, match=f"^{refusal.value}: "):
            holder.fetch(request)
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_CONTROL.value):
        signed_by(member_2, study_id="not a study id")
