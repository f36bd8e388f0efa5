"""One-run empirical audit (Steinke, Nasr and Jagielski 2023): the bound and a DP run."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.clients.data import demo_split
from cohort.clients.empirical import (
    EmpiricalAudit,
    EmpiricalAuditFailed,
    audit_p_value,
    check_verdict,
    count_correct,
    epsilon_lower_bound,
    one_run_audit,
)
from cohort.clients.training import DpConfig
from cohort.errors import BadInputError


def test_no_correct_guess_gives_zero() -> None:
    assert epsilon_lower_bound(canaries=100, guesses=20, correct=0, delta=1e-5) == 0.0


def test_chance_level_gives_zero() -> None:
    assert epsilon_lower_bound(canaries=100, guesses=20, correct=10, delta=1e-5) == 0.0


def test_all_correct_hand_checked() -> None:
    # delta = 0: P[B >= r] = q^r < beta  <=>  eps < log(q / (1 - q)), q = beta^(1/r).
    q = 0.05 ** (1 / 16)
    expected = float(np.log(q / (1 - q)))
    got = epsilon_lower_bound(canaries=16, guesses=16, correct=16, delta=0.0)
    assert got == pytest.approx(expected, abs=1e-5)
    with_delta = epsilon_lower_bound(canaries=16, guesses=16, correct=16, delta=1e-5)
    assert with_delta <= got + 1e-6


def test_many_correct_guesses_give_a_large_bound() -> None:
    assert epsilon_lower_bound(canaries=1000, guesses=500, correct=500, delta=1e-5) > 5.0


def test_p_value_grows_with_epsilon() -> None:
    values = [
        audit_p_value(canaries=50, guesses=20, correct=18, epsilon=e, delta=1e-5)
        for e in (0.0, 0.5, 1.0, 2.0, 4.0)
    ]
    assert values == sorted(values)


def test_bad_counts_rejected() -> None:
    with pytest.raises(BadInputError):
        epsilon_lower_bound(canaries=10, guesses=20, correct=5, delta=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    guesses=st.integers(min_value=1, max_value=60),
    data=st.data(),
)
def test_bound_monotone_in_correct_guesses(guesses: int, data: st.DataObject) -> None:
    canaries = data.draw(st.integers(min_value=guesses, max_value=200))
    v = data.draw(st.integers(min_value=0, max_value=guesses - 1))
    lo = epsilon_lower_bound(canaries=canaries, guesses=guesses, correct=v, delta=1e-5)
    hi = epsilon_lower_bound(canaries=canaries, guesses=guesses, correct=v + 1, delta=1e-5)
    assert hi >= lo - 1e-5


def test_count_correct() -> None:
    losses = np.array([0.1, 0.2, 5.0, 6.0])
    included = np.array([True, False, False, True])
    # in-guesses: 0 (right), 1 (wrong); out-guesses: 3 (wrong), 2 (right)
    assert count_correct(losses, included, 4) == 2
    assert count_correct(losses, included, 1) == 1


def test_failed_verdict_is_one_loud_line() -> None:
    check_verdict(0.5, 3.0)
    with pytest.raises(EmpiricalAuditFailed) as caught:
        check_verdict(1.2345, 0.5)
    message = str(caught.value)
    assert "\n" not in message
    assert "1.2345" in message
    assert "0.5000" in message
    audit = EmpiricalAudit(
        canaries=64,
        included=32,
        guesses=16,
        correct=16,
        rounds=1,
        beta=0.05,
        delta=1e-5,
        epsilon_lower=1.58,
        epsilon_theoretical=0.25,
    )
    assert not audit.ok
    with pytest.raises(EmpiricalAuditFailed, match=r"1\.5800.*0\.2500"):
        audit.check()


def test_dp_run_at_production_defaults_stays_below_theory() -> None:
    hospitals, _ = demo_split(num_hospitals=5, seed=7)
    config = DpConfig()
    audit = one_run_audit(
        hospitals[0],
        config=config,
        canaries=64,
        guesses=16,
        seed_key=bytes(range(32)),
        rounds=config.total_rounds,
    )
    assert audit.canaries == 64
    assert 0 < audit.included < 64
    assert 0 <= audit.correct <= 16
    assert audit.epsilon_theoretical == pytest.approx(config.target_epsilon, abs=0.05)
    assert audit.ok
    audit.check()
    assert audit.to_dict()["ok"] is True


def test_non_private_training_leaks_clearly_more_than_dp_runs() -> None:
    """The control: the same training without clipping or noise must give a bound clearly
    above what DP runs give, so a bound near 0 on a DP run means "no leak found", not "the
    audit cannot see one"."""
    hospitals, _ = demo_split(num_hospitals=5, seed=7)
    key = bytes(range(32))

    def run(config: DpConfig, *, private: bool) -> EmpiricalAudit:
        return one_run_audit(
            hospitals[0],
            config=config,
            canaries=256,
            guesses=64,
            seed_key=key,
            rounds=config.total_rounds,
            private=private,
        )

    leak = run(DpConfig(), private=False)
    dp = [run(DpConfig(target_epsilon=eps), private=True) for eps in (1.0, 8.0)]
    assert leak.epsilon_theoretical == float("inf")
    assert leak.ok
    assert leak.epsilon_lower > 0.5
    for audit in dp:
        assert audit.ok
        assert audit.epsilon_lower < 0.3
        assert leak.epsilon_lower > audit.epsilon_lower + 0.5
