"""An outsider on the network against real committee member processes (TLS, 127.0.0.1).

The outsider can reach every member's port and holds keys of its own, but not the
coordinator's. It tries what issue 5 demonstrated against the old members: control calls
without the coordinator's signature (the old unauthenticated Configure(reset)), replays of
captured calls and envelopes (also across a member crash), OpenRound(2^64-1), a client set of
one, reading who uploaded, and plaintext connections. Each attempt fails with a named reason,
and the honest committee still aggregates afterwards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from studykit import hospitals, make_study

from cohort.aggregator.client import MemberClient
from cohort.aggregator.committee import Committee, LocalCommittee
from cohort.aggregator.control import (
    AggregateBody,
    ConfigureBody,
    ControlBody,
    ControlSigner,
    OpenRoundBody,
    StatusBody,
)
from cohort.aggregator.modes import CkksSpec, sign_dealt_context
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity
from cohort.errors import CohortError, VerificationError
from cohort.federation.manifest import SignedManifest

pytestmark = pytest.mark.slow

OWNERS = ("hospital-1", "hospital-2", "hospital-3")


@dataclass
class Deployment:
    local: LocalCommittee
    signed: SignedManifest
    committee: Committee
    coordinator: ControlSigner
    outsider: ControlSigner
    owners: dict[str, Identity]
    context: CkksSecretContext
    setup: CkksSpec
    payloads: dict[str, bytes]

    @property
    def study_id(self) -> str:
        return self.signed.study_id

    def client(self, member_id: str) -> MemberClient:
        return self.committee.client(member_id)

    def envelope(self, owner: str, member_id: str, round: int = 1) -> bytes:
        entry = self.signed.manifest.member(member_id)
        assert entry is not None
        if owner not in self.payloads:  # one ciphertext per owner, one envelope per member
            length = self.signed.manifest.update_length
            vector = quantize(np.full(length, 0.01), grid=self.context.params.release_grid)
            self.payloads[owner] = self.context.encrypt(vector)
        payload = self.payloads[owner]
        return build_envelope(
            self.owners[owner], entry.identity, study_id=self.study_id, round=round, payload=payload
        ).to_bytes()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("outsider")
    owners = hospitals(root / "hospitals", 3)
    with LocalCommittee(3, workdir=root / "committee", tls=True) as local:
        study = make_study(
            owners, committee=local.entries(), tls_ca=local.ca_pem, approve_owners=False
        )
        local.approve(study.signed)
        identities = {o.party_id: o.keystore.identity() for o in owners}
        context = CkksSecretContext.generate()
        public = context.public().to_bytes()
        setup = CkksSpec(
            public_context=public,
            dealer_signature=sign_dealt_context(identities[OWNERS[0]], study.study_id, public),
        )
        coordinator = ControlSigner(study.coordinator)
        with Committee(study.manifest, coordinator, timeout_s=20) as committee:
            assert committee.configure(study.signed, setup) == {}
            yield Deployment(
                local,
                study.signed,
                committee,
                coordinator,
                ControlSigner(Identity.generate("coordinator")),
                identities,
                context,
                setup,
                {},
            )


def _refused(call: object, code: str) -> str:
    assert callable(call)
    with pytest.raises(CohortError) as info:
        call()
    assert code in str(info.value), str(info.value)
    return str(info.value)


def test_unsigned_control_is_refused(deployment: Deployment) -> None:
    """The outsider signs with its own key: every control call is refused, none is parsed."""
    d, study, member = deployment, deployment.study_id, "member-1"
    client = d.client(member)
    calls: dict[str, ControlBody] = {
        "configure": ConfigureBody(d.signed.to_bytes(), d.setup),
        "open_round": OpenRoundBody(round=1),
        "aggregate": AggregateBody(round=1, client_ids=OWNERS),
        "status": StatusBody(),
    }
    for kind, body in calls.items():
        control = d.outsider.sign(study, member, body)
        _refused(lambda c=control, k=kind: getattr(client, k)(c), "bad_control_signature")
    # A genuine call for member-1 presented to member-2: refused too.
    genuine = d.coordinator.sign(study, member, OpenRoundBody(round=1))
    _refused(lambda: d.client("member-2").open_round(genuine), "bad_control_signature")


def test_replayed_control_is_refused(deployment: Deployment) -> None:
    d = deployment
    captured = d.coordinator.sign(d.study_id, "member-3", StatusBody())
    d.client("member-3").status(captured)
    _refused(lambda: d.client("member-3").status(captured), "stale_counter")


def test_open_round_max_does_not_lock_out(deployment: Deployment) -> None:
    d = deployment
    for rnd in (2**64 - 1, d.signed.manifest.rounds + 1, 0):
        for member, error in d.committee.open_round(rnd).items():
            assert "round_out_of_range" in str(error), (member, error)
    assert d.committee.open_round(1) == {}  # the honest round 1 still opens everywhere


def test_lone_aggregate_is_refused(deployment: Deployment) -> None:
    d = deployment
    assert d.committee.open_round(1) == {}
    for owner in OWNERS[:2]:
        for member in d.signed.manifest.member_ids:
            d.client(member).upload(d.envelope(owner, member))
    _refused(lambda: d.committee.aggregate("member-1", 1, [OWNERS[0]]), "client_set_too_small")
    _refused(lambda: d.committee.aggregate("member-1", 1, [OWNERS[0], "ghost"]), "not_in_roster")


def test_status_needs_the_coordinator_and_info_reveals_nothing(deployment: Deployment) -> None:
    d = deployment
    public = d.client("member-2").info()
    assert public.info.member_id == "member-2"
    fields = {f.name for f in dataclasses.fields(public)}
    assert fields == {"info", "modes", "tls_fingerprint"}  # no round, no senders
    forged = d.outsider.sign(d.study_id, "member-2", StatusBody())
    _refused(lambda: d.client("member-2").status(forged), "bad_control_signature")
    assert d.committee.status("member-2").study_id == d.study_id  # the coordinator may ask


def test_plaintext_client_cannot_reach_a_member(deployment: Deployment) -> None:
    d = deployment
    endpoint = d.local.endpoint("member-1")
    with MemberClient(endpoint, tls=None, timeout_s=5) as plain, pytest.raises(CohortError):
        plain.info(timeout_s=5)
    wrong_pin = d.local.channel_tls("member-1")
    assert wrong_pin is not None
    with (
        MemberClient(
            endpoint, tls=dataclasses.replace(wrong_pin, fingerprint=bytes(32)), timeout_s=5
        ) as pinned,
        pytest.raises(VerificationError),
    ):
        pinned.info(timeout_s=5)


def test_replayed_envelopes_after_restart_are_refused(deployment: Deployment) -> None:
    d = deployment
    assert d.committee.open_round(1) == {}
    captured = d.envelope(OWNERS[2], "member-3")
    d.client("member-3").upload(captured)
    _refused(lambda: d.client("member-3").upload(captured), "replayed_nonce")
    before = d.committee.status("member-3").received
    d.local.restart("member-3", crash=True)
    _refused(lambda: d.client("member-3").upload(captured), "replayed_nonce")
    assert d.committee.status("member-3").received == before
    assert OWNERS[2] in before
    # The honest round still completes over S = all three owners on the two other members.
    for member in ("member-1", "member-2"):
        d.client(member).upload(d.envelope(OWNERS[2], member))
    results, errors = d.committee.aggregate_all(1, list(OWNERS))
    assert errors == {}
    decision = d.committee.decide(results, round=1, client_ids=list(OWNERS))
    assert set(decision.agreeing) == {"member-1", "member-2", "member-3"}
