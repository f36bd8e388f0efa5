"""Shamir sharing: every t-subset reconstructs, t - 1 shares reveal nothing, bad points found."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped]

from cohort.crypto.fixed_point import BLOCK, PRIME
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import (
    FullShare,
    InconsistentShares,
    SeededShare,
    ShamirScheme,
    additive_share,
    lagrange_at_zero,
    reconstruct,
    reduce_mod,
    robust_reconstruct,
    share,
    share_values,
)
from cohort.errors import BadInputError, ConfigError, VerificationError


def counter_bytes(label: str) -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom so statistical tests cannot flake."""
    state = [0]

    def draw(size: int) -> bytes:
        state[0] += 1
        return hashlib.sha256(f"{label}/{state[0]}".encode()).digest()[:size]

    return draw


def domains(k: int, sender: str = "owner") -> list[bytes]:
    return [share_domain("study", 1, f"m{i}", sender) for i in range(k)]


def points_of(secret: np.ndarray, scheme: ShamirScheme, **kwargs: object) -> dict[int, np.ndarray]:
    doms = domains(scheme.members)
    shares = share(secret, scheme, domains=doms, **kwargs)  # type: ignore[arg-type]
    return {
        s.index: share_values(s, scheme, domain=doms[s.index], length=secret.size) for s in shares
    }


def test_scheme_validated() -> None:
    for k, t in ((2, 3), (3, 0), (0, 0)):
        with pytest.raises(ConfigError, match="threshold"):
            ShamirScheme(k, t)
    with pytest.raises(ConfigError, match="members"):
        ShamirScheme(300, 2, prime=257)
    with pytest.raises(ConfigError, match="prime"):
        ShamirScheme(3, 2, prime=256)


def test_share_layout_and_seeded_rotation() -> None:
    scheme = ShamirScheme(5, 3)
    secret = np.arange(10, dtype=np.int64)
    shares = share(secret, scheme, domains=domains(5))
    assert [type(s) for s in shares] == [SeededShare] * 2 + [FullShare] * 3
    assert [s.index for s in shares] == list(range(5))
    rotated = share(secret, scheme, domains=domains(5), seeded=[4, 1])
    assert {s.index for s in rotated if isinstance(s, SeededShare)} == {1, 4}
    assert all(len(s.seed) == 32 for s in rotated if isinstance(s, SeededShare))


def test_share_rejects_bad_input() -> None:
    scheme = ShamirScheme(3, 2)
    good = np.zeros(4, dtype=np.int64)
    with pytest.raises(BadInputError, match="outside"):
        share(np.array([PRIME]), scheme, domains=domains(3))
    with pytest.raises(BadInputError, match="1-D integer"):
        share(np.zeros(3), scheme, domains=domains(3))  # type: ignore[arg-type]
    with pytest.raises(BadInputError, match="one domain per member"):
        share(good, scheme, domains=domains(2))
    with pytest.raises(BadInputError, match="seeded"):
        share(good, scheme, domains=domains(3), seeded=[0, 1])
    with pytest.raises(BadInputError, match="seeded"):
        share(good, scheme, domains=domains(3), seeded=[3])
    with pytest.raises(BadInputError, match="at least 2 points"):
        reconstruct({0: good}, scheme)
    with pytest.raises(BadInputError, match="at least 2 points"):
        robust_reconstruct({0: good}, scheme)
    with pytest.raises(BadInputError, match="lengths"):
        reconstruct({0: good, 1: good[:2]}, scheme)
    with pytest.raises(BadInputError, match="expected 5"):
        share_values(FullShare(0, good), scheme, domain=b"", length=5)


def test_lagrange_at_zero_interpolates_constants() -> None:
    for indices in ([0], [0, 1], [2, 5, 6], [0, 3, 4, 9]):
        coeffs = lagrange_at_zero(indices, PRIME)
        for degree in range(len(indices)):
            total = sum(c * pow(i + 1, degree, PRIME) for c, i in zip(coeffs, indices, strict=True))
            assert total % PRIME == (1 if degree == 0 else 0)
    with pytest.raises(BadInputError, match="distinct"):
        lagrange_at_zero([1, 1], PRIME)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_t_subset_reconstructs_the_field_sum(data: st.DataObject) -> None:
    k = data.draw(st.integers(1, 6), label="members")
    t = data.draw(st.integers(1, k), label="threshold")
    length = data.draw(st.integers(0, 8), label="length")
    owners = data.draw(st.integers(1, 4), label="owners")
    scheme = ShamirScheme(k, t)
    element = st.integers(0, PRIME - 1)
    expected = np.zeros(length, dtype=np.int64)
    summed = {i: np.zeros(length, dtype=np.int64) for i in range(k)}
    for owner in range(owners):
        secret = np.array(
            data.draw(st.lists(element, min_size=length, max_size=length)), dtype=np.int64
        )
        seeded = data.draw(st.permutations(range(k)))[: t - 1]
        doms = domains(k, sender=f"owner{owner}")
        shares = share(secret, scheme, domains=doms, seeded=seeded)
        assert {s.index for s in shares if isinstance(s, SeededShare)} == set(seeded)
        expected = (expected + secret) % PRIME
        for s in shares:  # each member adds what it holds, mod p
            values = share_values(s, scheme, domain=doms[s.index], length=length)
            summed[s.index] = (summed[s.index] + values) % PRIME
    for subset in itertools.combinations(range(k), t):
        got = reconstruct({i: summed[i] for i in subset}, scheme)
        np.testing.assert_array_equal(got, expected)
        participants = list(subset)
        additive = sum(additive_share(i, summed[i], participants, PRIME) for i in subset)
        np.testing.assert_array_equal(np.asarray(additive) % PRIME, expected)
    secret, wrong = robust_reconstruct(summed, scheme)
    np.testing.assert_array_equal(secret, expected)
    assert wrong == []


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_robust_names_a_single_corrupted_point(data: st.DataObject) -> None:
    t = data.draw(st.integers(1, 4))
    k = data.draw(st.integers(t + 2, 7))
    scheme = ShamirScheme(k, t)
    secret = np.array(data.draw(st.lists(st.integers(0, PRIME - 1), min_size=1, max_size=6)))
    points = points_of(secret, scheme)
    bad = data.draw(st.integers(0, k - 1))
    element = data.draw(st.integers(0, secret.size - 1))
    delta = data.draw(st.integers(1, PRIME - 1))
    points[bad] = points[bad].copy()
    points[bad][element] = (points[bad][element] + delta) % PRIME
    got, wrong = robust_reconstruct(points, scheme)
    np.testing.assert_array_equal(got, secret)
    assert wrong == [bad]


def test_robust_names_two_corrupted_points() -> None:
    scheme = ShamirScheme(7, 3)
    secret = np.arange(5, dtype=np.int64) * 1000
    points = points_of(secret, scheme)
    points[1] = (points[1] + 1) % PRIME
    points[5] = np.zeros(5, dtype=np.int64)
    got, wrong = robust_reconstruct(points, scheme)
    np.testing.assert_array_equal(got, secret)
    assert wrong == [1, 5]


def test_robust_raises_when_bad_point_cannot_be_located() -> None:
    scheme = ShamirScheme(3, 2)
    secret = np.array([1, 2, 3], dtype=np.int64)
    points = points_of(secret, scheme)
    points[2] = points[2].copy()
    points[2][1] = (points[2][1] + 7) % PRIME
    with pytest.raises(InconsistentShares) as info:
        robust_reconstruct(points, scheme)
    assert isinstance(info.value, VerificationError)
    assert 2 in info.value.indices
    assert set(info.value.indices) <= {0, 1, 2}
    # The plain reconstruction from the honest pair still works.
    np.testing.assert_array_equal(reconstruct({0: points[0], 1: points[1]}, scheme), secret)


def test_additive_share_requires_membership() -> None:
    with pytest.raises(BadInputError, match="not among"):
        additive_share(3, np.zeros(2, dtype=np.int64), [0, 1], PRIME)


# -- t - 1 shares are independent of the secret -------------------------------------------

SMALL = 17
TRIALS = 12_000


def _honest_pairs(scheme: ShamirScheme, value: int, label: str) -> np.ndarray:
    """Each element is an independent sharing: the joint (share 2, share 3) of k=4, t=3."""
    secret = np.full(TRIALS, value, dtype=np.int64)
    pts = points_of(secret, scheme, random_bytes=counter_bytes(label))
    pairs: np.ndarray = pts[2] * SMALL + pts[3]
    return pairs


def _biased_pairs(value: int, label: str) -> np.ndarray:
    """Negative control: f(x) = s + a1 x + a2 x^2 with coefficients only in [0, p // 2)."""
    rng = np.random.default_rng(int.from_bytes(counter_bytes(label)(4), "big"))
    a1, a2 = rng.integers(0, SMALL // 2, size=(2, TRIALS))
    f = [(value + a1 * x + a2 * x * x) % SMALL for x in (3, 4)]
    pairs: np.ndarray = f[0] * SMALL + f[1]
    return pairs


def _same_distribution(a: np.ndarray, b: np.ndarray) -> bool:
    table = np.stack([np.bincount(a, minlength=SMALL**2), np.bincount(b, minlength=SMALL**2)])
    table = table[:, table.sum(axis=0) > 0]
    return bool(stats.chi2_contingency(table).pvalue > 1e-3)


def test_t_minus_1_shares_are_independent_of_the_secret() -> None:
    scheme = ShamirScheme(4, 3, prime=SMALL)
    a = _honest_pairs(scheme, 0, "a")
    b = _honest_pairs(scheme, 11, "b")
    assert _same_distribution(a, b)
    # Uniform on all p^2 pairs, not merely equal to each other.
    counts = np.bincount(a, minlength=SMALL**2)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_independence_check_catches_a_biased_sharing() -> None:
    assert not _same_distribution(_biased_pairs(0, "a"), _biased_pairs(11, "b"))


@pytest.mark.parametrize("prime", [PRIME, 2**31 - 1])  # the lazy and the per-term reduction
def test_vectors_longer_than_a_block_share_and_reconstruct_exactly(prime: int) -> None:
    """The arithmetic runs block by block (BLOCK values): a vector spanning blocks, with a
    partial last one, reconstructs from every t-subset, and reduce_mod equals ``%``."""
    scheme = ShamirScheme(3, 2, prime)
    length = 2 * BLOCK + 37
    rng = np.random.default_rng(prime)
    secret = rng.integers(0, prime, length)
    domains = [share_domain("ab" * 32, 1, f"m{i}", "owner") for i in range(3)]
    shares = share(secret, scheme, domains=domains, seeded=[1])
    points = {
        s.index: share_values(s, scheme, domain=domains[s.index], length=length) for s in shares
    }
    for subset in itertools.combinations(range(3), 2):
        np.testing.assert_array_equal(reconstruct({i: points[i] for i in subset}, scheme), secret)
    wide = rng.integers(0, 2**62, length)
    np.testing.assert_array_equal(reduce_mod(wide.copy(), prime), wide % prime)
    narrow = rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(reduce_mod(narrow.copy(), prime), narrow % np.uint32(prime))
