"""Upload once, measured on the wire: a hospital's whole upload of a CKKS round is one payload
plus a small constant, and the coordinator names a member that alters or withholds a copy
and still completes the round.

Three committee members are served over TLS on 127.0.0.1, each behind a TCP relay that
counts the bytes its callers send (the manifest's endpoints are the relays'), so what is
measured is what left the hospital's sockets: TLS records, HTTP/2 frames and all. Hospitals
run their real steps (:func:`cohort.federation.hospital.train` with DP-SGD and TenSEAL,
:func:`~cohort.federation.hospital.upload`, :func:`~cohort.federation.hospital.decrypt`);
the coordinator's own methods pick the client set and name faulty members.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from studykit import FEATURES, Study, hospitals, make_study

from cohort.aggregator.committee import Committee
from cohort.aggregator.control import ControlSigner, Refusal
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import CommitteeMember
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.replication import FetchRequest
from cohort.aggregator.service import serve
from cohort.clients.model import build_model, get_flat
from cohort.crypto.encoding import quantize
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.upload import CommitteeUpload
from cohort.federation import hospital, wire
from cohort.federation.approval import Role, approve
from cohort.federation.certs import CA_CERT, load_cert_key, member_files, write_study_certs
from cohort.federation.coordinator import Coordinator, choose_client_set
from cohort.federation.manifest import CommitteeEntry
from cohort.federation.modes.ckks.coordinator import CkksCoordinator
from cohort.federation.modes.committee_steps import aggregate_quorum

MEMBER_IDS = ("member-1", "member-2", "member-3")
OVERHEAD = 48 * 1024
"""What a hospital may send on top of its one payload in a round: TLS handshakes (each
channel has a pin pre-flight and the gRPC handshake), HTTP/2 and gRPC framing, the liveness
pings to every member and the upload's signed fields. Measured: about 11 KB, 6 KB of it to
the member that takes the upload."""


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of one member; counts the bytes callers send."""

    def __init__(self, upstream: int) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sent = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def sent(self) -> int:
        with self._lock:
            return self._sent

    def _serve(self) -> None:
        while True:
            try:
                caller, _ = self._listener.accept()
            except OSError:
                return
            member = socket.create_connection(("127.0.0.1", self._upstream))
            for src, dst, count in ((caller, member, True), (member, caller, False)):
                threading.Thread(target=self._pump, args=(src, dst, count), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self._sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._listener.close()


class Alterer(CommitteeMember):
    """Relays a copy whose payload is another valid ciphertext (the owner's fields kept)."""

    def fetch(self, request: FetchRequest) -> bytes:
        honest = CommitteeUpload.from_bytes(super().fetch(request))
        study = self._studies[request.study_id]
        requester = study.manifest.member(request.requester)
        assert requester is not None
        other = study.manifest.update_length * b"\x00"  # garbage of the right size
        return honest.sealed_for(requester.identity, other).to_bytes()


class Withholder(CommitteeMember):
    """Signs receipts, then hands no copy over."""

    def fetch(self, request: FetchRequest) -> bytes:
        super().fetch(request)
        raise Refusal.NOT_HELD.error(f"no upload of {request.sender} here (a lie)")


@dataclass
class Deployment:
    study: Study
    members: dict[str, CommitteeMember]
    relays: dict[str, CountingRelay]
    committee: Committee
    coordinator: CkksCoordinator
    homes: dict[str, Path]

    def sent(self) -> dict[str, int]:
        return {m: relay.sent for m, relay in self.relays.items()}

    def stored_payload(self, member_id: str, sender: str) -> int:
        with sqlite3.connect(self.homes[member_id] / "state.sqlite") as db:
            row = db.execute(
                "SELECT payload_size FROM uploads WHERE sender = ?", (sender,)
            ).fetchone()
        assert row is not None, (member_id, sender)
        return int(row[0])


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Deploy]:
    servers: list[grpc.Server] = []
    relays: list[CountingRelay] = []
    made: list[CommitteeMember] = []
    committees: list[Committee] = []

    def start(classes: dict[str, type[CommitteeMember]] | None = None) -> Deployment:
        certs = tmp_path / "certs"
        pins = write_study_certs(certs, members=MEMBER_IDS, hosts=("127.0.0.1", "localhost"))
        keys = {m: MemberKeys.generate(m) for m in MEMBER_IDS}
        members, by_id, entries, homes = {}, {}, [], {}
        for mid in MEMBER_IDS:
            cert_name, key_name = member_files(mid)
            cls = (classes or {}).get(mid, CommitteeMember)
            homes[mid] = tmp_path / mid
            member = cls(keys[mid], workdir=homes[mid], tls_fingerprint=bytes.fromhex(pins[mid]))
            made.append(member)
            server, port = serve(member, tls=load_cert_key(certs / cert_name, certs / key_name))
            servers.append(server)
            relay = CountingRelay(port)
            relays.append(relay)
            members[mid], by_id[mid] = member, relay
            public = keys[mid].identity.public
            entries.append(
                CommitteeEntry(
                    member_id=mid,
                    sign_key=public.sign_key,
                    box_key=public.box_key,
                    eth_address=keys[mid].eth_address,
                    endpoint=f"127.0.0.1:{relay.port}",
                    tls_fingerprint=bytes.fromhex(pins[mid]),
                )
            )
        owners = hospitals(tmp_path / "hospitals", 3)
        study = make_study(
            owners,
            committee=entries,
            member_ids=[keys[m].identity for m in MEMBER_IDS],
            tls_ca=(certs / CA_CERT).read_text(),
        )
        for mid in MEMBER_IDS:
            approve(study.signed, workdir=homes[mid], identity=keys[mid].identity, role=Role.MEMBER)
        dealt = hospital.keygen(owners[0], wire.KeygenRequest(study_id=study.study_id))
        for owner in owners[1:]:
            box = dealt.boxes[dealt.recipients.index(owner.party_id)]
            install = wire.InstallKeyRequest(
                study.study_id, box, dealt.fingerprint, dealt.dealer_signature
            )
            hospital.install_key(owner, install)
        committee = Committee(study.manifest, ControlSigner(study.coordinator), timeout_s=30)
        committees.append(committee)
        setup = CkksSpec(dealt.public_context, dealt.dealer_signature)
        assert committee.configure(study.signed, setup) == {}
        assert committee.open_round(1) == {}
        host = Coordinator(
            signed=study.signed,
            identity=study.coordinator,
            grid=cast(Any, None),
            test_set=cast(Any, None),
            contract=cast(Any, None),
            sponsor="0x" + "00" * 20,
        )
        coordinator = CkksCoordinator(host, committee)
        return Deployment(study, members, by_id, committee, coordinator, homes)

    yield start
    for committee in committees:
        committee.close()
    for server in servers:
        server.stop(grace=None)
    for relay in relays:
        relay.close()
    for member in made:
        member.close()


def test_a_hospital_uploads_one_payload_per_round_and_the_round_completes(
    deploy: Deploy,
) -> None:
    d = deploy()
    study = d.study
    instruction = wire.TrainInstruction(study_id=study.study_id, round=1, weight_unit=10_000)
    start = get_flat(build_model("mlp", in_features=FEATURES, num_classes=2))
    receipts: dict[str, wire.TrainReceipt] = {}
    k = len(MEMBER_IDS)
    for owner in study.owners:
        before = d.sent()
        outcome = hospital.train(owner, instruction, start)
        sent = {m: n - before[m] for m, n in d.sent().items()}
        receipt = outcome.receipt
        assert receipt.status == "ok", receipt.reason
        (member_id,) = receipt.delivered
        assert len(receipt.receipts) == 1
        payload = d.stored_payload(member_id, owner.party_id)
        total = sum(sent.values())
        # One payload (sealed: +48 bytes) plus a small constant, not one copy per member.
        assert payload < total <= payload + OVERHEAD, (payload, sent)
        assert total < 2 * payload < k * payload
        # The other members saw a liveness ping only.
        assert all(n < OVERHEAD // 2 for m, n in sent.items() if m != member_id), sent
        receipts[owner.party_id] = receipt
        print(f"{owner.party_id}: payload {payload} B, sent {total} B to {member_id}: {sent}")

    faulty: dict[str, str] = {}
    opened = list(MEMBER_IDS)
    held = d.coordinator.replicate(1, receipts, opened, faulty)
    assert faulty == {}
    assert held == {o.party_id: set(MEMBER_IDS) for o in study.owners}
    client_set, chosen = choose_client_set(held, opened, study.manifest.quorum)
    assert client_set == [o.party_id for o in study.owners]
    decision = aggregate_quorum(1, client_set, chosen, d.committee, faulty)
    assert decision is not None
    assert decision.agreeing == MEMBER_IDS
    assert faulty == {}


@pytest.mark.parametrize("bad", [Alterer, Withholder], ids=["alters", "withholds"])
def test_the_coordinator_names_a_member_that_alters_or_withholds_a_copy(
    deploy: Deploy, bad: type[CommitteeMember]
) -> None:
    d = deploy({"member-3": bad})
    study = d.study
    manifest = study.manifest
    rng = np.random.default_rng(3)
    updates: dict[str, np.ndarray] = {}
    receipts: dict[str, wire.TrainReceipt] = {}
    for owner in study.owners:
        secret = owner.keystore.load_ckks(study.study_id)
        updates[owner.party_id] = quantize(
            rng.normal(0, 0.05, manifest.update_length), grid=secret.params.release_grid
        )
        payload = secret.encrypt(updates[owner.party_id])
        # hospital-3's upload lands at the faulty member, the others' elsewhere.
        prefer = ("member-3",) if owner.party_id == "hospital-3" else ("member-1",)
        delivered = hospital.upload(
            owner.keystore.identity(), manifest, round=1, payload=payload, prefer=prefer
        )
        assert delivered is not None
        assert delivered.member_id == prefer[0]
        receipts[owner.party_id] = wire.TrainReceipt(
            party_id=owner.party_id,
            status="ok",
            reason="",
            examples=1,
            epsilon=0.0,
            payload_hash=tagged_hash(Tag.PAYLOAD, payload),
            delivered=(delivered.member_id,),
            receipts=(delivered.receipt,),
        )
    faulty: dict[str, str] = {}
    opened = list(MEMBER_IDS)
    held = d.coordinator.replicate(1, receipts, opened, faulty)
    verb = "altered" if bad is Alterer else "withheld"
    assert list(faulty) == ["member-3"], faulty
    assert faulty["member-3"].startswith(f"{verb} hospital-3's upload (reported by member-1: ")
    assert "reported by member-2" in faulty["member-3"]
    client_set, chosen = choose_client_set(held, opened, manifest.quorum)
    assert client_set == ["hospital-1", "hospital-2"]
    decision = aggregate_quorum(1, client_set, chosen, d.committee, faulty)
    assert decision is not None
    assert set(decision.agreeing) >= {"member-1", "member-2"}
    request = d.coordinator.decrypt_request(1, client_set, decision)
    _, total = hospital.decrypt(study.owners[0], request)
    np.testing.assert_array_equal(total, updates["hospital-1"] + updates["hospital-2"])


def test_a_receipt_the_member_did_not_sign_is_not_forwarded_as_a_source(deploy: Deploy) -> None:
    d = deploy()
    study = d.study
    owner = study.owners[0]
    secret = owner.keystore.load_ckks(study.study_id)
    payload = secret.encrypt(np.zeros(study.manifest.update_length))
    delivered = hospital.upload(owner.keystore.identity(), study.manifest, round=1, payload=payload)
    assert delivered is not None
    receipt = wire.TrainReceipt(
        party_id=owner.party_id,
        status="ok",
        reason="",
        examples=1,
        epsilon=0.0,
        payload_hash=tagged_hash(Tag.PAYLOAD, payload),
        delivered=(delivered.member_id,),
        receipts=(bytes(64),),
    )
    faulty: dict[str, str] = {}
    held = d.coordinator.replicate(1, {owner.party_id: receipt}, list(MEMBER_IDS), faulty)
    assert held == {}  # no source: no member is asked to fetch it, and no one is blamed
    assert faulty == {}
    good = dataclasses.replace(receipt, receipts=(delivered.receipt,))
    held = d.coordinator.replicate(1, {owner.party_id: good}, list(MEMBER_IDS), faulty)
    assert held == {owner.party_id: set(MEMBER_IDS)}
