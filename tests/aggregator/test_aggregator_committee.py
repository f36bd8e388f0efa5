"""Real member processes: a LocalCommittee over TLS, a crash and restart that replays cannot
exploit, and the command line (identity, export, TLS or --insecure, a taken port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
)

from cohort.aggregator.client import MemberClient, MemberUnavailable
from cohort.aggregator.committee import LocalCommittee
from cohort.aggregator.control import AggregateBody, ConfigureBody, ControlSigner, OpenRoundBody
from cohort.aggregator.keys import MemberKeys
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.identity import Identity
from cohort.crypto.tls import ChannelTls, cert_fingerprint
from cohort.errors import ConfigError, ProtocolAbort, VerificationError
from cohort.federation.certs import CA_CERT, member_files, write_study_certs
from cohort.federation.manifest import CommitteeEntry

Sum = Callable[[Sequence[str]], np.ndarray]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_restarted_member_cannot_be_replayed_into_anything(
    tmp_path: Path,
    make_signed: MakeSigned,
    owners: dict[str, Owner],
    ckks: CkksSecretContext,
    coordinator: Identity,
    seal: SealFn,
    plain_sum: Sum,
) -> None:
    local = LocalCommittee(3, workdir=tmp_path)
    with local:
        entries = local.entries()
        assert [e.member_id for e in entries] == list(MEMBER_IDS)
        assert all(e.endpoint.startswith("127.0.0.1:") and e.tls_fingerprint for e in entries)
        signed = make_signed(committee=entries, tls_ca=local.ca_pem)
        study = signed.study_id
        local.approve(signed)
        setup = dealt_setup(owners[DEALER].identity, study, ckks.public().to_bytes())
        signer = ControlSigner(coordinator)
        with local.connect(signed.manifest, signer, timeout_s=10) as committee:
            one = committee.client("member-1")
            configure_call = signer.sign(study, "member-1", ConfigureBody(signed.to_bytes(), setup))
            assert one.configure(configure_call) == study
            assert committee.configure(signed, setup) == {}
            open_call = signer.sign(study, "member-1", OpenRoundBody(1))
            assert one.open_round(open_call) == 1
            assert committee.open_round(1) == {}
            uploads = {
                ref.member_id: [seal(pid, ref.info, study_id=study) for pid in IDS]
                for ref in committee.roster
            }
            for member_id, batch in uploads.items():
                for envelope in batch:
                    committee.client(member_id).upload(envelope)
            before = committee.status("member-1")
            assert before.received == IDS

            # member-1 crashes; the committee carries on without it
            local.kill("member-1")
            errors = committee.configure(signed, setup)
            assert set(errors) == {"member-1"}
            assert isinstance(errors["member-1"], MemberUnavailable)
            local.restart("member-1")

            # replays of everything captured before the crash are refused
            for envelope in uploads["member-1"]:
                with pytest.raises(VerificationError, match="replayed_nonce"):
                    one.upload(envelope)
            for call in (configure_call, open_call):
                with pytest.raises(VerificationError, match="stale_counter"):
                    getattr(one, call.kind.value)(call)
            assert committee.status("member-1") == before  # resumed exactly where it was

            results, errors = committee.aggregate_all(1, IDS)
            assert errors == {}
            decision = committee.decide(results, round=1, client_ids=IDS)
            assert decision.agreeing == MEMBER_IDS
            np.testing.assert_allclose(
                ckks.decrypt(decision.aggregate)[:LENGTH], plain_sum(IDS), atol=1e-3
            )

            # a clean restart after aggregation: the signed result and the rule hold
            aggregate_call = signer.sign(study, "member-1", AggregateBody(1, IDS))
            signed_result = one.aggregate(aggregate_call)
            local.restart("member-1", crash=False)
            with pytest.raises(VerificationError, match="stale_counter"):
                one.aggregate(aggregate_call)
            assert committee.aggregate("member-1", 1, IDS) == signed_result
            with pytest.raises(ProtocolAbort, match="client_set_changed"):
                committee.aggregate("member-1", 1, IDS[:2])
        home = local.home("member-1")
        with sqlite3.connect(home / "state.sqlite") as db:
            assert db.execute("SELECT COUNT(*) FROM uploads").fetchone() == (0,)
        pids = local.pids
    assert all(_gone(pid) for pid in pids)
    assert local.exit_codes == (0, 0, 0)  # stopped cleanly by SIGTERM
    for mid in MEMBER_IDS:
        assert (tmp_path / mid / "keys" / "identity.json").exists()
        assert (tmp_path / mid / "studies" / study / "approval.json").exists()
        assert not (tmp_path / mid / "port").exists()


def test_a_member_that_cannot_start_is_reported(tmp_path: Path) -> None:
    local = LocalCommittee(size=2, workdir=tmp_path, python="/bin/false", startup_timeout_s=20)
    with pytest.raises(ProtocolAbort, match="exited with code"):
        local.__enter__()
    assert all(_gone(pid) for pid in local.pids)
    with pytest.raises(ConfigError):
        LocalCommittee(size=0, workdir=tmp_path)


# --------------------------------------------------------------------------- command line


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cohort.aggregator", *(str(a) for a in args)]


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def cli_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-certs")
    write_study_certs(out, members=["m7"])
    return out


def _wait_port(proc: subprocess.Popen[str], port_file: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("member did not write its port file")


def test_cli_serves_tls_prints_its_identity_and_keeps_its_keys(
    tmp_path: Path, cli_certs: Path
) -> None:
    workdir, port_file = tmp_path / "m7", tmp_path / "m7.port"
    cert, key = (cli_certs / name for name in member_files("m7"))
    pin = cert_fingerprint(cert.read_bytes())
    tls = ChannelTls((cli_certs / CA_CERT).read_bytes(), "m7", pin)
    identities = []
    for _ in range(2):
        proc = subprocess.Popen(
            _cli(
                "--workdir", workdir, "--port-file", port_file, "--tls-cert", cert, "--tls-key", key
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            port = _wait_port(proc, port_file)
            with MemberClient(f"127.0.0.1:{port}", tls=tls) as client:
                status = client.info()
            assert status.info.member_id == "m7"
            assert status.tls_fingerprint == pin
            with (
                MemberClient(f"127.0.0.1:{port}", tls=None, timeout_s=2) as plain,
                pytest.raises(MemberUnavailable),
            ):
                plain.info()
            identities.append(status.info)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0
            assert status.info.identity.sign_key.hex() in out
            assert status.info.identity.box_key.hex() in out
            assert status.info.eth_address in out
            assert pin.hex() in out
            assert not port_file.exists()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert identities[0] == identities[1]  # the key store was loaded, not regenerated
    assert (workdir / "keys" / "identity.json").exists()
    assert (workdir / "state.sqlite").exists()


def test_cli_export_identity_writes_a_committee_entry(tmp_path: Path, cli_certs: Path) -> None:
    cert, key = (cli_certs / name for name in member_files("m7"))
    out = tmp_path / "m7.json"
    done = _run(
        "--workdir", tmp_path / "m7", "--export-identity", out,
        "--endpoint", "m7.example.org:7000", "--tls-cert", cert, "--tls-key", key,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    entry = CommitteeEntry(
        member_id=record["member_id"],
        sign_key=bytes.fromhex(record["sign_key"]),
        box_key=bytes.fromhex(record["box_key"]),
        eth_address=record["eth_address"],
        endpoint=record["endpoint"],
        tls_fingerprint=bytes.fromhex(record["tls_fingerprint"]),
    )
    keys = MemberKeys.load(tmp_path / "m7" / "keys")
    assert entry.identity == keys.identity.public
    assert entry.eth_address == keys.eth_address
    assert entry.endpoint == "m7.example.org:7000"
    assert entry.tls_fingerprint == cert_fingerprint(cert.read_bytes())
    assert keys.eth_private_key.hex() not in out.read_text()


def test_cli_refuses_plaintext_unless_asked_and_a_taken_port(tmp_path: Path) -> None:
    done = _run("--workdir", tmp_path / "m8")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--tls-cert" in done.stderr
    assert "--insecure" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _run("--workdir", tmp_path / "m8", "--insecure", "--port", str(port))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("cohort.aggregator:")]
    assert lines == [
        f"cohort.aggregator: committee member: cannot listen on 127.0.0.1:{port}: port in use"
    ]
