"""The ``cohort`` command line: options are validated before anything starts, and the
ledger command verifies, recomputes and exits 1 naming each violation."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cohort.clients.privacy import DpEvent, LedgerEntry, PrivacyLedger, compute_epsilon
from cohort.errors import ProtocolAbort
from cohort.federation.cli import app

runner = CliRunner()
STUDY = "ab" * 32


def one_line_error(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_help_lists_every_role_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "member", "ledger", "study", "keys", "certs"):
        assert command in result.output
    study = runner.invoke(app, ["study", "--help"])
    assert study.exit_code == 0
    assert "show" in study.output
    assert "approve" in study.output


# --------------------------------------------------------------------------- simulate


def _runner_module(
    monkeypatch: pytest.MonkeyPatch, run_study: Callable[..., dict[str, Any]]
) -> None:
    """Stand in for cohort.federation.simulate (a whole Ray/Flower study takes minutes and
    is covered by the e2e tests): the CLI imports it only after validating its options."""
    module = types.ModuleType("cohort.federation.simulate")
    module.SUMMARY = "summary.json"  # type: ignore[attr-defined]
    module.run_study = run_study  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cohort.federation.simulate", module)


@pytest.fixture
def no_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as starting a study."""

    def refuse(*args: object, **kwargs: object) -> dict[str, Any]:
        raise AssertionError("the study was started")

    _runner_module(monkeypatch, refuse)


@pytest.mark.usefixtures("no_study")
def test_simulate_rejects_bad_options_before_starting_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for args, needle in [
        (["--clients", "1"], "clients must be in 2..1024"),
        (["--committee", "3", "--quorum", "1"], "quorum must be a strict majority"),
        (["--secure", "paillier"], "is not one of: ckks, none"),
        (["--epsilon", "0"], "--epsilon must be a finite number > 0"),
        (["--epsilon", "-1"], "--epsilon must be a finite number > 0"),
        (["--epsilon", "inf"], "got inf"),
        (["--epsilon", "nan"], "got nan"),
        (["--model", "os:ftruncate"], "built-in architectures only"),
        (["--secure", "mpc", "--mpc-norm-bound", "-1"], "mpc_norm_bound must be a positive"),
        (["--secure", "mpc", "--mpc-norm-bound", "nan"], "mpc_norm_bound must be a positive"),
        (["--secure", "mpc", "--committee", "1", "--quorum", "1"], ">= 2 in MPC mode"),
    ]:
        result = runner.invoke(app, ["simulate", *args, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert needle in one_line_error(result)
    assert not out.exists()


@pytest.mark.usefixtures("no_study")
def test_simulate_refuses_an_out_path_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "summary.json"
    taken.write_text("{}")
    for out in (taken, taken / "run"):
        result = runner.invoke(app, ["simulate", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert "is not a directory" in one_line_error(result)


@pytest.mark.usefixtures("no_study")
def test_unknown_log_level_lists_the_valid_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--log-level", "verbose", "simulate", "--out", str(tmp_path)])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "--log-level 'verbose'" in line
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in line


@pytest.mark.usefixtures("no_study")
def test_the_log_level_comes_from_the_environment_unless_the_flag_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``cohort deploy local`` relies on: its processes get COHORT_LOG_LEVEL=INFO."""
    import logging

    root = logging.getLogger("cohort")
    level, handlers, propagate = root.level, list(root.handlers), root.propagate
    try:
        monkeypatch.setenv("COHORT_LOG_LEVEL", "info")
        runner.invoke(app, ["simulate", "--out", str(tmp_path / "a")])
        assert root.level == logging.INFO
        runner.invoke(app, ["--log-level", "ERROR", "simulate", "--out", str(tmp_path / "b")])
        assert root.level == logging.ERROR

        monkeypatch.setenv("COHORT_LOG_LEVEL", "chatty")
        result = runner.invoke(app, ["simulate", "--out", str(tmp_path / "c")])
        assert result.exit_code == 2
        assert "COHORT_LOG_LEVEL 'chatty' is not one of" in one_line_error(result)
    finally:  # as it was, for the tests after this one
        root.setLevel(level)
        root.handlers[:] = handlers
        root.propagate = propagate


def _summary(*, finalized: int) -> dict[str, Any]:
    """What run_study returns (federation/simulate.py build_summary), for two rounds."""
    rounds = [
        {
            "round": rnd,
            "accuracy": 0.5,
            "loss": 0.69,
            "max_epsilon": 1.2,
            "clients_included": [],
            "aggregate_hash": "",
            "declined": ["hospital-1", "hospital-2"],
            "failed": [],
            "faulty_members": {"member-3": "envelope signature"},
            "finalized": rnd <= finalized,
        }
        for rnd in (1, 2)
    ]
    return {
        "study_id": STUDY,
        "rounds": rounds,
        "chain": {
            "provider": "embedded",
            "contract": "0x" + "00" * 20,
            "finalized_rounds": finalized,
            "bounty_wei": 10,
            "total_paid_wei": 0,
        },
        "node_errors": [],
    }


def _fake_study(
    monkeypatch: pytest.MonkeyPatch, outcome: Callable[[], dict[str, Any]]
) -> list[Path]:
    started: list[Path] = []

    def run_study(config: object, out: Path, *, on_round: object = None) -> dict[str, Any]:
        started.append(out)
        return outcome()

    _runner_module(monkeypatch, run_study)
    return started


def test_simulate_exits_1_when_no_round_is_finalized(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    started = _fake_study(monkeypatch, lambda: _summary(finalized=0))
    result = runner.invoke(app, ["simulate", "--rounds", "2", "--out", str(tmp_path / "run")])
    assert started, result.output
    assert result.exit_code == 1, result.output
    assert "the study finalized no round (2 attempted)" in result.output
    assert "round 1: declined: hospital-1, hospital-2; faulty members: member-3" in result.output
    ok = _fake_study(monkeypatch, lambda: _summary(finalized=2))
    result = runner.invoke(app, ["simulate", "--rounds", "2", "--out", str(tmp_path / "run")])
    assert ok
    assert result.exit_code == 0, result.output
    assert "2 rounds finalized" in result.output


def test_simulate_exits_1_when_the_study_stopped_early(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def stopped() -> dict[str, Any]:
        summary = _summary(finalized=1)
        summary["stopped"] = "round 2: only 1 of 3 committee members opened round 2 (quorum 2)"
        return summary

    _fake_study(monkeypatch, stopped)
    result = runner.invoke(app, ["simulate", "--rounds", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "study stopped early: round 2: only 1 of 3 committee members" in result.output


def test_plaintext_comparison_run_succeeds_without_on_chain_finalization(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def plaintext() -> dict[str, Any]:
        summary = _summary(finalized=0)
        summary["config"] = {"secure": "none"}
        summary["rounds"][0]["aggregate_hash"] = "ab" * 32
        return summary

    _fake_study(monkeypatch, plaintext)
    args = ["simulate", "--secure", "none", "--rounds", "2", "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_simulate_warns_that_a_seeded_run_is_unfit_for_patient_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def abort() -> dict[str, Any]:
        raise ProtocolAbort("no quorum in round 1")

    _fake_study(monkeypatch, abort)
    result = runner.invoke(app, ["simulate", "--seed", "7", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "seeded run (--seed 7)" in result.output
    assert "unfit for real patient data" in result.output
    assert "study aborted: no quorum in round 1" in result.output
    unseeded = runner.invoke(app, ["simulate", "--out", str(tmp_path / "run")])
    assert "seeded run" not in unseeded.output


# --------------------------------------------------------------------------- ledger


def _ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger.open(path, owner="hospital-1", epsilon_cap=3.0, delta=1e-5)
    events = []
    for rnd in (1, 2):
        event = DpEvent(
            round=rnd,
            noise_multiplier=1.1,
            sample_rate=0.1,
            steps=10,
            max_grad_norm=1.0,
            delta=1e-5,
        )
        events.append(event)
        ledger.record(
            event, study_id=STUDY, epsilon=compute_epsilon(events, delta=1e-5), seeded=False
        )
    return path


def _rehash(path: Path, edit: Callable[[int, LedgerEntry], LedgerEntry]) -> None:
    """Rewrite the ledger with ``edit`` applied to each entry and every hash recomputed: a
    consistent chain a forger could publish (only the recomputation catches it)."""
    document = json.loads(path.read_text())
    prev = bytes.fromhex(document["genesis"])
    entries = []
    for number, entry in enumerate(PrivacyLedger.load(path).entries, start=1):
        changed = dataclasses.replace(edit(number, entry), prev_hash=prev)
        changed = dataclasses.replace(changed, entry_hash=LedgerEntry.link(prev, changed.body()))
        entries.append(changed.to_dict())
        prev = changed.entry_hash
    document["entries"] = entries
    document["head"] = prev.hex()
    path.write_text(json.dumps(document, indent=2))


def test_ledger_command_verifies_and_recomputes_epsilon(tmp_path: Path) -> None:
    path = _ledger(tmp_path)
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 0, result.output
    assert "hospital-1" in result.output
    assert "ledger verified" in result.output
    as_json = runner.invoke(app, ["ledger", "--json", str(path)])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["owner"] == "hospital-1"
    assert report["rounds"] == 2
    assert report["studies"] == [STUDY]
    assert report["epsilon_cap"] == 3.0
    assert report["violations"] == []
    assert abs(report["epsilon_recomputed"] - 2.986) < 5e-3


def test_ledger_command_refuses_an_edited_ledger(tmp_path: Path) -> None:
    path = _ledger(tmp_path)
    document = json.loads(path.read_text())
    document["entries"][0]["noise_multiplier"] = 5.0  # pretend less privacy was spent
    path.write_text(json.dumps(document))
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 1
    assert "violation: entry 1" in result.output
    assert "hash chain: content does not match its hash" in result.output
    assert "ledger rejected" in result.output


def test_ledger_command_catches_a_rehashed_ledger_over_its_cap(tmp_path: Path) -> None:
    path = _ledger(tmp_path)

    def claim(number: int, entry: LedgerEntry) -> LedgerEntry:
        return dataclasses.replace(entry, epsilon_after=9.1) if number == 2 else entry

    _rehash(path, claim)
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 1, result.output
    assert "hash chain" not in result.output  # the chain itself is consistent
    assert "entry 2 (study abababababab..., round 2): epsilon: recorded 9.100000" in result.output
    assert "cap: recorded epsilon 9.100000 > cap 3" in result.output
    assert "ledger rejected: 2 violation(s)" in result.output
    report = json.loads(runner.invoke(app, ["ledger", "--json", str(path)]).stdout)
    assert report["epsilon_recorded"] == 9.1
    assert report["ok"] is False


def test_ledger_command_catches_understated_noise_in_a_rehashed_ledger(tmp_path: Path) -> None:
    path = _ledger(tmp_path)

    def less_noise(number: int, entry: LedgerEntry) -> LedgerEntry:
        event = dataclasses.replace(entry.event, noise_multiplier=0.5)
        return dataclasses.replace(entry, event=event)

    _rehash(path, less_noise)
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 1
    assert "entry 1 (study abababababab..., round 1): epsilon: recorded" in result.output
    assert "cap: recomputed epsilon" in result.output


def test_ledger_command_refuses_an_unreadable_file_in_one_line(tmp_path: Path) -> None:
    garbage = tmp_path / "ledger.json"
    garbage.write_text("not json {")
    result = runner.invoke(app, ["ledger", str(garbage)])
    assert result.exit_code == 1
    assert "ledger is not valid JSON" in one_line_error(result)
    missing = runner.invoke(app, ["ledger", str(tmp_path / "absent.json")])
    assert missing.exit_code == 1
    assert "cannot read ledger" in one_line_error(missing)
