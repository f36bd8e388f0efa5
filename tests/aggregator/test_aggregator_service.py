"""gRPC round trip against a real in-process server on 127.0.0.1, and error-type mapping."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest
from committee_testkit import LENGTH, STUDY, SealFn

from cohort.aggregator.client import MemberClient, MemberUnavailable
from cohort.aggregator.member import CommitteeMember, MemberKeys, StudyConfig
from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.service import serve, study_from_proto, study_to_proto
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import Envelope
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError


@pytest.fixture
def served(member_keys: dict[str, MemberKeys]) -> Iterator[tuple[CommitteeMember, MemberClient]]:
    member = CommitteeMember(member_keys["member-1"])
    server, port = serve(member, host="127.0.0.1", port=0)
    client = MemberClient(f"127.0.0.1:{port}", timeout_s=10)
    try:
        yield member, client
    finally:
        client.close()
        server.stop(grace=None)


def test_study_config_survives_the_wire(study: StudyConfig) -> None:
    assert study_from_proto(study_to_proto(study)) == study


def test_round_trip(
    served: tuple[CommitteeMember, MemberClient],
    study: StudyConfig,
    seal: SealFn,
    ckks: CkksSecretContext,
    plain_sum: Callable[[Sequence[str]], np.ndarray],
) -> None:
    member, client = served
    status = client.info()
    assert status.info == member.info
    assert status.study_id is None
    assert status.open_round is None
    client.configure(study)
    client.open_round(1, study_id=STUDY)
    assert client.info().open_round == 1
    assert client.info().study_id == STUDY
    ids = ["hospital-a", "hospital-b"]
    for pid in ids:
        verdict = client.upload(seal(pid, status.info))
        assert verdict.accepted
        assert verdict.sender == pid
        assert verdict.round == 1
        assert len(verdict.payload_hash) == 32
    assert client.info().received == tuple(ids)
    with pytest.raises(ProtocolAbort, match="hospital-c"):
        client.aggregate(1, [*ids, "hospital-c"])
    result = client.aggregate(1, ids, study_id=STUDY)
    assert result == member.aggregate(1, ids)
    np.testing.assert_allclose(ckks.decrypt(result.aggregate)[:LENGTH], plain_sum(ids), atol=1e-3)


def test_errors_keep_their_type_across_the_wire(
    served: tuple[CommitteeMember, MemberClient], study: StudyConfig, seal: SealFn
) -> None:
    member, client = served
    with pytest.raises(ProtocolAbort, match="not_configured"):
        client.upload(seal("hospital-a", member.info))
    client.configure(study)
    with pytest.raises(ProtocolAbort, match="round_not_open"):
        client.upload(seal("hospital-a", member.info))
    client.open_round(1)
    good = seal("hospital-a", member.info)
    client.upload(good)
    with pytest.raises(VerificationError, match="replayed_nonce"):
        client.upload(good)
    forged = dataclasses.replace(
        Envelope.from_bytes(seal("hospital-b", member.info)), signature=bytes(64)
    )
    with pytest.raises(VerificationError, match="bad_signature"):
        client.upload(forged.to_bytes())
    with pytest.raises(BadInputError, match="malformed"):
        client.upload(b"definitely not an envelope")
    with pytest.raises(BadInputError, match="mode_check_failed"):
        client.upload(seal("hospital-c", member.info, vector=np.ones(LENGTH + 2)))
    with pytest.raises(ProtocolAbort, match="wrong_round"):
        client.upload(seal("hospital-d", member.info, round=2))
    with pytest.raises(ProtocolAbort, match="reset"):
        client.configure(dataclasses.replace(study, study_id="other"))
    with pytest.raises(BadInputError):
        client.aggregate(1, ["hospital-a", "hospital-a"])


def test_config_errors_keep_their_subclass(
    served: tuple[CommitteeMember, MemberClient], study: StudyConfig, ckks: CkksSecretContext
) -> None:
    _, client = served
    with pytest.raises(ConfigError, match="member-1"):
        client.configure(dataclasses.replace(study, committee=("member-2", "member-3")))
    with pytest.raises(BadInputError):
        client.configure(dataclasses.replace(study, mode=CkksSpec(ckks.to_bytes())))


def test_large_messages_pass(
    served: tuple[CommitteeMember, MemberClient], study: StudyConfig
) -> None:
    """A 6 MB upload passes gRPC's 4 MB default and reaches the member's own checks."""
    _, client = served
    client.configure(study)
    client.open_round(1)
    with pytest.raises(BadInputError, match="malformed"):
        client.upload(b"\x00" * (6 * 1024 * 1024))


def test_unreachable_member() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with MemberClient(f"127.0.0.1:{port}", timeout_s=1) as client:
        with pytest.raises(MemberUnavailable):
            client.info()
        with pytest.raises(MemberUnavailable, match="no answer"):
            client.wait_ready(timeout_s=0.5)
