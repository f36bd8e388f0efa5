"""Real member processes: LocalCommittee, the CLI, and a committee with an in-process
misbehaving member built from explicit endpoints."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from committee_testkit import LENGTH, MEMBER_IDS, STUDY, SealFn

from cohort.aggregator.client import MemberClient
from cohort.aggregator.committee import Committee, LocalCommittee
from cohort.aggregator.member import (
    AggregateResult,
    CommitteeMember,
    MemberKeys,
    StudyConfig,
    aggregate_result_digest,
)
from cohort.aggregator.quorum import AttestationCheck, FaultReason, decide
from cohort.aggregator.service import serve
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import ConfigError, ProtocolAbort

IDS = ("hospital-a", "hospital-b", "hospital-c")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _run_round(committee: Committee, study: StudyConfig, seal: SealFn) -> list[AggregateResult]:
    committee.configure(study)
    committee.open_round(1, study_id=STUDY)
    for ref in committee.roster:
        client = committee.client(ref.member_id)
        for pid in IDS:
            assert client.upload(seal(pid, ref.info)).accepted
    results, errors = committee.aggregate(1, IDS, study_id=STUDY)
    assert errors == {}
    return results


def test_local_committee_of_three_processes(
    tmp_path: Path,
    study: StudyConfig,
    seal: SealFn,
    ckks: CkksSecretContext,
    plain_sum: Callable[[Sequence[str]], np.ndarray],
) -> None:
    local = LocalCommittee(size=3, workdir=tmp_path)
    with local:
        assert local.committee.member_ids == MEMBER_IDS
        assert len({s.endpoint for s in local.roster}) == 3
        assert len({s.eth_address for s in local.roster}) == 3
        assert all(s.endpoint.startswith("127.0.0.1:") for s in local.roster)
        pids = local.pids
        assert all(not _gone(pid) for pid in pids)
        results = _run_round(local.committee, study, seal)
        decision = decide(
            results,
            quorum=2,
            roster=local.roster,
            study_id=STUDY,
            round=1,
            client_ids=IDS,
            attestation=AttestationCheck.for_study(study, IDS),
        )
        assert decision.agreeing == MEMBER_IDS
        assert decision.faulty == ()
        np.testing.assert_allclose(
            ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3
        )
    assert all(_gone(pid) for pid in pids)
    assert local.exit_codes == (0, 0, 0)  # stopped cleanly by SIGTERM
    for mid in MEMBER_IDS:
        assert (tmp_path / mid / "keys" / "identity.json").exists()
        assert not (tmp_path / mid / "port").exists()


class _Tamperer(CommitteeMember):
    """A member that adds its own ciphertext to the aggregate and signs the result."""

    def __init__(self, keys: MemberKeys, extra: bytes) -> None:
        super().__init__(keys)
        self._evil_keys = keys
        self._extra = extra

    def aggregate(
        self, round: int, client_ids: Sequence[str], *, study_id: str | None = None
    ) -> AggregateResult:
        honest = super().aggregate(round, client_ids, study_id=study_id)
        aggregate = self._extra
        new_hash = tagged_hash(Tag.AGGREGATE, aggregate)
        digest = aggregate_result_digest(
            study_id=honest.study_id,
            round=honest.round,
            client_ids=honest.client_ids,
            aggregate_hash=new_hash,
        )
        return dataclasses.replace(
            honest,
            aggregate=aggregate,
            aggregate_hash=new_hash,
            signature=self._evil_keys.identity.sign(digest),
        )


def test_committee_from_endpoints_names_an_in_process_tamperer(
    tmp_path: Path,
    study: StudyConfig,
    seal: SealFn,
    ckks: CkksSecretContext,
    member_keys: dict[str, MemberKeys],
    plain_sum: Callable[[Sequence[str]], np.ndarray],
) -> None:
    evil = _Tamperer(member_keys["member-3"], ckks.encrypt(np.full(LENGTH, 50.0)))
    server, port = serve(evil, host="127.0.0.1", port=0)
    try:
        with LocalCommittee(size=2, workdir=tmp_path) as local:
            endpoints = [s.endpoint for s in local.roster] + [f"127.0.0.1:{port}"]
            with Committee.connect(endpoints) as committee:
                assert committee.member_ids == MEMBER_IDS
                results = _run_round(committee, study, seal)
                decision = decide(
                    results,
                    quorum=2,
                    roster=committee.roster,
                    study_id=STUDY,
                    round=1,
                    client_ids=IDS,
                )
    finally:
        server.stop(grace=None)
    assert decision.agreeing == ("member-1", "member-2")
    assert [(f.member_id, f.reason) for f in decision.faulty] == [
        ("member-3", FaultReason.DISAGREES)
    ]
    np.testing.assert_allclose(ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3)


def test_a_member_that_cannot_start_is_reported(tmp_path: Path) -> None:
    local = LocalCommittee(size=2, workdir=tmp_path, python="/bin/false", startup_timeout_s=20)
    with pytest.raises(ProtocolAbort, match="exited with code"):
        local.__enter__()
    assert all(_gone(pid) for pid in local.pids)
    with pytest.raises(ConfigError):
        LocalCommittee(size=0, workdir=tmp_path)


def _start_cli(keystore: Path, port_file: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "cohort.aggregator", "--keystore", str(keystore),
        "--port-file", str(port_file),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_port(proc: subprocess.Popen[bytes], port_file: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        time.sleep(0.05)
    raise AssertionError("member did not write its port file")


def test_cli_serves_keeps_its_keys_and_stops_on_sigterm(tmp_path: Path) -> None:
    keystore, port_file = tmp_path / "m7", tmp_path / "m7.port"
    identities = []
    for _ in range(2):
        proc = _start_cli(keystore, port_file)
        try:
            port = _wait_port(proc, port_file)
            with MemberClient(f"127.0.0.1:{port}") as client:
                status = client.info()
            assert status.info.member_id == "m7"
            identities.append(status.info)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert not port_file.exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    assert identities[0] == identities[1]  # the key store was loaded, not regenerated
