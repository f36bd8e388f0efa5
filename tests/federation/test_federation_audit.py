"""``cohort audit``: every epsilon of a run re-derived with dp-accounting (PLD, RDP) from the
published ledgers, checked against the signed manifest; forgeries named by hospital and round.

The run directory is built without Flower: a real signed manifest (tests/studykit.py) and
real ledgers, one written by ``train_dp`` on the demo data, the others by
``PrivacyLedger.record`` with the events the manifest's ``DpConfig`` gives.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from studykit import hospitals, make_study
from typer.testing import CliRunner

from cohort.clients.data import demo_split
from cohort.clients.model import build_model
from cohort.clients.privacy import (
    DpEvent,
    LedgerEntry,
    PrivacyLedger,
    compute_epsilon,
    read_entries,
)
from cohort.clients.training import DpConfig, train_dp
from cohort.errors import BadInputError
from cohort.federation.audit import (
    AuditReport,
    audit_run,
    epsilon_tolerance,
    pld_epsilon,
    rdp_epsilon,
)
from cohort.federation.cli import app
from cohort.federation.dp_terms import dp_config
from cohort.federation.manifest import Manifest, SignedManifest

runner = CliRunner()
ROUNDS = 3
EXAMPLES = 64  # hospitals 2 and 3: 2 Poisson steps per epoch at sample rate 1/2


def manifest_of(run: Path) -> Manifest:
    return SignedManifest.load(run / "manifest.json").manifest


def ledger_path(run: Path, hospital: str) -> Path:
    return run / "hospitals" / hospital / "ledger-default.json"


def write_ledger(
    path: Path,
    manifest: Manifest,
    *,
    owner: str,
    rounds: range,
    cap: float = 3.0,
    seeded: bool = False,
    config: DpConfig | None = None,
) -> None:
    config = config or dp_config(manifest)
    ledger = PrivacyLedger.open(path, owner=owner, epsilon_cap=cap, delta=config.delta)
    for rnd in rounds:
        event = config.event(EXAMPLES, round=rnd)
        epsilon = ledger.projected_epsilon(event)
        ledger.record(event, study_id=manifest.study_id, epsilon=epsilon, seeded=seeded)


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    study = make_study(hospitals(root / "parties", 3), rounds=ROUNDS, approve_owners=False)
    run = root / "run"
    study.signed.save(run / "manifest.json")
    manifest = study.manifest
    # hospital-1: two rounds of real DP-SGD on its demo split (noise from os.urandom).
    parts, _ = demo_split(num_hospitals=3, seed=5)
    model = build_model(manifest.model, in_features=manifest.features, num_classes=2)
    ledger = PrivacyLedger.open(
        ledger_path(run, "hospital-1"), owner="hospital-1", epsilon_cap=3.0, delta=1e-5
    )
    for rnd in (1, 2):
        train_dp(
            model,
            parts[0],
            config=dp_config(manifest),
            ledger=ledger,
            round=rnd,
            noise_seed=None,
            study_id=manifest.study_id,
        )
    for owner in ("hospital-2", "hospital-3"):
        write_ledger(ledger_path(run, owner), manifest, owner=owner, rounds=range(1, ROUNDS + 1))
    return run


@pytest.fixture
def run(honest_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(honest_run, copy)
    return copy


def rehash(path: Path, edit: Callable[[LedgerEntry], LedgerEntry]) -> None:
    """Rewrite a ledger with ``edit`` applied to each entry and its whole chain recomputed:
    what a forger holding the file publishes (the chain itself verifies)."""
    document = json.loads(path.read_text())
    prev = bytes.fromhex(document["genesis"])
    entries = []
    for entry in read_entries(path):
        changed = dataclasses.replace(edit(entry), prev_hash=prev)
        changed = dataclasses.replace(changed, entry_hash=LedgerEntry.link(prev, changed.body()))
        entries.append(changed.to_dict())
        prev = changed.entry_hash
    document["entries"] = entries
    document["head"] = prev.hex()
    path.write_text(json.dumps(document, indent=2))


def violations(report: AuditReport, needle: str) -> list[str]:
    return [v for v in report.violations if needle in v]


def one_line_error(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- accountants


def test_pinned_epsilons_of_the_three_accountants() -> None:
    # Two rounds of (sigma 1.1, sample rate 0.1, 10 steps) at delta 1e-5, pinned from
    # Opacus 1.6 (PRV, upper bound with eps_error 0.01) and dp-accounting 0.6.0.
    events = [
        DpEvent(
            round=r, noise_multiplier=1.1, sample_rate=0.1, steps=10, max_grad_norm=1.0, delta=1e-5
        )
        for r in (1, 2)
    ]
    prv = compute_epsilon(events, delta=1e-5)
    pld = pld_epsilon(events, delta=1e-5)
    rdp = rdp_epsilon(events, delta=1e-5)
    assert prv == pytest.approx(2.985958446423002, abs=1e-3)
    assert pld == pytest.approx(2.9757046699531893, abs=1e-4)
    assert rdp == pytest.approx(3.4969456234947356, abs=1e-4)
    assert pld_epsilon(events[:1], delta=1e-5) == pytest.approx(2.3503058489402444, abs=1e-4)
    assert rdp_epsilon(events[:1], delta=1e-5) == pytest.approx(2.8379847291259637, abs=1e-4)
    # PLD within 1% of PRV (and within the stated tolerance); RDP the looser bound.
    assert abs(prv - pld) <= 0.01 * prv
    assert abs(prv - pld) <= epsilon_tolerance(pld)
    assert rdp > prv > pld


# --------------------------------------------------------------------------- audit_run


def test_honest_run_passes_with_pld_and_rdp_agreeing(honest_run: Path) -> None:
    report = audit_run(honest_run)
    assert report.ok, report.violations
    assert [h.hospital for h in report.hospitals] == ["hospital-1", "hospital-2", "hospital-3"]
    assert [h.rounds for h in report.hospitals] == [(1, 2), (1, 2, 3), (1, 2, 3)]
    for h in report.hospitals:
        tol = epsilon_tolerance(h.epsilon_pld)
        assert h.epsilon_prv == pytest.approx(h.epsilon_recorded, rel=1e-6)
        assert abs(h.epsilon_recorded - h.epsilon_pld) <= tol
        assert h.epsilon_rdp >= h.epsilon_recorded - tol
        assert h.epsilon_recorded <= 3.0
        assert (h.seeded_entries, h.legacy_entries) == (0, 0)
    assert not report.seeded
    # The manifest's terms calibrate hospitals 2 and 3 to spend 3.0 in 3 rounds.
    assert report.hospitals[1].epsilon_recorded == pytest.approx(2.99, abs=0.01)


def test_rehashed_ledger_claiming_less_epsilon_is_named(run: Path) -> None:
    path = ledger_path(run, "hospital-2")

    def understate(entry: LedgerEntry) -> LedgerEntry:
        return dataclasses.replace(entry, epsilon_after=0.5) if entry.event.round == 2 else entry

    rehash(path, understate)
    report = audit_run(run)
    assert not report.ok
    assert not violations(report, "hash chain")  # the forged chain is consistent
    (pld,) = violations(report, "epsilon-pld")
    assert pld.startswith("hospital-2 round 2: epsilon-pld: recorded epsilon 0.5000 is understated")
    assert violations(report, "hospital-2: entry 2 (study ")  # Opacus's PRV recomputed too
    assert all(v.startswith("hospital-2") for v in report.violations)
    assert [h.ok for h in report.hospitals] == [True, False, True]


def test_rehashed_ledger_with_less_noise_fails_the_manifest_terms(run: Path) -> None:
    # The forger lowers the noise multiplier AND recomputes every epsilon consistently:
    # every accountant agrees with the claim; only the manifest's calibration catches it.
    path = ledger_path(run, "hospital-3")
    events: list[DpEvent] = []

    def less_noise(entry: LedgerEntry) -> LedgerEntry:
        event = dataclasses.replace(entry.event, noise_multiplier=2.0)
        events.append(event)
        eps = compute_epsilon(events, delta=1e-5)
        return dataclasses.replace(entry, event=event, epsilon_after=eps, epsilon_cap=9.0)

    rehash(path, less_noise)
    report = audit_run(run)
    assert not violations(report, "epsilon-pld")
    found = violations(report, "noise multiplier")
    assert [v.split(":")[0] for v in found] == [f"hospital-3 round {r}" for r in (1, 2, 3)]
    assert "recorded 2, the manifest's epsilon 3 over 3 rounds calibrates" in found[0]
    assert violations(report, "hospital-3 round 3: study cap: this study's PRV epsilon")


def test_clipping_norm_differing_from_the_manifest_fails(run: Path) -> None:
    path = ledger_path(run, "hospital-2")

    def clip(entry: LedgerEntry) -> LedgerEntry:
        return dataclasses.replace(entry, event=dataclasses.replace(entry.event, max_grad_norm=4.0))

    rehash(path, clip)
    report = audit_run(run)
    found = violations(report, "clipping norm")
    assert found[0] == "hospital-2 round 1: clipping norm: recorded 4, the manifest says 1"
    assert len(found) == 3


def test_delta_differing_from_the_manifest_fails(run: Path) -> None:
    manifest = manifest_of(run)  # delta 1e-5
    path = ledger_path(run, "hospital-3")
    path.unlink()
    config = dataclasses.replace(dp_config(manifest), delta=1e-6)
    write_ledger(path, manifest, owner="hospital-3", rounds=range(1, 3), config=config)
    report = audit_run(run)
    found = violations(report, ": delta:")
    assert found == [
        "hospital-3 round 1: delta: recorded 1e-06, the manifest says 1e-05",
        "hospital-3 round 2: delta: recorded 1e-06, the manifest says 1e-05",
    ]


def test_rounds_past_the_manifest_and_a_passed_cap_fail(run: Path) -> None:
    manifest = manifest_of(run)
    path = ledger_path(run, "hospital-2")
    path.unlink()
    write_ledger(path, manifest, owner="hospital-2", rounds=range(1, ROUNDS + 2), cap=2.5)
    report = audit_run(run)
    assert violations(report, "hospital-2 round 4: round: outside the manifest's rounds 1..3")
    assert violations(report, "hospital-2: entry 3 (study ")
    assert violations(report, "cap: recorded epsilon")
    assert violations(report, "hospital-2 round 4: study cap")


def test_seeded_entries_are_reported_as_seeded(run: Path) -> None:
    manifest = manifest_of(run)
    path = ledger_path(run, "hospital-3")
    path.unlink()
    write_ledger(path, manifest, owner="hospital-3", rounds=range(1, 3), seeded=True)
    report = audit_run(run)
    assert report.ok
    assert report.seeded
    assert [h.seeded_entries for h in report.hospitals] == [0, 0, 2]
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code == 0, result.output
    assert "hospital-3: 2 of 2 rounds of this study used seeded DP noise" in result.output
    assert "unfit for real patient data" in result.output


def test_missing_manifest_and_unreadable_ledger_raise_one_line(run: Path) -> None:
    (run / "hospitals" / "hospital-2" / "ledger-default.json").write_text("not json {")
    with pytest.raises(BadInputError, match="ledger is not valid JSON"):
        audit_run(run)
    (run / "manifest.json").unlink()
    with pytest.raises(BadInputError, match=r"no manifest\.json: not a cohort run directory"):
        audit_run(run)


# --------------------------------------------------------------------------- cohort audit


def test_cli_passes_an_honest_run(honest_run: Path) -> None:
    result = runner.invoke(app, ["audit", str(honest_run)])
    assert result.exit_code == 0, result.output
    for hospital in ("hospital-1", "hospital-2", "hospital-3"):
        assert hospital in result.output
    assert "audit passed: 3 ledger(s)" in result.output
    assert "seeded DP noise" not in result.output
    as_json = runner.invoke(app, ["audit", "--json", str(honest_run)])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["ok"] is True
    assert report["seeded"] is False
    assert report["tolerance"] == {
        "absolute": 0.02,
        "relative": 0.005,
        "prv_eps_error": 0.01,
        "pld_discretisation": 0.0001,
    }
    assert [h["rounds"] for h in report["hospitals"]] == [[1, 2], [1, 2, 3], [1, 2, 3]]


def test_cli_exits_1_naming_each_violation(run: Path) -> None:
    def understate(entry: LedgerEntry) -> LedgerEntry:
        return dataclasses.replace(entry, epsilon_after=entry.epsilon_after / 2)

    rehash(ledger_path(run, "hospital-1"), understate)
    result = runner.invoke(app, ["audit", str(run)])
    assert result.exit_code == 1
    assert "violation: hospital-1 round 1: epsilon-pld: recorded epsilon" in result.output
    assert "violation: hospital-1 round 2: epsilon-pld" in result.output
    assert "audit failed: " in result.output
    as_json = runner.invoke(app, ["audit", "--json", str(run)])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["ok"] is False


def test_cli_refuses_an_unreadable_run_in_one_line(run: Path, tmp_path: Path) -> None:
    (run / "hospitals" / "hospital-3" / "ledger-default.json").write_text("[]")
    broken = runner.invoke(app, ["audit", str(run)])
    assert broken.exit_code == 1
    assert "audit refused:" in one_line_error(broken)
    assert "ledger must be a JSON object" in broken.output
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = runner.invoke(app, ["audit", str(empty)])
    assert missing.exit_code == 1
    assert "no manifest.json" in one_line_error(missing)


def test_cli_bad_command_line_exits_2(honest_run: Path) -> None:
    assert runner.invoke(app, ["audit"]).exit_code == 2
    assert runner.invoke(app, ["audit", str(honest_run), "--chain"]).exit_code == 2


def test_cli_empirical_audit_needs_a_simulated_study(honest_run: Path) -> None:
    """--empirical retrains on the demo split, so it needs summary.json's study config."""
    result = runner.invoke(app, ["audit", str(honest_run), "--empirical"])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]  # after the (passing) audit table
    assert "empirical audit refused" in line
    assert "not a cohort simulate study" in line
