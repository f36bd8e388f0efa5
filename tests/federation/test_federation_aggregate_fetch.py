"""A study whose aggregates are too large to relay: the coordinator sends the decrypting
owners only the quorum-signed hash, they fetch the ciphertext from the members that signed
it, and the model is bit for bit the plaintext FedAvg's.

The relay limit is lowered to 0 bytes so that the demo model's aggregate (a few hundred KB)
takes the path a 1M-parameter one takes; the real Flower simulation, committee, TenSEAL
and chain run as in ``cohort simulate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cohort.aggregator.committee import LocalCommittee
from cohort.federation import transcript
from cohort.federation.config import StudyConfig
from cohort.federation.manifest import SecureMode
from cohort.federation.modes.ckks import coordinator as ckks_coordinator
from cohort.federation.simulate import TRANSCRIPT, run_study

ROUNDS = 2


def _config(secure: SecureMode) -> StudyConfig:
    return StudyConfig(clients=3, rounds=ROUNDS, committee=3, quorum=2, secure=secure, seed=5)


def test_owners_fetch_a_large_aggregate_from_its_signers_and_the_model_is_fedavg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ckks_coordinator, "RELAY_AGGREGATE_MAX", 0)
    workdir = tmp_path / "committee"
    with LocalCommittee(3, workdir=workdir, tls=True, log_level="INFO") as committee:
        fetched = run_study(_config(SecureMode.CKKS), tmp_path / "ckks", committee=committee)
    plain = run_study(_config(SecureMode.NONE), tmp_path / "none")

    assert [r["finalized"] for r in fetched["rounds"]] == [True] * ROUNDS
    for a, b in zip(fetched["rounds"], plain["rounds"], strict=True):
        assert (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"])
    np.testing.assert_array_equal(
        np.load(tmp_path / "ckks" / "model.npy"), np.load(tmp_path / "none" / "model.npy")
    )
    # each round's sum but the last rode with the next round's training, and every owner of
    # S (all three) fetched it to decrypt; the last round's two decrypting owners fetched it
    handed = [
        json.loads(line)
        for log in sorted(workdir.glob("*/member.log"))
        for line in log.read_text().splitlines()
        if '"aggregate handed over"' in line
    ]
    wanted = [r for r in range(1, ROUNDS) for _ in "abc"] + [ROUNDS, ROUNDS]
    assert sorted(e["round"] for e in handed) == wanted
    # ... and of each round's replies only one carried the sum: the others, a signed hash
    inbound = transcript.read(tmp_path / "ckks" / TRANSCRIPT)
    replies = [m for m in inbound if m["message_type"] == "query.decrypt"]
    assert len(replies) == 2
    assert sum(1 for m in replies if m["arrays"]) == 1
    revealing = [m for m in inbound if m["message_type"] == "train" and m["arrays"]]
    assert len(revealing) == ROUNDS - 1
