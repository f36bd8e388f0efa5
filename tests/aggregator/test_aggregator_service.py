"""Real gRPC over TLS against in-process members on 127.0.0.1: a committee built from the
manifest, error types across the wire, TLS pinning, what Info reveals, a tampering member,
and upload once: members fetching each other's copies over the same pinned channels."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from committee_testkit import (
    DEALER,
    IDS,
    LENGTH,
    MEMBER_IDS,
    MakeSigned,
    Owner,
    SealFn,
    dealt_setup,
    entry_for,
)

from cohort.aggregator.client import MemberClient, MemberUnavailable
from cohort.aggregator.committee import Committee
from cohort.aggregator.control import (
    AggregateBody,
    ControlSigner,
    OpenRoundBody,
    Refusal,
    SignedControl,
    StatusBody,
    UploadSource,
)
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import (
    AggregateResult,
    CommitteeMember,
    aggregate_result_digest,
    study_id_bytes,
)
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.proto import committee_pb2_grpc as pb_grpc
from cohort.aggregator.quorum import FaultReason
from cohort.aggregator.replication import (
    FetchRequest,
    UploadReceipt,
    copy_faults,
    holders,
    upload_order,
)
from cohort.aggregator.service import GRPC_OPTIONS, serve
from cohort.bounties.attestation import (
    attestation_digest,
    sign_attestation,
    unreported_ledger_heads,
)
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import Envelope
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.crypto.tls import ChannelTls, cert_fingerprint, open_channel
from cohort.crypto.upload import CommitteeUpload, build_upload
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.federation.approval import Role, approve
from cohort.federation.certs import CA_CERT, load_cert_key, member_files, write_study_certs
from cohort.federation.coordinator import choose_client_set
from cohort.federation.manifest import SignedManifest

Sum = Callable[[Sequence[str]], np.ndarray]


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_study_certs(out, members=MEMBER_IDS, hosts=("127.0.0.1", "localhost"))
    return out


class _Tamperer(CommitteeMember):
    """A member that replaces the aggregate with its own ciphertext and signs the result
    (Ed25519 and Ethereum attestation) as if it were honest."""

    extra = b""

    def aggregate(self, control: SignedControl) -> AggregateResult:
        honest = super().aggregate(control)
        manifest = self._studies[honest.study_id].manifest
        new_hash = tagged_hash(Tag.AGGREGATE, self.extra)
        digest = aggregate_result_digest(
            study_id=honest.study_id,
            round=honest.round,
            client_ids=honest.client_ids,
            aggregate_hash=new_hash,
        )
        payouts = [manifest.owner(c).payout_address for c in honest.client_ids]  # type: ignore[union-attr]
        attestation = attestation_digest(
            chain_id=manifest.chain_id,
            contract=manifest.contract,
            study_id=study_id_bytes(honest.study_id),
            round=honest.round,
            aggregate_hash=new_hash,
            contributors=payouts,
            ledger_heads=unreported_ledger_heads(payouts),
        )
        return dataclasses.replace(
            honest,
            aggregate=self.extra,
            aggregate_hash=new_hash,
            signature=self._keys.identity.sign(digest),
            eth_signature=sign_attestation(self._keys.eth_private_key, attestation),
        )


@dataclass
class Served:
    """Three members served over TLS, their manifest (approved by each) and a Committee."""

    members: dict[str, CommitteeMember]
    servers: dict[str, grpc.Server]
    signed: SignedManifest
    setup: CkksSpec
    committee: Committee
    signer: ControlSigner
    extra_clients: list[MemberClient] = field(default_factory=list)

    @property
    def study_id(self) -> str:
        return self.signed.study_id

    def client(self, member_id: str, *, tls: ChannelTls | bool | None = True) -> MemberClient:
        """What a data owner opens: the manifest's endpoint and TLS pin."""
        ref = next(r for r in self.committee.roster if r.member_id == member_id)
        channel_tls = ref.channel_tls(self.signed.manifest.tls_ca) if tls is True else tls
        client = MemberClient(ref.endpoint, tls=channel_tls or None, timeout_s=5)
        self.extra_clients.append(client)
        return client


ServeFn = Callable[..., Served]


@pytest.fixture
def serve_committee(
    tmp_path: Path,
    certs: Path,
    member_keys: dict[str, MemberKeys],
    make_signed: MakeSigned,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    coordinator: Identity,
) -> Iterator[ServeFn]:
    made: list[Served] = []

    def start(classes: dict[str, type[CommitteeMember]] | None = None) -> Served:
        members, servers, entries = {}, {}, []
        for mid in MEMBER_IDS:
            cert_name, key_name = member_files(mid)
            cert = load_cert_key(certs / cert_name, certs / key_name)
            cls = (classes or {}).get(mid, CommitteeMember)
            fingerprint = cert_fingerprint(cert.cert_pem)
            member = cls(member_keys[mid], workdir=tmp_path / mid, tls_fingerprint=fingerprint)
            server, port = serve(member, host="127.0.0.1", port=0, tls=cert)
            members[mid], servers[mid] = member, server
            entries.append(
                entry_for(
                    member_keys[mid], endpoint=f"127.0.0.1:{port}", tls_fingerprint=fingerprint
                )
            )
        signed = make_signed(committee=entries, tls_ca=(certs / CA_CERT).read_text())
        for mid in MEMBER_IDS:
            approve(
                signed, workdir=tmp_path / mid, identity=member_keys[mid].identity, role=Role.MEMBER
            )
        setup = dealt_setup(owners[DEALER].identity, signed.study_id, ckks.public().to_bytes())
        signer = ControlSigner(coordinator)
        committee = Committee(signed.manifest, signer, timeout_s=5)
        served = Served(members, servers, signed, setup, committee, signer)
        made.append(served)
        return served

    yield start
    for served in made:
        served.committee.close()
        for client in served.extra_clients:
            client.close()
        for server in served.servers.values():
            server.stop(grace=None)
        for member in served.members.values():
            member.close()


@pytest.fixture
def served(serve_committee: ServeFn) -> Served:
    return serve_committee()


def _upload_all(served: Served, seal: SealFn, ids: Sequence[str] = IDS) -> None:
    for ref in served.committee.roster:
        client = served.client(ref.member_id)
        for pid in ids:
            verdict = client.upload(seal(pid, ref.info, study_id=served.study_id))
            assert verdict.accepted
            assert (verdict.sender, verdict.round, len(verdict.payload_hash)) == (pid, 1, 32)


# --------------------------------------------------------------------------- a round


def test_a_round_over_tls_with_the_committee_from_the_manifest(
    served: Served, seal: SealFn, ckks: CkksSecretContext, plain_sum: Sum
) -> None:
    committee = served.committee
    assert committee.member_ids == MEMBER_IDS
    assert committee.configure(served.signed, served.setup) == {}
    assert committee.configure(served.signed, served.setup) == {}  # a retry is a no-op
    assert committee.open_round(1) == {}
    _upload_all(served, seal)
    for mid in MEMBER_IDS:
        status = committee.status(mid)
        assert (status.study_id, status.open_round, status.received) == (served.study_id, 1, IDS)
    with pytest.raises(ProtocolAbort, match=Refusal.MISSING_UPLOADS.value):
        committee.aggregate("member-1", 1, [*IDS, "hospital-d"])
    results, errors = committee.aggregate_all(1, IDS)
    assert errors == {}
    decision = committee.decide(results, round=1, client_ids=IDS)
    assert decision.agreeing == MEMBER_IDS
    assert decision.faulty == ()
    np.testing.assert_allclose(ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3)
    again = committee.aggregate("member-2", 1, list(reversed(IDS)))
    assert again == next(r for r in results if r.member_id == "member-2")


def test_errors_keep_their_type_across_the_wire(served: Served, seal: SealFn) -> None:
    committee = served.committee
    info = served.members["member-1"].info
    client = served.client("member-1")
    with pytest.raises(ProtocolAbort, match="not_configured"):
        client.upload(seal("hospital-a", info, study_id=served.study_id))
    assert committee.configure(served.signed, served.setup) == {}
    with pytest.raises(ProtocolAbort, match="round_not_open"):
        client.upload(seal("hospital-a", info, study_id=served.study_id))
    assert committee.open_round(1) == {}
    good = seal("hospital-a", info, study_id=served.study_id)
    client.upload(good)
    with pytest.raises(VerificationError, match="replayed_nonce"):
        client.upload(good)
    forged = dataclasses.replace(
        Envelope.from_bytes(seal("hospital-b", info, study_id=served.study_id)),
        signature=bytes(64),
    )
    with pytest.raises(VerificationError, match="bad_signature"):
        client.upload(forged.to_bytes())
    with pytest.raises(BadInputError, match="malformed"):
        client.upload(b"definitely not an envelope")
    with pytest.raises(BadInputError, match="mode_check_failed"):
        client.upload(
            seal("hospital-c", info, vector=np.ones(LENGTH + 2), study_id=served.study_id)
        )
    with pytest.raises(ProtocolAbort, match="wrong_round"):
        client.upload(seal("hospital-d", info, round=2, study_id=served.study_id))
    # control calls
    unsigned = dataclasses.replace(
        served.signer.sign(served.study_id, "member-1", StatusBody()), signature=b""
    )
    with pytest.raises(VerificationError, match=Refusal.BAD_CONTROL_SIGNATURE.value):
        client.status(unsigned)
    replayed = served.signer.sign(served.study_id, "member-1", OpenRoundBody(2))
    client.open_round(replayed)
    with pytest.raises(VerificationError, match=Refusal.STALE_COUNTER.value):
        client.open_round(replayed)
    with pytest.raises(BadInputError, match=Refusal.ROUND_OUT_OF_RANGE.value):
        committee.aggregate("member-1", 2**64 - 1, ["hospital-a", "hospital-b"])
    with pytest.raises(BadInputError, match=Refusal.CLIENT_SET_TOO_SMALL.value):
        committee.aggregate("member-1", 2, ["hospital-a"])
    with pytest.raises(BadInputError, match=Refusal.NOT_IN_ROSTER.value):
        committee.aggregate("member-1", 2, ["hospital-a", "mallory"])
    errors = committee.open_round(2**64 - 1)
    assert set(errors) == set(MEMBER_IDS)
    assert all(isinstance(e, BadInputError) for e in errors.values())
    assert committee.open_round(3) == {}  # not locked out


def test_a_second_client_set_for_a_round_is_refused_over_the_wire(
    served: Served, seal: SealFn
) -> None:
    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    _upload_all(served, seal)
    first = committee.aggregate("member-1", 1, IDS)
    with pytest.raises(ProtocolAbort, match=Refusal.CLIENT_SET_CHANGED.value):
        committee.aggregate("member-1", 1, IDS[:2])
    assert committee.aggregate("member-1", 1, IDS) == first


# --------------------------------------------------------------------------- TLS


def test_a_plaintext_client_cannot_talk_to_a_tls_member(served: Served) -> None:
    assert served.client("member-1").info().info.member_id == "member-1"
    with pytest.raises(MemberUnavailable):
        served.client("member-1", tls=None).info()


def test_the_manifest_pin_and_the_study_ca_are_enforced(
    served: Served, tmp_path: Path, certs: Path
) -> None:
    ca = (certs / CA_CERT).read_bytes()
    pins = {m: cert_fingerprint((certs / member_files(m)[0]).read_bytes()) for m in MEMBER_IDS}
    with pytest.raises(VerificationError, match="fingerprint"):
        served.client("member-1", tls=ChannelTls(ca, "member-1", pins["member-2"])).info()
    with pytest.raises(VerificationError, match="does not verify"):
        served.client("member-1", tls=ChannelTls(ca, "member-2", pins["member-1"])).info()
    other = tmp_path / "other-ca"
    write_study_certs(other, members=["member-1"])
    foreign = ChannelTls((other / CA_CERT).read_bytes(), "member-1", pins["member-1"])
    with pytest.raises(VerificationError, match="does not verify"):
        served.client("member-1", tls=foreign).info()
    # without a pin gRPC still checks the CA and the name: the call cannot connect
    with pytest.raises(MemberUnavailable):
        served.client("member-1", tls=ChannelTls(ca, "member-2", None)).info()


def test_info_reveals_no_senders_and_status_needs_a_signature(served: Served, seal: SealFn) -> None:
    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    _upload_all(served, seal)
    ref = committee.roster[0]
    channel = open_channel(
        ref.endpoint, ref.channel_tls(served.signed.manifest.tls_ca), options=GRPC_OPTIONS
    )
    try:
        stub = pb_grpc.CommitteeStub(channel)
        reply = stub.Info(pb.InfoRequest(), timeout=5)
        present = {f.name for f, _ in reply.ListFields()}
        assert present == {"member", "modes", "tls_fingerprint"}
        assert b"hospital" not in reply.SerializeToString()
        with pytest.raises(grpc.RpcError) as refused:
            stub.Status(pb.SignedControl(study_id=served.study_id, kind="status"), timeout=5)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert Refusal.BAD_CONTROL_SIGNATURE.value in (refused.value.details() or "")
    finally:
        channel.close()
    assert committee.status(ref.member_id).received == IDS


# --------------------------------------------------------------------------- availability


def test_the_committee_goes_on_when_a_member_is_down(served: Served, seal: SealFn) -> None:
    committee = served.committee
    served.servers["member-3"].stop(grace=None)
    errors = committee.configure(served.signed, served.setup)
    assert set(errors) == {"member-3"}
    assert isinstance(errors["member-3"], MemberUnavailable)
    assert set(committee.open_round(1)) == {"member-3"}
    for mid in ("member-1", "member-2"):
        client = served.client(mid)
        for pid in IDS:
            client.upload(seal(pid, served.members[mid].info, study_id=served.study_id))
    results, errors = committee.aggregate_all(1, IDS)
    assert set(errors) == {"member-3"}
    decision = committee.decide(results, round=1, client_ids=IDS)
    assert decision.agreeing == ("member-1", "member-2")
    assert decision.missing == ("member-3",)


def test_the_committee_names_a_tampering_member(
    serve_committee: ServeFn, seal: SealFn, ckks: CkksSecretContext, plain_sum: Sum
) -> None:
    _Tamperer.extra = ckks.encrypt(np.full(LENGTH, 25.0))
    served = serve_committee({"member-3": _Tamperer})
    committee = served.committee
    assert committee.configure(served.signed, served.setup) == {}
    assert committee.open_round(1) == {}
    _upload_all(served, seal)
    results, errors = committee.aggregate_all(1, IDS)
    assert errors == {}
    decision = committee.decide(results, round=1, client_ids=IDS)
    assert decision.agreeing == ("member-1", "member-2")
    assert [(f.member_id, f.reason) for f in decision.faulty] == [
        ("member-3", FaultReason.DISAGREES)
    ]
    np.testing.assert_allclose(ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3)


def test_the_committee_refuses_a_signer_that_is_not_the_manifests(
    served: Served, sponsor: Identity
) -> None:
    with pytest.raises(ConfigError, match="coordinator_key"):
        Committee(served.signed.manifest, ControlSigner(sponsor))


def test_large_messages_pass(served: Served) -> None:
    """A 6 MB upload passes gRPC's 4 MB default and reaches the member's own checks."""
    served.committee.configure(served.signed, served.setup)
    with pytest.raises(BadInputError, match="malformed"):
        served.client("member-1").upload(b"\x00" * (6 * 1024 * 1024))


def test_a_taken_port_is_refused(served: Served, member_keys: dict[str, MemberKeys]) -> None:
    port = int(served.committee.roster[0].endpoint.rsplit(":", 1)[1])
    with (
        CommitteeMember(
            member_keys["member-2"], workdir=served.members["member-1"].workdir.parent / "x"
        ) as m,
        pytest.raises(ConfigError, match="port in use"),
    ):
        serve(m, host="127.0.0.1", port=port)


def test_unreachable_member(served: Served) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tls = served.committee.roster[0].channel_tls(served.signed.manifest.tls_ca)
    for channel_tls in (None, tls):
        with MemberClient(f"127.0.0.1:{port}", tls=channel_tls, timeout_s=1) as client:
            with pytest.raises(MemberUnavailable):
                client.info()
            with pytest.raises(MemberUnavailable, match="no answer"):
                client.wait_ready(timeout_s=0.5)


def test_an_aggregate_body_names_its_round(served: Served) -> None:
    body = AggregateBody(3, ("a", "b"))
    assert AggregateBody.from_bytes(body.to_bytes()) == body


# --------------------------------------------------------------------------- upload once


def _upload_once(
    served: Served,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    route: dict[str, str] | None = None,
) -> list[UploadSource]:
    """Each owner's one committee upload, to the first member of its upload order (or to
    ``route[owner]``); returns the receipts as the coordinator forwards them."""
    manifest = served.signed.manifest
    committee = [entry.identity for entry in manifest.committee]
    sources = []
    for pid in IDS:
        order = upload_order(manifest.member_ids, study_id=served.study_id, round=1, sender=pid)
        member_id = (route or {}).get(pid, order[0])
        entry = manifest.member(member_id)
        assert entry is not None
        data = build_upload(
            owners[pid].identity,
            committee,
            entry.identity,
            study_id=served.study_id,
            round=1,
            payload=ckks.encrypt(owners[pid].vector),
        ).to_bytes()
        verdict = served.client(member_id).upload(data)
        receipt = UploadReceipt(
            member_id, served.study_id, 1, pid, verdict.payload_hash, verdict.receipt
        )
        receipt.verify(entry.identity)
        sources.append(receipt.source())
    return sources


def test_upload_once_over_tls_the_members_fetch_their_copies(
    served: Served, owners: dict[str, Owner], ckks: CkksSecretContext, plain_sum: Sum
) -> None:
    committee = served.committee
    assert committee.configure(served.signed, served.setup) == {}
    assert committee.open_round(1) == {}
    sources = _upload_once(served, owners, ckks)
    held = sum(len(committee.status(m).received) for m in MEMBER_IDS)
    assert held == len(IDS)  # one copy in the committee per owner, before replication
    replications, errors = committee.replicate_all(1, sources)
    assert errors == {}
    assert holders(replications, sources) == {pid: set(MEMBER_IDS) for pid in IDS}
    assert copy_faults(replications, sources) == {}
    results, errors = committee.aggregate_all(1, IDS)
    assert errors == {}
    decision = committee.decide(results, round=1, client_ids=IDS)
    assert decision.agreeing == MEMBER_IDS
    np.testing.assert_allclose(ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3)


def test_a_member_killed_after_taking_uploads_is_named_and_the_round_completes(
    served: Served, owners: dict[str, Owner], ckks: CkksSecretContext, plain_sum: Sum
) -> None:
    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    route = {"hospital-a": "member-1", "hospital-b": "member-2", "hospital-c": "member-3"}
    sources = _upload_once(served, owners, ckks, route)
    served.servers["member-3"].stop(grace=None)
    replications, errors = committee.replicate_all(1, sources)
    assert set(errors) == {"member-3"}
    for mid in ("member-1", "member-2"):
        (failure,) = replications[mid].failures
        assert (failure.sender, failure.relayer, failure.reason.value) == (
            "hospital-c",
            "member-3",
            "withheld",
        )
    assert list(copy_faults(replications, sources)) == ["member-3"]
    held = holders(replications, sources)
    client_set, chosen = choose_client_set(held, list(MEMBER_IDS), served.signed.manifest.quorum)
    assert (client_set, chosen) == (["hospital-a", "hospital-b"], ["member-1", "member-2"])
    results, errors = committee.aggregate_all(1, client_set, members=chosen)
    decision = committee.decide(results, round=1, client_ids=client_set)
    assert decision.agreeing == ("member-1", "member-2")
    np.testing.assert_allclose(
        ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(client_set), atol=1e-3
    )


def test_a_fetch_over_the_wire_needs_a_committee_member_s_signature(
    served: Served,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    member_keys: dict[str, MemberKeys],
) -> None:
    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    _upload_once(served, owners, ckks, dict.fromkeys(IDS, "member-1"))
    client = served.client("member-1")
    member_2 = member_keys["member-2"].identity

    def request(signer: Identity, **changes: Any) -> FetchRequest:
        terms: dict[str, Any] = {"round": 1, "sender": "hospital-a", "responder": "member-1"}
        terms.update(changes)
        return FetchRequest.sign(signer, study_id=served.study_id, **terms)

    copy = CommitteeUpload.from_bytes(client.fetch(request(member_2)))
    assert (copy.sender, copy.round, copy.study_id) == ("hospital-a", 1, served.study_id)
    mallory = Identity.generate("mallory", seed=b"\x66" * 32)
    with pytest.raises(VerificationError, match=Refusal.UNKNOWN_REQUESTER.value):
        client.fetch(request(mallory))
    impostor = dataclasses.replace(request(mallory), requester="member-2")
    with pytest.raises(VerificationError, match=Refusal.BAD_FETCH_SIGNATURE.value):
        client.fetch(impostor)
    with pytest.raises(VerificationError, match=Refusal.WRONG_RESPONDER.value):
        client.fetch(request(member_2, responder="member-3"))
    with pytest.raises(ProtocolAbort, match=Refusal.ROUND_NOT_OPEN.value):
        client.fetch(request(member_2, round=2))
    with pytest.raises(ProtocolAbort, match=Refusal.NOT_HELD.value):
        client.fetch(request(member_2, sender="hospital-d"))
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_FETCH.value):
        client.fetch(dataclasses.replace(request(member_2), study_id="not a study"))


def test_an_owner_of_the_client_set_fetches_the_signed_aggregate_over_the_wire(
    served: Served, seal: SealFn, owners: dict[str, Owner]
) -> None:
    from cohort.aggregator.aggregate_fetch import AggregateFetch

    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    _upload_all(served, seal)
    client = served.client("member-1")
    owner = owners["hospital-a"].identity

    def request(signer: Identity, **changes: Any) -> AggregateFetch:
        terms: dict[str, Any] = {"round": 1, "responder": "member-1"}
        terms.update(changes)
        return AggregateFetch.sign(signer, study_id=served.study_id, **terms)

    with pytest.raises(ProtocolAbort, match=Refusal.NOT_AGGREGATED.value):
        client.fetch_aggregate(request(owner))  # before the round is aggregated
    client_set = ("hospital-a", "hospital-b")
    results, errors = committee.aggregate_all(1, client_set)
    assert errors == {}
    decision = committee.decide(results, round=1, client_ids=client_set)
    assert client.fetch_aggregate(request(owner)) == decision.aggregate
    # hospital-c uploaded but is not in S: the sum of S is not its to decrypt
    with pytest.raises(VerificationError, match=Refusal.NOT_IN_CLIENT_SET.value):
        client.fetch_aggregate(request(owners["hospital-c"].identity))
    mallory = Identity.generate("mallory", seed=b"\x66" * 32)
    with pytest.raises(BadInputError, match=Refusal.NOT_IN_ROSTER.value):
        client.fetch_aggregate(request(mallory))
    impostor = dataclasses.replace(request(mallory), owner="hospital-a")
    with pytest.raises(VerificationError, match=Refusal.BAD_FETCH_SIGNATURE.value):
        client.fetch_aggregate(impostor)
    with pytest.raises(VerificationError, match=Refusal.WRONG_RESPONDER.value):
        client.fetch_aggregate(request(owner, responder="member-3"))
    with pytest.raises(ProtocolAbort, match=Refusal.NOT_AGGREGATED.value):
        client.fetch_aggregate(request(owner, round=2))
    with pytest.raises(BadInputError, match=Refusal.MALFORMED_FETCH.value):
        client.fetch_aggregate(dataclasses.replace(request(owner), study_id="not a study"))


def test_the_owner_takes_only_the_quorum_s_aggregate_and_names_who_did_not_hand_it_over(
    served: Served, seal: SealFn, owners: dict[str, Owner], caplog: pytest.LogCaptureFixture
) -> None:
    from cohort.federation.owner_net import fetch_aggregate

    committee = served.committee
    committee.configure(served.signed, served.setup)
    committee.open_round(1)
    _upload_all(served, seal)
    results, _ = committee.aggregate_all(1, IDS)
    decision = committee.decide(results, round=1, client_ids=IDS)
    served.servers["member-1"].stop(grace=None)
    owner, manifest = owners["hospital-b"].identity, served.signed.manifest

    def fetch(members: Sequence[str], aggregate_hash: bytes) -> bytes:
        return fetch_aggregate(
            owner, manifest, round=1, members=members, aggregate_hash=aggregate_hash
        )

    # member-1 is down, "nobody" is not in the committee: member-2 hands it over
    caplog.clear()
    got = fetch(["member-1", "nobody", "member-2"], decision.aggregate_hash)
    assert got == decision.aggregate
    assert [
        r.__dict__.get("fields", {}).get("member")
        for r in caplog.records
        if r.levelname == "WARNING"
    ] == ["member-1"]
    # bytes that are not what the quorum signed are refused, from every member, by name
    caplog.clear()
    with pytest.raises(VerificationError, match="no member that signed the aggregate"):
        fetch(["member-2", "member-3"], b"\x00" * 32)
    named = [
        r.__dict__.get("fields", {}).get("member")
        for r in caplog.records
        if r.levelname == "WARNING"
    ]
    assert named == ["member-2", "member-3"]
    assert all("not the one a quorum signed" in r.getMessage() for r in caplog.records[-2:])
