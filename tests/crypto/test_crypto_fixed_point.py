"""Fixed-point field encoding: range checks before sharing, exact signed decoding."""

from __future__ import annotations

import numpy as np
import pytest
import sympy  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto.ckks import DEFAULT_PARAMS
from cohort.crypto.encoding import quantize
from cohort.crypto.fixed_point import (
    BLOCK,
    FRAC_BITS,
    PRIME,
    EncodingRangeError,
    FieldEncoding,
    is_prime,
    to_signed,
)
from cohort.errors import BadInputError, ConfigError

ENC = FieldEncoding()


def test_prime_is_largest_below_2_23() -> None:
    assert sympy.prevprime(2**23) == PRIME
    assert sympy.isprime(PRIME)
    assert PRIME.bit_length() == 23


def test_grid_matches_ckks_release_grid() -> None:
    assert ENC.resolution == DEFAULT_PARAMS.release_grid == 2.0**-FRAC_BITS


def test_is_prime_matches_sympy() -> None:
    for n in range(-3, 3000):
        assert is_prime(n) == sympy.isprime(n), n
    for n in (PRIME, PRIME - 2, 2**31 - 1, 2**31 - 3, 3215031751):
        assert is_prime(n) == sympy.isprime(n), n


def test_config_validated() -> None:
    with pytest.raises(ConfigError, match="prime"):
        FieldEncoding(prime=PRIME + 1)
    with pytest.raises(ConfigError, match="prime"):
        FieldEncoding(prime=2**31 + 11)
    with pytest.raises(ConfigError, match="frac_bits"):
        FieldEncoding(frac_bits=-1)
    with pytest.raises(BadInputError, match="clients"):
        ENC.max_abs(0)


def test_max_abs_is_the_sum_bound() -> None:
    for clients in (1, 2, 3, 10, 1000):
        steps = ENC.max_abs(clients) * 2**FRAC_BITS
        assert steps == int(steps)
        assert clients * steps <= PRIME // 2 < clients * (steps + 1)


@pytest.mark.parametrize("clients", [1, 2, 7])
def test_overflow_raises_before_wrapping(clients: int) -> None:
    bound = ENC.max_abs(clients)
    just_over = bound + ENC.resolution
    for sign in (1.0, -1.0):
        update = np.array([0.0, 0.5, sign * just_over, 1.0])
        with pytest.raises(EncodingRangeError, match="at index 2") as info:
            ENC.encode(update, clients=clients)
        assert isinstance(info.value, BadInputError)
        # Just inside: every client at the bound, the field sum decodes exactly.
        inside = np.array([sign * bound, -sign * bound, sign * (bound - ENC.resolution)])
        total = np.zeros(inside.size, dtype=np.int64)
        for _ in range(clients):
            total = (total + ENC.encode(inside, clients=clients)) % PRIME
        np.testing.assert_array_equal(ENC.decode(total), clients * inside)
    # The encoding that was refused would have wrapped: its sum leaves the signed range.
    steps = round(just_over * 2**FRAC_BITS)
    assert clients * steps > PRIME // 2


def test_rejects_non_finite_and_bad_shape() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(EncodingRangeError, match="at index 1"):
            ENC.encode(np.array([0.0, bad]), clients=1)
    with pytest.raises(BadInputError, match="1-D"):
        ENC.encode(np.zeros((2, 2)), clients=1)
    with pytest.raises(BadInputError, match=r"\[0, "):
        ENC.decode(np.array([PRIME], dtype=np.int64))
    with pytest.raises(BadInputError, match="integer"):
        ENC.decode(np.array([0.5]))


def test_decode_negative_exact() -> None:
    values = np.array([-1.0, -ENC.resolution, -63.5, 0.0, ENC.resolution, 3.25])
    encoded = ENC.encode(values, clients=1)
    assert encoded.dtype == np.int64
    assert encoded.min() >= 0
    assert encoded.max() < PRIME
    assert encoded[0] == PRIME - 2**FRAC_BITS
    np.testing.assert_array_equal(ENC.decode(encoded), values)
    signed = to_signed(np.array([0, PRIME // 2, PRIME // 2 + 1, PRIME - 1]), PRIME)
    np.testing.assert_array_equal(signed, [0, PRIME // 2, -(PRIME // 2), -1])


@settings(max_examples=60, deadline=None)
@given(
    clients=st.integers(1, 12),
    data=st.data(),
)
def test_field_sum_equals_quantized_sum(clients: int, data: st.DataObject) -> None:
    bound = ENC.max_abs(clients)
    size = data.draw(st.integers(0, 20))
    updates = [
        np.array(
            data.draw(st.lists(st.floats(-bound, bound), min_size=size, max_size=size)),
            dtype=np.float64,
        )
        for _ in range(clients)
    ]
    field_sum = np.zeros(size, dtype=np.int64)
    for update in updates:
        field_sum = (field_sum + ENC.encode(update, clients=clients)) % PRIME
    plain = np.zeros(size)
    for update in updates:
        plain = plain + quantize(update, grid=DEFAULT_PARAMS.release_grid)
    np.testing.assert_array_equal(ENC.decode(field_sum), plain)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-6.0, 6.0, allow_nan=False),
            # exact ties of the grid, both signs: half to even, as numpy's round
            st.integers(-(2**18), 2**18).map(lambda k: (k + 0.5) * 2.0**-16),
        ),
        max_size=50,
    )
)
def test_encode_and_decode_equal_their_definition(values: list[float]) -> None:
    """The branchless encode/decode against the formulas in the module doc, written plainly:
    round(x * 2^f) mod p, and the signed lift divided by 2^f."""
    enc = FieldEncoding()
    array = np.array(values, dtype=np.float64)
    expected = np.mod(np.round(array * 2.0**FRAC_BITS).astype(np.int64), PRIME)
    encoded = enc.encode(array, clients=10)
    np.testing.assert_array_equal(encoded, expected)
    signed = np.where(expected > PRIME // 2, expected - PRIME, expected)
    np.testing.assert_array_equal(enc.decode(encoded), signed * 2.0**-FRAC_BITS)


def test_encode_and_decode_span_blocks() -> None:
    """Block by block (BLOCK values), with a partial last block: the same as the formula."""
    enc = FieldEncoding()
    array = np.random.default_rng(3).normal(0, 1, 2 * BLOCK + 5)
    expected = np.mod(np.round(array * 2.0**FRAC_BITS).astype(np.int64), PRIME)
    encoded = enc.encode(array, clients=10)
    np.testing.assert_array_equal(encoded, expected)
    np.testing.assert_array_equal(enc.decode(encoded), np.round(array * 2.0**FRAC_BITS) / 2**16)
