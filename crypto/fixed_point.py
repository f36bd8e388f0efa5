"""Fixed-point encoding of model updates into the prime field of the MPC secure mode.

Run by a data owner before it secret-shares its update (:mod:`cohort.crypto.shamir`), and by
whoever decodes the reconstructed sum. A value ``x`` becomes ``round(x * 2^f) mod p``; the
sum over ``clients`` encodings is computed mod ``p`` by the committee, and :meth:`decode` lifts
it back to a signed integer (``v > p // 2`` means ``v - p``) and divides by ``2^f``.

The default grid ``2^-16`` is the CKKS release grid (``DEFAULT_PARAMS.release_grid``), so an
MPC sum equals the plaintext sum of the quantised updates bit for bit. The sum is exact only
while it stays in the signed range ``(-p/2, p/2)``: :meth:`FieldEncoding.encode` refuses any
value above :meth:`FieldEncoding.max_abs` BEFORE sharing, so a sum can never wrap silently.
With the default prime and ``f = 16`` one client may encode up to about 64 in magnitude,
``clients`` clients up to ``64 / clients`` each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cohort.errors import BadInputError, ConfigError

#: The field modulus: the largest prime below 2^23 (2^23 - 15), so a field element packs
#: into 23 bits and a product of two elements stays below 2^46 (no int64 overflow).
PRIME = 8388593
#: Fractional bits of the fixed-point grid: 2^-16, the CKKS release grid.
FRAC_BITS = 16
#: Largest modulus the int64 arithmetic supports (a product must stay below 2^62).
MAX_PRIME = 2**31
#: Values per block of the field's vector arithmetic (here and in :mod:`cohort.crypto.shamir`):
#: 512 KiB of int64, so one block's temporaries stay in cache (about three times faster at
#: 1M values than whole-vector operations, which also fault in fresh pages).
BLOCK = 1 << 16
#: 1.5 * 2^52: adding and subtracting it rounds a float64 below 2^51 to an integer, ties
#: to even (as numpy's round).
_ROUNDING = 1.5 * 2.0**52


class EncodingRangeError(BadInputError):
    """A value is not finite or too large to encode without the sum leaving the field."""


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin, exact for ``n < 3.4e14`` (bases 2, 3, 5, 7, 11, 13, 17)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17)
    if n in bases:
        return True
    if any(n % b == 0 for b in bases):
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for b in bases:
        x = pow(b, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def check_prime(prime: int) -> None:
    """Raise :class:`~cohort.errors.ConfigError` unless ``prime`` is an odd prime below 2^31."""
    if not isinstance(prime, int) or isinstance(prime, bool):
        raise ConfigError(f"prime must be an integer, got {prime!r}")
    if not 2 < prime < MAX_PRIME or not is_prime(prime):
        raise ConfigError(f"prime must be an odd prime below 2^31, got {prime}")


def to_signed(values: NDArray[np.int64], prime: int) -> NDArray[np.int64]:
    """Field elements in ``[0, p)`` lifted to ``(-p/2, p/2)``: ``v > p // 2`` means ``v - p``."""
    array = np.asarray(values, dtype=np.int64)
    signed: NDArray[np.int64] = np.where(array > prime // 2, array - prime, array)
    return signed


@dataclass(frozen=True)
class FieldEncoding:
    """Fixed-point grid ``2^-frac_bits`` over the field ``F_prime``."""

    prime: int = PRIME
    frac_bits: int = FRAC_BITS

    def __post_init__(self) -> None:
        check_prime(self.prime)
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits < 31:
            raise ConfigError(f"frac_bits must be an integer in [0, 31), got {self.frac_bits!r}")

    @property
    def resolution(self) -> float:
        """The grid step ``2^-frac_bits`` (value units)."""
        return 2.0**-self.frac_bits

    def max_steps(self, clients: int) -> int:
        """Largest |integer| one client may encode so ``clients`` of them sum inside the field."""
        if not isinstance(clients, int) or isinstance(clients, bool) or clients < 1:
            raise BadInputError(f"clients must be an integer >= 1, got {clients!r}")
        return (self.prime // 2) // clients

    def max_abs(self, clients: int) -> float:
        """Largest |value| a single client may encode so that the sum of ``clients``
        encodings cannot leave the signed range ``(-p/2, p/2)``."""
        return self.max_steps(clients) * self.resolution

    def encode(self, values: NDArray[np.float64], *, clients: int) -> NDArray[np.int64]:
        """``round(x * 2^f) mod p`` as int64 in ``[0, p)``. Run by a data owner before sharing.

        Raises :class:`EncodingRangeError` naming the first offending index when a value is
        not finite or exceeds :meth:`max_abs` for ``clients`` in magnitude, and
        :class:`~cohort.errors.BadInputError` when ``values`` is not a 1-D vector.
        """
        bound = self.max_abs(clients)
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1:
            raise BadInputError(f"update must be a 1-D vector, got shape {array.shape}")
        peak = max(float(array.max()), -float(array.min())) if array.size else 0.0
        if not peak <= bound:  # NaN fails this too
            i = int(np.flatnonzero(~(np.abs(array) <= bound))[0])
            raise EncodingRangeError(
                f"encode: value {float(array[i])!r} at index {i} is not finite or exceeds "
                f"max_abs {bound:g} for {clients} clients"
            )
        # Round half to even by adding and subtracting 1.5 * 2^52 (exact: |steps| < 2^51),
        # then lift a negative step s to s + p without a branch: (s >> 63) & p is p or 0.
        # Block by block, so the temporaries stay in cache.
        encoded: NDArray[np.int64] = np.empty(array.size, dtype=np.int64)
        scaled = np.empty(min(array.size, BLOCK), dtype=np.float64)
        lift = scaled.view(np.int64)
        for start in range(0, array.size, BLOCK):
            stop = min(array.size, start + BLOCK)
            out, f, m = encoded[start:stop], scaled[: stop - start], lift[: stop - start]
            np.multiply(array[start:stop], float(2**self.frac_bits), out=f)
            f += _ROUNDING
            f -= _ROUNDING
            out[...] = f
            np.right_shift(out, 63, out=m)
            np.bitwise_and(m, np.int64(self.prime), out=m)
            out += m
        return encoded

    def decode(self, field_values: NDArray[np.int64]) -> NDArray[np.float64]:
        """The signed lift of ``field_values`` divided by ``2^f`` (float64, exact)."""
        array = np.asarray(field_values)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise BadInputError(f"field values must be a 1-D integer vector, got {array.dtype}")
        if array.size and (int(array.min()) < 0 or int(array.max()) >= self.prime):
            raise BadInputError(f"field values must lie in [0, {self.prime})")
        # v - p for v > p // 2 without a branch: ((p // 2 - v) >> 63) & -p is -p or 0
        values = array.astype(np.int64, copy=False)
        decoded: NDArray[np.float64] = np.empty(values.size, dtype=np.float64)
        signed = np.empty(min(values.size, BLOCK), dtype=np.int64)
        for start in range(0, values.size, BLOCK):
            stop = min(values.size, start + BLOCK)
            v, s = values[start:stop], signed[: stop - start]
            np.subtract(np.int64(self.prime // 2), v, out=s)
            np.right_shift(s, 63, out=s)
            np.bitwise_and(s, np.int64(-self.prime), out=s)
            s += v
            np.multiply(s, self.resolution, out=decoded[start:stop])  # 2^-f: exact
        return decoded
