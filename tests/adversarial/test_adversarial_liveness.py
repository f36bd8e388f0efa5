"""Liveness against a committee that goes down, over the real Flower runtime.

One study, committee of three member processes, quorum two: member-3 is dead before the
study is configured (the study goes on with a quorum), and member-2 dies before round 2 (no
quorum is left): the coordinator must stop the study with a reason *before* any hospital
trains round 2, so no budget is spent on a round that cannot complete.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from cohort.aggregator.committee import LocalCommittee
from cohort.federation.config import StudyConfig
from cohort.federation.coordinator import Coordinator, Session
from cohort.federation.simulate import run_study

pytestmark = pytest.mark.slow

LOCAL: dict[str, LocalCommittee] = {}


class CommitteeFails(Coordinator):
    def open_session(self) -> Session:
        LOCAL["committee"].kill("member-3")
        return super().open_session()

    def play_round(self, session: Session, rnd: int) -> bool:
        if rnd == 2:
            LOCAL["committee"].kill("member-2")
        return super().play_round(session, rnd)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("liveness")
    config = StudyConfig(clients=3, rounds=3, committee=3, quorum=2, seed=5)
    with LocalCommittee(3, workdir=tmp_path_factory.mktemp("committee"), tls=True) as local:
        LOCAL["committee"] = local
        summary = run_study(config, out, committee=local, coordinator_class=CommitteeFails)
    LOCAL.clear()
    return {"summary": summary, "out": out}


def test_one_member_down_the_study_completes(study: dict[str, Any]) -> None:
    (first,) = study["summary"]["rounds"]
    assert first["finalized"]
    assert first["clients_included"] == ["hospital-1", "hospital-2", "hospital-3"]
    assert study["summary"]["chain"]["finalized_rounds"] == 1


def test_quorum_lost_stops_before_any_budget_is_spent(study: dict[str, Any]) -> None:
    stopped = study["summary"]["stopped"]
    assert stopped.startswith("round 2: only 1 of 3 committee members opened round 2 (quorum 2)")
    assert "member-2" in stopped
    assert "member-3" in stopped
    for ledger in (study["out"] / "hospitals").glob("*/ledger-*.json"):
        rounds = [e["round"] for e in json.loads(ledger.read_text())["entries"]]
        assert rounds == [1], (ledger, rounds)
    # The contract is not settled: its final round never ran and the deadline is ahead.
    assert not study["summary"]["chain"]["settled"]
