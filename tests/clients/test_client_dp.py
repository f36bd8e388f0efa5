"""Client-level DP: each owner's noise share, clipping, the aggregate's noise, the accountant.

The noise checks are statistical with fixed (seeded) keys: with 200,000 values the sample
standard deviation is within 1% of the true one with overwhelming probability (its relative
standard error is 1 / sqrt(2 n) = 0.16%). The accountant is checked against dp-accounting's
PLD accountant composing ``GaussianDpEvent``s on pinned numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import GaussianDpEvent, NeighboringRelation
from dp_accounting.pld import PLDAccountant

from cohort.clients.client_dp import (
    ClientLevelEvent,
    client_level_epsilon,
    clip,
    privatize_update,
    round_key,
)
from cohort.errors import BadInputError

SIZE = 200_000
SIGMA, C, M = 1.3, 0.5, 3


def _key(owner: str, rnd: int = 1) -> bytes:
    return round_key(noise_seed=1234, owner=owner, round=rnd)


def test_one_owners_noise_std_is_sigma_c_over_sqrt_min_clients() -> None:
    update = np.zeros(SIZE)
    noised = privatize_update(
        update, clip_norm=C, noise_multiplier=SIGMA, min_clients=M, key=_key("hospital-1")
    )
    want = SIGMA * C / math.sqrt(M)
    assert float(np.std(noised)) == pytest.approx(want, rel=0.01)
    assert abs(float(np.mean(noised))) < 5 * want / math.sqrt(SIZE)


def test_clipping_bounds_the_norm_and_keeps_small_updates() -> None:
    rng = np.random.default_rng(0)
    big = rng.normal(size=1000) * 10
    clipped = clip(big, clip_norm=C)
    assert float(np.linalg.norm(clipped)) == pytest.approx(C, rel=1e-12)
    assert np.allclose(clipped / np.linalg.norm(clipped), big / np.linalg.norm(big))
    small = big * (0.1 * C / float(np.linalg.norm(big)))
    assert np.array_equal(clip(small, clip_norm=C), small)
    # the released value is the clipped update plus noise: at a tiny sigma, the norm is C
    noised = privatize_update(
        big, clip_norm=C, noise_multiplier=1e-9, min_clients=M, key=_key("hospital-1")
    )
    assert float(np.linalg.norm(noised)) == pytest.approx(C, rel=1e-6)


@pytest.mark.parametrize("n", [M, 5])
def test_aggregate_of_n_owners_carries_sigma_c_sqrt_n_over_m(n: int) -> None:
    total = sum(
        privatize_update(
            np.zeros(SIZE),
            clip_norm=C,
            noise_multiplier=SIGMA,
            min_clients=M,
            key=_key(f"hospital-{i}"),
        )
        for i in range(1, n + 1)
    )
    want = SIGMA * C * math.sqrt(n / M)
    assert float(np.std(total)) == pytest.approx(want, rel=0.01)
    assert want >= SIGMA * C  # any allowed client set carries at least sigma * C


def test_keys_differ_per_owner_and_round_and_are_random_unseeded() -> None:
    assert _key("hospital-1") != _key("hospital-2")
    assert _key("hospital-1", 1) != _key("hospital-1", 2)
    assert round_key(noise_seed=None, owner="h", round=1) != round_key(
        noise_seed=None, owner="h", round=1
    )


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(BadInputError, match="clip_norm"):
        clip(np.ones(3), clip_norm=0.0)
    with pytest.raises(BadInputError, match="non-finite"):
        clip(np.array([1.0, np.nan]), clip_norm=1.0)
    with pytest.raises(BadInputError, match="fewer than the 3"):
        ClientLevelEvent.of_round(1, clients=2, noise_multiplier=1.0, min_clients=3)


def _pld(zs: list[float], delta: float) -> float:
    accountant = PLDAccountant(
        NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4
    )
    for z in zs:
        accountant.compose(GaussianDpEvent(z))
    return float(accountant.get_epsilon(delta))


# (noise multipliers per round, delta, epsilon): pinned from the exact Gaussian composition.
PINNED = [
    ([1.0] * 5, 1e-5, 11.480023),
    ([2.0, 1.5, 3.0], 1e-5, 3.863947),
    ([5.0], 1e-5, 0.725522),
]


@pytest.mark.parametrize(("zs", "delta", "epsilon"), PINNED)
def test_client_level_epsilon_matches_dp_accounting_on_pinned_numbers(
    zs: list[float], delta: float, epsilon: float
) -> None:
    ours = client_level_epsilon(zs, delta=delta)
    assert ours == pytest.approx(epsilon, abs=1e-5)
    assert ours == pytest.approx(_pld(zs, delta), rel=1e-5)


def test_effective_noise_grows_with_the_client_set_and_epsilon_falls() -> None:
    at_min = ClientLevelEvent.of_round(1, clients=3, noise_multiplier=1.0, min_clients=3)
    more = ClientLevelEvent.of_round(1, clients=12, noise_multiplier=1.0, min_clients=3)
    assert at_min.noise_multiplier == 1.0
    assert more.noise_multiplier == pytest.approx(2.0)
    assert client_level_epsilon([2.0], delta=1e-5) < client_level_epsilon([1.0], delta=1e-5)
    assert client_level_epsilon([], delta=1e-5) == 0.0
