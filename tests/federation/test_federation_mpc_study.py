"""MPC mode end to end (``cohort simulate --secure mpc``): the real Flower runtime, DP-SGD at
every hospital, Shamir shares sealed to each of k = 3 TLS committee members (t = 2), the norm
check inside MPC with CrypTen parties over gloo and a TTP, partial sums reconstructed and
confirmed, attestations on the embedded EVM.

The same study under ``--secure none`` and the same seed releases the same model bit for bit:
the MPC sum is exact on the 2^-16 grid, as the plaintext mode's quantised sum is.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from cohort.aggregator.committee import LocalCommittee
from cohort.federation.config import StudyConfig
from cohort.federation.coordinator import Coordinator, Session
from cohort.federation.manifest import SecureMode
from cohort.federation.simulate import run_study

pytestmark = pytest.mark.slow

RECEIPT_FIELDS = {
    "party_id",
    "status",
    "reason",
    "examples",
    "epsilon",
    "payload_hash",
    "delivered",
    "receipts",
    "ledger_commitment",
    "payload_hashes",
}


LOCAL: dict[str, LocalCommittee] = {}


class KillsMemberMidRound(Coordinator):
    """Kills member-3 in round 2 after every hospital uploaded its shares, before the
    committee validates and sums them (k - t = 1 member lost mid-round)."""

    def open_session(self) -> Session:
        session = super().open_session()
        finish = session.mode.finish

        def killing(rnd: int, *args: Any) -> Any:
            if rnd == 2:
                LOCAL["committee"].kill("member-3")
            return finish(rnd, *args)

        session.mode.finish = killing  # type: ignore[method-assign,assignment]
        return session


@pytest.fixture(scope="module")
def member_killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("killed")
    config = StudyConfig(clients=3, rounds=3, secure=SecureMode.MPC, seed=11)
    with LocalCommittee(3, workdir=tmp_path_factory.mktemp("committee"), tls=True) as local:
        LOCAL["committee"] = local
        summary = run_study(config, out, committee=local, coordinator_class=KillsMemberMidRound)
    LOCAL.clear()
    return summary


def test_the_study_completes_with_k_minus_t_members_killed_mid_round(
    member_killed: dict[str, Any],
) -> None:
    rounds = member_killed["rounds"]
    assert [r["finalized"] for r in rounds] == [True, True, True]
    assert all(r["clients_included"] == ["hospital-1", "hospital-2", "hospital-3"] for r in rounds)
    # the member that died after taking its shares is named; rounds 3 runs without it
    assert "member-3" in rounds[1]["faulty_members"]
    assert member_killed["chain"]["settled"]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for mode in (SecureMode.MPC, SecureMode.NONE):
        out = tmp_path_factory.mktemp(mode.value)
        config = StudyConfig(clients=3, rounds=2, secure=mode, seed=11)
        runs[mode.value] = {"summary": run_study(config, out), "out": out}
    return runs


def test_mpc_study_finalizes_every_round_and_pays(studies: dict[str, Any]) -> None:
    summary = studies["mpc"]["summary"]
    assert summary["config"]["secure"] == "mpc"
    assert summary["config"]["mpc"]["threshold"] == 2
    assert summary["config"]["mpc"]["norm_bound"] == 10.0
    assert [r["finalized"] for r in summary["rounds"]] == [True, True]
    for r in summary["rounds"]:
        assert r["clients_included"] == ["hospital-1", "hospital-2", "hospital-3"]
        assert r["faulty_members"] == {}
        assert r["rejected"] == {}
    assert summary["chain"]["settled"]
    assert summary["chain"]["total_paid_wei"] > 0


def test_mpc_releases_the_plaintext_modes_model_bit_for_bit(studies: dict[str, Any]) -> None:
    mpc = np.load(studies["mpc"]["out"] / "model.npy")
    plain = np.load(studies["none"]["out"] / "model.npy")
    assert mpc.dtype == plain.dtype
    assert np.array_equal(mpc, plain)
    accuracies = [[r["accuracy"] for r in studies[m]["summary"]["rounds"]] for m in ("mpc", "none")]
    assert accuracies[0] == accuracies[1]


def test_the_coordinators_transcript_holds_receipts_only(studies: dict[str, Any]) -> None:
    """What reached the coordinator from the hospitals in MPC mode: receipts (ids, hashes,
    the members' signed receipts), no array, no share and no seed."""
    lines = (studies["mpc"]["out"] / "coordinator-inbound.jsonl").read_text().splitlines()
    trains = [json.loads(line) for line in lines if '"message_type": "train"' in line]
    assert len(trains) == 6
    for message in trains:
        assert message["arrays"] == {}
        fields = message["configs"]["cohort"]
        assert set(fields) == RECEIPT_FIELDS
        # sizes in bytes: 3 member ids, 3 receipts of 64 bytes, 3 payload hashes of 32
        assert fields["receipts"] == 3 * 64
        assert fields["payload_hashes"] == 3 * 32
    # the control: in plaintext mode the same transcript does show each update's array
    plain = (studies["none"]["out"] / "coordinator-inbound.jsonl").read_text().splitlines()
    seen = [json.loads(line)["arrays"] for line in plain if '"message_type": "train"' in line]
    assert all(a == {"arrays": {"flat": 1058}} for a in seen)
    assert len(seen) == 6


def test_the_manifest_carries_the_mpc_terms(studies: dict[str, Any]) -> None:
    manifest = json.loads((studies["mpc"]["out"] / "manifest.json").read_text())["manifest"]
    assert manifest["secure"] == "mpc"
    assert manifest["mpc"]["prime"] == 8388593
    assert manifest["mpc"]["frac_bits"] == 16
    assert len(manifest["mpc"]["rendezvous"]) == len(manifest["committee"]) == 3
