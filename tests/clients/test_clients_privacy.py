"""DP events, the PRV accountant, the privacy ledger and its budget guard."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant
from scipy.optimize import brentq  # type: ignore[import-untyped]
from scipy.stats import norm  # type: ignore[import-untyped]

from cohort.clients.privacy import (
    LEGACY_RECORD,
    SEEDED_WARNING,
    AccountingRecord,
    DpEvent,
    LedgerEntry,
    PrivacyLedger,
    RoundReplayed,
    calibrate_noise_multiplier,
    compute_epsilon,
)
from cohort.errors import (
    BadInputError,
    BudgetExhausted,
    ConfigError,
    ProtocolAbort,
    VerificationError,
)

DELTA = 1e-5
# PRV epsilon at delta=1e-5 after 1..5 rounds of (sigma=1.1, q=0.1, 10 steps), pinned from
# Opacus 1.6's PRVAccountant (upper bound, eps_error 0.01).
PINNED = [
    2.3605314927004875,
    2.985958446423002,
    3.485901678002727,
    3.9199170120916467,
    4.311304319299475,
]


def event(round: int, *, sigma: float = 1.1, q: float = 0.1, steps: int = 10) -> DpEvent:
    return DpEvent(
        round=round,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        max_grad_norm=1.0,
        delta=DELTA,
    )


def test_epsilon_pinned_and_monotonic() -> None:
    events = [event(r) for r in range(1, 6)]
    values = [compute_epsilon(events[:k], delta=DELTA) for k in range(1, 6)]
    assert values == pytest.approx(PINNED, abs=1e-3)
    assert all(a < b for a, b in itertools.pairwise(values))
    assert compute_epsilon([], delta=DELTA) == 0.0


def test_prv_is_tighter_than_rdp_oracle() -> None:
    rdp = RDPAccountant()
    rdp.history = [(1.1, 0.1, 50)]
    prv = compute_epsilon([event(r) for r in range(1, 6)], delta=DELTA)
    assert 0 < prv < rdp.get_epsilon(delta=DELTA)


def _analytic_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with privacy parameter mu (Balle & Wang 2018):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved for eps."""

    def excess(eps: float) -> float:
        return float(
            norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
        )

    return float(brentq(excess, 0.0, 100.0))


@pytest.mark.parametrize(("sigma", "steps"), [(2.0, 5), (1.0, 1), (6.0, 30)])
def test_full_batches_match_the_analytic_gaussian_oracle(sigma: float, steps: int) -> None:
    """At sample rate 1 there is no subsampling: k steps of noise sigma are one Gaussian
    mechanism with mu = sqrt(k) / sigma, whose epsilon has a closed form. PRV returns an
    upper bound within its 0.01 discretisation error (plus slack)."""
    prv = compute_epsilon([event(1, sigma=sigma, q=1.0, steps=steps)], delta=DELTA)
    exact = _analytic_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    assert exact <= prv <= exact + 0.02


def test_event_order_and_split_do_not_change_epsilon() -> None:
    one = compute_epsilon([event(1, steps=30)], delta=DELTA)
    split = compute_epsilon([event(1, steps=10), event(2, steps=20)], delta=DELTA)
    assert one == split


def test_calibration_meets_target_through_the_ledger_path() -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=0.2, steps=25)
    rounds = [event(r, sigma=sigma, q=0.2, steps=5) for r in range(1, 6)]
    spent = compute_epsilon(rounds, delta=DELTA)
    assert 1.98 <= spent <= 2.0
    with pytest.raises(ConfigError, match="target_epsilon"):
        calibrate_noise_multiplier(target_epsilon=0.0, delta=DELTA, sample_rate=0.2, steps=25)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("round", -1, "round must be an integer >= 0"),
        ("noise_multiplier", 0.0, r"noise_multiplier must be finite and > 0 \(sigma / C\)"),
        ("sample_rate", 1.5, r"sample_rate must be in \(0, 1\]"),
        ("steps", 0, "steps must be an integer >= 1"),
        ("max_grad_norm", -1.0, r"max_grad_norm must be finite and > 0 \(L2 clipping bound C\)"),
        ("delta", 1.0, r"delta must be in \(0, 1\)"),
    ],
)
def test_event_validation(field: str, value: Any, match: str) -> None:
    fields = event(1).to_dict()
    fields[field] = value
    with pytest.raises(BadInputError, match=match):
        DpEvent(**fields)  # type: ignore[arg-type]


def test_event_dict_round_trip() -> None:
    e = event(3)
    assert DpEvent.from_dict(e.to_dict()) == e
    with pytest.raises(BadInputError, match="x: field 'steps' must be an integer"):
        DpEvent.from_dict({**e.to_dict(), "steps": 1.5}, where="x")


# --------------------------------------------------------------------------- ledger

STUDY = "study-1"


def open_ledger(path: Path, cap: float = 10.0) -> PrivacyLedger:
    return PrivacyLedger.open(path, owner="hospital-a", epsilon_cap=cap, delta=DELTA)


def record(ledger: PrivacyLedger, e: DpEvent, *, study: str = STUDY, seeded: bool = False) -> None:
    ledger.record(e, study_id=study, epsilon=ledger.projected_epsilon(e), seeded=seeded)


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.json"
    ledger = open_ledger(path)
    record(ledger, event(1))
    record(ledger, event(2))
    return path


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _rehash(path: Path, change: Any) -> None:
    """Edit entries, then recompute the whole chain consistently (a forger with the file)."""
    data = json.loads(path.read_text())
    for entry in data["entries"]:
        change(entry)
    prev = bytes.fromhex(data["genesis"])
    for entry in data["entries"]:
        body = {k: v for k, v in entry.items() if k not in ("prev", "hash")}
        entry["prev"] = prev.hex()
        prev = LedgerEntry.link(prev, body)
        entry["hash"] = prev.hex()
    data["head"] = prev.hex()
    path.write_text(json.dumps(data))


def test_ledger_survives_reopen(filled: Path) -> None:
    ledger = open_ledger(filled)
    assert ledger.events == (event(1), event(2))
    assert ledger.epsilon() == pytest.approx(PINNED[1], abs=1e-3)
    assert [e.epsilon_after for e in ledger.entries] == pytest.approx(PINNED[:2], abs=1e-3)
    head = ledger.head
    record(ledger, event(3))
    again = open_ledger(filled)
    assert again.epsilon() == pytest.approx(PINNED[2], abs=1e-3)
    assert again.entries[1].entry_hash == head
    again.recheck()
    assert [p.name for p in filled.parent.iterdir()] == ["ledger.json"]  # no temp files left


def test_new_ledger_file_contents(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.json"
    ledger = open_ledger(path, cap=3.0)
    data = json.loads(path.read_text())
    assert data["format"] == "cohort-privacy-ledger/v2"
    assert data["owner"] == "hospital-a"
    assert data["delta"] == DELTA
    assert "epsilon_cap" not in data  # the cap in force is recorded per entry
    assert data["entries"] == []
    assert data["head"] == data["genesis"] == ledger.head.hex()
    assert ledger.epsilon() == 0.0
    assert ledger.epsilon_cap == 3.0


def test_entry_fields_on_disk(filled: Path) -> None:
    entry = json.loads(filled.read_text())["entries"][0]
    assert set(entry) == {
        "round",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "delta",
        "mechanism",
        "sampling",
        "neighbouring_relation",
        "accountant",
        "accountant_eps_error",
        "noise_generator",
        "study_id",
        "seeded",
        "warning",
        "epsilon_cap",
        "epsilon_after",
        "prev",
        "hash",
        "recorded_at",
    }
    assert entry["study_id"] == STUDY
    assert entry["seeded"] is False
    assert entry["warning"] is None
    assert entry["epsilon_cap"] == 10.0


def test_seeded_entries_say_they_are_not_private(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    ledger = open_ledger(path)
    record(ledger, event(1), seeded=True)
    record(ledger, event(2), seeded=False)
    entries = json.loads(path.read_text())["entries"]
    assert entries[0]["seeded"] is True
    assert "unfit for real patient data" in entries[0]["warning"]
    assert entries[0]["warning"] == SEEDED_WARNING
    assert entries[1]["warning"] is None
    assert [e.seeded for e in open_ledger(path).entries] == [True, False]
    assert PrivacyLedger.verify(path).seeded_entries == 1
    with pytest.raises(BadInputError, match="seeded must be True or False"):
        ledger.record(event(3), study_id=STUDY, epsilon=1.0, seeded=1)  # type: ignore[arg-type]
    # dropping the warning from a seeded entry (even with a consistent chain) is refused
    _rehash(path, lambda e: e.update(warning=None))
    with pytest.raises(BadInputError, match=r"entry 1: field 'warning'"):
        PrivacyLedger.load(path)


def test_one_ledger_per_dataset_across_studies(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    ledger = open_ledger(path)
    record(ledger, event(1), study="study-a")
    record(ledger, event(2), study="study-a")
    record(ledger, event(1), study="study-b")  # round numbers restart in a new study
    again = open_ledger(path)
    assert again.studies == ("study-a", "study-b")
    assert [(e.study_id, e.event.round) for e in again.entries] == [
        ("study-a", 1),
        ("study-a", 2),
        ("study-b", 1),
    ]
    # every study spends from the same records: epsilon composes over all of them
    assert again.epsilon() == pytest.approx(PINNED[2], abs=1e-3)
    assert again.epsilon(study_id="study-a") == pytest.approx(PINNED[1], abs=1e-3)
    assert again.epsilon(study_id="study-b") == pytest.approx(PINNED[0], abs=1e-3)
    report = PrivacyLedger.verify(path)
    assert report.ok
    assert report.studies == ("study-a", "study-b")
    assert report.rounds == 3


def test_cap_in_force_is_recorded_per_entry(filled: Path) -> None:
    lower = open_ledger(filled, cap=5.0)  # the owner changed its policy: allowed, recorded
    assert lower.epsilon_cap == 5.0
    record(lower, event(3))
    assert [e.epsilon_cap for e in open_ledger(filled).entries] == [10.0, 10.0, 5.0]
    assert PrivacyLedger.load(filled).epsilon_cap == 5.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d["entries"][0].update(noise_multiplier=5.0), "entry 1 .*content does not"),
        (lambda d: d["entries"][1].update(steps=1), "entry 2 .*content does not match"),
        (lambda d: d["entries"][1].update(study_id="other"), "entry 2 .*content does not"),
        (
            lambda d: d["entries"][0].update(seeded=True, warning=SEEDED_WARNING),
            "entry 1 .*content does not",
        ),
        (lambda d: d["entries"][0].update(epsilon_cap=100.0), "entry 1 .*content does not"),
        (lambda d: d["entries"].pop(0), "entry 1 .*does not link"),
        (lambda d: d["entries"].pop(), "head hash does not match"),
        (lambda d: d["entries"].reverse(), "does not link"),
        (lambda d: d.update(owner="hospital-b"), "header does not match its genesis"),
        (lambda d: d.update(delta=1e-6), "header does not match its genesis"),
    ],
)
def test_tampered_ledger_is_refused(filled: Path, change: Any, match: str) -> None:
    _edit(filled, change)
    with pytest.raises(VerificationError, match=match):
        PrivacyLedger.load(filled)


def test_rehashed_forgery_caught_by_recheck_and_verify(filled: Path) -> None:
    """An editor who recomputes the chain passes load(); the epsilons are recomputed."""
    _rehash(filled, lambda e: e.update(epsilon_after=e["epsilon_after"] / 2))
    forged = PrivacyLedger.load(filled)
    assert len(forged.entries) == 2  # loads: the rewritten chain is self-consistent
    with pytest.raises(VerificationError, match=r"entry 1 \(study study-1, round 1\): stored"):
        forged.recheck()
    report = PrivacyLedger.verify(filled)
    assert not report.ok
    assert len(report.violations) == 2
    assert all(": epsilon: recorded" in v for v in report.violations)
    assert "round 1" in report.violations[0]
    assert "round 2" in report.violations[1]


def test_verify_reports_a_claim_past_the_cap(tmp_path: Path) -> None:
    """A consistently re-hashed ledger claiming epsilon 9.1 against a cap of 3."""
    path = tmp_path / "l.json"
    ledger = open_ledger(path, cap=3.0)
    record(ledger, event(1))
    _rehash(path, lambda e: e.update(epsilon_after=9.1))
    PrivacyLedger.load(path)  # the chain itself is consistent
    report = PrivacyLedger.verify(path)
    assert report.epsilon_recorded == 9.1
    assert report.epsilon_recomputed == pytest.approx(PINNED[0], abs=1e-3)
    assert report.epsilon_cap == 3.0
    assert not report.ok
    assert any(
        "round 1" in v and ": cap: recorded epsilon 9.100000 > cap 3" in v
        for v in report.violations
    )
    assert any("round 1" in v and ": epsilon: recorded 9.100000" in v for v in report.violations)


def test_verify_reports_spending_past_the_cap(tmp_path: Path) -> None:
    """Honest numbers, but recorded past the cap in force (the guard was bypassed)."""
    path = tmp_path / "l.json"
    ledger = open_ledger(path, cap=2.5)
    record(ledger, event(1))
    record(ledger, event(2))  # record() always records; guard() is what refuses
    report = PrivacyLedger.verify(path)
    assert [v.split(": ", 2)[1] for v in report.violations] == ["cap", "cap"]
    assert all("round 2" in v for v in report.violations)


def test_verify_good_ledger(filled: Path) -> None:
    report = PrivacyLedger.verify(filled)
    assert report.ok
    assert report.violations == ()
    assert report.owner == "hospital-a"
    assert report.rounds == 2
    assert report.seeded_entries == 0
    assert report.epsilon_cap == 10.0
    assert report.epsilon_recorded == report.epsilon_recomputed
    assert report.epsilon_recomputed == pytest.approx(PINNED[1], abs=1e-3)
    assert report.head == open_ledger(filled).head.hex()
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True
    empty = filled.parent / "empty.json"
    open_ledger(empty)
    blank = PrivacyLedger.verify(empty)
    assert blank.ok
    assert (blank.rounds, blank.epsilon_cap, blank.epsilon_recorded) == (0, None, 0.0)


def test_verify_reports_a_broken_chain_without_raising(filled: Path) -> None:
    _edit(filled, lambda d: d["entries"][0].update(noise_multiplier=5.0))
    report = PrivacyLedger.verify(filled)
    assert not report.ok
    checks = [v.split(": ", 2)[1] for v in report.violations]
    assert "hash chain" in checks
    assert "epsilon" in checks  # sigma 5 changes what the events give
    assert report.violations[0].startswith("entry 1 (study study-1, round 1): hash chain")


def test_verify_reports_a_replayed_round(filled: Path) -> None:
    _rehash(filled, lambda e: e.update(round=1))
    report = PrivacyLedger.verify(filled)
    assert any(
        ": replay: round 1 of study study-1 is already recorded" in v for v in report.violations
    )
    with pytest.raises(VerificationError, match="replay"):
        PrivacyLedger.load(filled)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ('{"format": "other"}', "field 'format'"),
        ('{"format": "cohort-privacy-ledger/v1"}', "field 'format'"),
    ],
)
def test_malformed_ledger_names_path(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    for action in (open_ledger, PrivacyLedger.verify):
        with pytest.raises(BadInputError, match=match) as info:
            action(path)
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_unreadable_ledger_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="cannot read ledger"):
        PrivacyLedger.verify(tmp_path / "missing.json")


def test_malformed_entry_names_field(filled: Path) -> None:
    _edit(filled, lambda d: d["entries"][1].pop("sample_rate"))
    with pytest.raises(BadInputError, match=r"entry 2: missing field 'sample_rate'"):
        open_ledger(filled)
    _edit(filled, lambda d: d["entries"][0].pop("study_id"))
    with pytest.raises(BadInputError, match=r"entry 1: field 'study_id'"):
        PrivacyLedger.verify(filled)


def test_reopen_with_other_terms_is_refused(filled: Path) -> None:
    with pytest.raises(ConfigError, match="owner"):
        PrivacyLedger.open(filled, owner="hospital-b", epsilon_cap=10.0, delta=DELTA)
    with pytest.raises(ConfigError, match="delta"):
        PrivacyLedger.open(filled, owner="hospital-a", epsilon_cap=10.0, delta=1e-6)
    with pytest.raises(ConfigError, match=r"epsilon_cap must be > 0"):
        PrivacyLedger.open(filled, owner="hospital-a", epsilon_cap=0.0, delta=DELTA)


def test_guard_declines_past_cap(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "l.json", cap=3.0)
    record(ledger, event(1))
    record(ledger, event(2))  # 2.986 <= 3
    before = (tmp_path / "l.json").read_bytes()
    with pytest.raises(BudgetExhausted) as info:
        ledger.guard(event(3), study_id=STUDY)
    message = str(info.value)
    assert "'hospital-a'" in message
    assert "cap 3" in message
    assert "projected epsilon 3.4859" in message
    assert (tmp_path / "l.json").read_bytes() == before
    ledger.guard(event(3, sigma=50.0), study_id=STUDY)  # a much noisier round still fits
    # another study spends from the same dataset: the cap is across studies
    with pytest.raises(BudgetExhausted, match="study-2"):
        ledger.guard(event(1), study_id="study-2")


def test_guard_checks_the_study_cap(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "l.json", cap=10.0)
    record(ledger, event(1), study="study-a")
    record(ledger, event(2), study="study-a")  # study-a alone: 2.986
    with pytest.raises(BudgetExhausted, match=r"study study-a.*own epsilon 3: projected 3.4859"):
        ledger.guard(event(3), study_id="study-a", study_cap=3.0)
    ledger.guard(event(1), study_id="study-b", study_cap=3.0)  # study-b alone: 2.361
    ledger.guard(event(3), study_id="study-a")  # no study cap: only the dataset cap
    with pytest.raises(BadInputError, match="study_cap must be a number > 0"):
        ledger.guard(event(3), study_id="study-a", study_cap=0.0)


def test_guard_refuses_a_replayed_round(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    ledger = open_ledger(path, cap=3.0)
    record(ledger, event(1))
    record(ledger, event(3))
    before = path.read_bytes()
    for rnd, match in (
        (3, "round 3 of study study-1 is already recorded"),
        (2, "round 2 of study study-1 comes after its round 3"),
    ):
        with pytest.raises(RoundReplayed, match=match):
            ledger.guard(event(rnd), study_id=STUDY)
        with pytest.raises(RoundReplayed, match=match):
            record(ledger, event(rnd))
    # refused as a replay even when the budget would also decline it: a distinct error
    with pytest.raises(RoundReplayed):
        ledger.guard(event(1, sigma=0.5), study_id=STUDY)
    assert issubclass(RoundReplayed, VerificationError)
    assert not issubclass(RoundReplayed, BudgetExhausted)
    assert path.read_bytes() == before
    ledger.guard(event(1, sigma=50.0), study_id="study-2")  # same round, other study: fine


def test_record_checks_epsilon_delta_and_study(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "l.json")
    with pytest.raises(BadInputError, match="disagrees with the accountant"):
        ledger.record(event(1), study_id=STUDY, epsilon=0.1, seeded=False)
    other = DpEvent(
        round=1, noise_multiplier=1.1, sample_rate=0.1, steps=10, max_grad_norm=1.0, delta=1e-6
    )
    with pytest.raises(BadInputError, match="delta"):
        ledger.guard(other, study_id=STUDY)
    with pytest.raises(BadInputError, match="study_id must be a non-empty string"):
        ledger.guard(event(1), study_id="")
    assert ledger.entries == ()


def test_loaded_ledger_without_entries_has_no_cap(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    open_ledger(path)
    loaded = PrivacyLedger.load(path)
    assert loaded.epsilon_cap is None
    with pytest.raises(ConfigError, match="no cap in force"):
        loaded.guard(event(1), study_id=STUDY)


def test_stale_ledger_object_cannot_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    first = open_ledger(path)
    second = open_ledger(path)
    record(first, event(1))
    with pytest.raises(ProtocolAbort, match="changed on disk since it was opened"):
        record(second, event(1))
    with pytest.raises(ProtocolAbort, match="reopen it"):
        second.guard(event(2), study_id=STUDY)
    assert open_ledger(path).events == (event(1),)


# --------------------------------------------------------------------------- record fields

RECORD = {
    "mechanism": "subsampled_gaussian",
    "sampling": "poisson",
    "neighbouring_relation": "add_or_remove_one",
    "accountant": "prv",
    "accountant_eps_error": 0.01,
    "noise_generator": "chacha20-libsodium",
}


def test_entries_record_what_an_independent_accountant_needs(filled: Path) -> None:
    entry = json.loads(filled.read_text())["entries"][1]
    assert {name: entry[name] for name in RECORD} == RECORD
    assert (entry["noise_multiplier"], entry["sample_rate"], entry["steps"]) == (1.1, 0.1, 10)
    assert (entry["max_grad_norm"], entry["delta"], entry["seeded"]) == (1.0, DELTA, False)
    assert entry["epsilon_after"] == pytest.approx(PINNED[1], abs=1e-3)
    loaded = PrivacyLedger.load(filled)
    assert all(e.record == AccountingRecord() for e in loaded.entries)
    assert PrivacyLedger.verify(filled).ok


def test_entries_written_before_the_record_fields_still_verify(filled: Path) -> None:
    # A ledger of the same format written before entries carried their record.
    _rehash(filled, lambda entry: [entry.pop(name) for name in RECORD])
    loaded = PrivacyLedger.load(filled)
    assert [e.record for e in loaded.entries] == [None, None]
    assert loaded.entries[0].accounting == LEGACY_RECORD == AccountingRecord()
    assert PrivacyLedger.verify(filled).ok
    # New entries on such a ledger carry the record; the chain stays one chain.
    ledger = open_ledger(filled)
    record(ledger, event(3))
    assert [e.record is None for e in PrivacyLedger.load(filled).entries] == [True, True, False]
    assert PrivacyLedger.verify(filled).ok


def test_partial_or_unsupported_record_is_malformed(filled: Path) -> None:
    _rehash(filled, lambda entry: entry.pop("noise_generator"))
    with pytest.raises(BadInputError, match="entry 1: missing field 'noise_generator'"):
        PrivacyLedger.load(filled)
    _rehash(filled, lambda entry: entry.update(noise_generator="mt19937", accountant="rdp"))
    with pytest.raises(BadInputError, match="field 'accountant' must be 'prv'"):
        PrivacyLedger.verify(filled)


def test_record_refuses_an_unimplemented_noise_generator(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "ledger.json")
    e = event(1)
    with pytest.raises(BadInputError, match="'noise_generator' must be 'chacha20-libsodium'"):
        ledger.record(
            e,
            study_id=STUDY,
            epsilon=ledger.projected_epsilon(e),
            seeded=False,
            noise_generator="mt19937",
        )
    assert ledger.entries == ()


def test_foreseeing_the_next_round_leaves_its_guard_nothing_to_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``foresee_next_round`` a fresh process (no in-memory cache, the same memo
    folder) guards and records the study's next round without running the PRV accountant,
    with the numbers the accountant gives; another study, or a round with another mechanism,
    is computed as before."""
    from cohort.clients import accounting

    ledger = open_ledger(tmp_path / "ledger.json")
    accounting.use_disk_memo(tmp_path / "memo")
    try:
        record(ledger, event(1, sigma=1.3, q=0.07))
        record(ledger, event(1, sigma=0.9), study="other-study")
        record(ledger, event(2, sigma=1.3, q=0.07))
        assert ledger.foresee_next_round("unknown-study") is None
        assert ledger.foresee_next_round(STUDY) == event(3, sigma=1.3, q=0.07)

        def accountant_runs(*_: object) -> float:
            raise AssertionError("the PRV accountant ran")

        accounting._prv_epsilon.cache_clear()  # a fresh ClientApp process
        monkeypatch.setattr(accounting, "_prv_epsilon_uncached", accountant_runs)
        reopened = open_ledger(tmp_path / "ledger.json")
        reopened.guard(event(3, sigma=1.3, q=0.07), study_id=STUDY, study_cap=9.0)
        projected = reopened.projected_epsilon(event(3, sigma=1.3, q=0.07))
        with pytest.raises(AssertionError, match="the PRV accountant ran"):
            reopened.projected_epsilon(event(3, sigma=1.2, q=0.07))
        monkeypatch.undo()
        accounting.use_disk_memo(None)
        accounting._prv_epsilon.cache_clear()
        fresh = [*(e.event for e in reopened.entries), event(3, sigma=1.3, q=0.07)]
        assert projected == compute_epsilon(fresh, delta=DELTA)
    finally:
        accounting.use_disk_memo(None)
        accounting._prv_epsilon.cache_clear()


def test_foreseeing_a_study_leaves_none_of_its_rounds_anything_to_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ``foresee_study`` a fresh process per round (no in-memory cache, the same memo
    folder) guards and records every round still to come without running the PRV
    accountant, with the accountant's own numbers; rounds already held are not foreseen
    again, the foresight stops at the first round past the cap, and an event at another
    delta foresees nothing."""
    from cohort.clients import accounting

    path = tmp_path / "ledger.json"
    accounting.use_disk_memo(tmp_path / "memo")
    accounting._prv_epsilon.cache_clear()  # the enrolment's fork: a fresh process too
    try:
        ledger = open_ledger(path)
        record(ledger, event(1, sigma=0.9), study="other-study")
        record(ledger, event(1))
        assert ledger.foresee_study(event(9), study_id=STUDY, rounds=5) == 4  # rounds 2..5
        assert (
            ledger.foresee_study(
                dataclasses.replace(event(1), delta=1e-6), study_id=STUDY, rounds=5
            )
            == 0
        )

        def accountant_runs(*_: object) -> float:
            raise AssertionError("the PRV accountant ran")

        monkeypatch.setattr(accounting, "_prv_epsilon_uncached", accountant_runs)
        for rnd in range(2, 6):
            accounting._prv_epsilon.cache_clear()  # each round: a fresh ClientApp process
            fresh = open_ledger(path)
            fresh.guard(event(rnd), study_id=STUDY, study_cap=9.0)
            record(fresh, event(rnd))
        monkeypatch.undo()
        accounting.use_disk_memo(None)
        accounting._prv_epsilon.cache_clear()
        done = PrivacyLedger.load(path)
        assert [e.event.round for e in done.entries] == [1, 1, 2, 3, 4, 5]
        assert done.entries[-1].epsilon_after == compute_epsilon(done.events, delta=DELTA)

        capped = open_ledger(tmp_path / "capped.json", cap=3.0)
        # PINNED: 2.36, 2.99, 3.49, ... for rounds 1, 2, 3 of event(): round 3 is past the cap
        assert capped.foresee_study(event(1), study_id=STUDY, rounds=5) == 3
    finally:
        accounting.use_disk_memo(None)
        accounting._prv_epsilon.cache_clear()
