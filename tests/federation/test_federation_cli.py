"""The ``cohort`` command line: options are validated before anything starts, and the
ledger command verifies and recomputes."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cohort.clients.privacy import DpEvent, PrivacyLedger, compute_epsilon
from cohort.federation.cli import app

runner = CliRunner()


def test_help_lists_every_role_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "member", "ledger"):
        assert command in result.output


def test_simulate_rejects_bad_options_before_starting_anything(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for args, needle in [
        (["--clients", "1"], "clients must be >= 2"),
        (["--committee", "3", "--quorum", "1"], "quorum must be a strict majority"),
        (["--secure", "paillier"], "is not one of: ckks, none"),
        (["--epsilon", "0"], "epsilon must be > 0"),
    ]:
        result = runner.invoke(app, ["simulate", *args, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert needle in result.output
    assert not out.exists()


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
        ledger.record(event, epsilon=compute_epsilon(events, delta=1e-5))
    return path


def test_ledger_command_recomputes_epsilon(tmp_path: Path) -> None:
    path = _ledger(tmp_path)
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["owner"] == "hospital-1"
    assert report["rounds"] == 2
    assert abs(report["epsilon"] - 2.986) < 5e-3


def test_ledger_command_refuses_an_edited_ledger(tmp_path: Path) -> None:
    path = _ledger(tmp_path)
    document = json.loads(path.read_text())
    document["entries"][0]["noise_multiplier"] = 5.0  # pretend less privacy was spent
    path.write_text(json.dumps(document))
    result = runner.invoke(app, ["ledger", str(path)])
    assert result.exit_code == 1
    assert "ledger rejected" in result.output
