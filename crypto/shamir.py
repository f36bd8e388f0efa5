"""Shamir secret sharing of vectors over ``F_p`` for the MPC secure mode.

A data owner runs :func:`share` once per round on its encoded update
(:mod:`cohort.crypto.fixed_point`): member ``i`` (0-based) of a committee of ``k`` receives
the point ``x = i + 1`` of a degree ``t - 1`` polynomial with ``f(0) = secret``, elementwise.
Exactly ``t - 1`` members receive a 32-byte seed instead of values (their share is
:func:`~cohort.crypto.prg.expand_field` of that seed): those ``t - 1`` points are uniform and,
with ``f(0)``, fix the polynomial; the other ``k - t + 1`` shares are interpolated from them.
Any ``t - 1`` shares are therefore independent of the secret, and any ``t`` reconstruct it.

Members add the shares they hold elementwise mod ``p`` (one point of the sum polynomial) and
the committee runs :func:`reconstruct` or :func:`robust_reconstruct` on the summed points, or
feeds :func:`additive_share` into an additive MPC protocol. All arithmetic is int64 numpy
with ``p < 2^31`` and a reduction after every product, so nothing overflows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from cohort.crypto.fixed_point import BLOCK, PRIME, check_prime
from cohort.crypto.prg import SEED_BYTES, expand_field
from cohort.errors import BadInputError, ConfigError, VerificationError

IntArray = TypeVar("IntArray", NDArray[np.int64], NDArray[np.uint32])


class InconsistentShares(VerificationError):
    """The points do not lie on one polynomial of degree ``t - 1`` and the wrong ones cannot
    be located; :attr:`indices` names the members whose points could be wrong."""

    def __init__(self, message: str, indices: Sequence[int]) -> None:
        super().__init__(message)
        self.indices: tuple[int, ...] = tuple(sorted(indices))


@dataclass(frozen=True)
class ShamirScheme:
    """``members`` (k) shares, any ``threshold`` (t) of which reconstruct, over ``F_prime``."""

    members: int
    threshold: int
    prime: int = PRIME

    def __post_init__(self) -> None:
        check_prime(self.prime)
        for name in ("members", "threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.threshold <= self.members < self.prime:
            raise ConfigError(
                f"need 1 <= threshold <= members < prime, got threshold {self.threshold}, "
                f"members {self.members}, prime {self.prime}"
            )


@dataclass(frozen=True)
class SeededShare:
    """Member ``index``'s share as a seed: its values are ``expand_field(seed, domain)``."""

    index: int
    seed: bytes


@dataclass(frozen=True, eq=False)
class FullShare:
    """Member ``index``'s share as explicit field values: int64, or uint32 where a member
    parsed it narrow (:meth:`cohort.crypto.share_payload.SharePayload.narrow_values`)."""

    index: int
    values: NDArray[np.int64] | NDArray[np.uint32]


Share = SeededShare | FullShare


def _lagrange_at(xs: Sequence[int], x: int, prime: int) -> list[int]:
    """Coefficients ``L_j(x)`` of the polynomial through the distinct points ``xs``."""
    coefficients = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (x - xm) % prime
                den = den * (xj - xm) % prime
        coefficients.append(num * pow(den, -1, prime) % prime)
    return coefficients


def lagrange_at_zero(indices: Sequence[int], prime: int) -> list[int]:
    """Coefficients that recover ``f(0)`` from members ``indices`` (points ``x = i + 1``)."""
    if len(set(indices)) != len(indices) or any(not 0 <= i < prime - 1 for i in indices):
        raise BadInputError(f"member indices must be distinct and in [0, p - 1), got {indices}")
    return _lagrange_at([i + 1 for i in indices], 0, prime)


def _combine(
    coefficients: Sequence[int], rows: Sequence[NDArray[np.int64]], prime: int
) -> NDArray[np.int64]:
    # c, row < p < 2^31 - 1: each product < 2^62 would overflow a running sum, so reduce
    # per term only when products are that large; below 2^23 (the default field) one
    # reduction at the end is exact for up to 2^16 terms (their sum stays below 2^62).
    lazy = prime < 2**23 and len(rows) < 2**16
    size = rows[0].size
    out = np.empty(size, dtype=np.int64)
    term = np.empty(min(size, BLOCK), dtype=np.int64)
    for start in range(0, size, BLOCK):
        stop = min(size, start + BLOCK)
        total, scratch = out[start:stop], term[: stop - start]
        np.multiply(rows[0][start:stop], np.int64(coefficients[0]), out=total)
        for c, row in zip(coefficients[1:], rows[1:], strict=True):
            np.multiply(row[start:stop], np.int64(c), out=scratch)
            if not lazy:
                reduce_mod(scratch, prime)
                reduce_mod(total, prime)
            np.add(total, scratch, out=total)
        reduce_mod(total, prime)
    return out


def reduce_mod(values: IntArray, prime: int) -> IntArray:
    """``values mod prime`` in place, for ``values >= 0``: ``v - (v // p) * p`` (numpy
    divides by a constant, with libdivide, about three times faster than it takes a
    remainder), block by block."""
    for start in range(0, values.size, BLOCK):
        block = values[start : start + BLOCK]
        quotient = np.floor_divide(block, prime)
        quotient *= prime
        block -= quotient
    return values


def _field_vector(values: object, prime: int, what: str) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise BadInputError(f"{what} must be a 1-D integer vector, got {array.dtype} {array.shape}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= prime):
        raise BadInputError(f"{what} has values outside [0, {prime})")
    return array.astype(np.int64, copy=False)


def share(
    secret: NDArray[np.int64],
    scheme: ShamirScheme,
    *,
    domains: Sequence[bytes],
    seeded: Sequence[int] | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[SeededShare | FullShare]:
    """Split ``secret`` (field values in ``[0, p)``) into one share per member, in index order.
    Run by a data owner once per round.

    ``domains[i]`` is member ``i``'s :func:`~cohort.crypto.prg.share_domain`; ``seeded`` names
    the ``t - 1`` members who get a fresh seed (default ``0 .. t - 2``; rotate it to spread
    the upload size); ``random_bytes`` is the seed source (the OS, outside tests).
    """
    k, t, p = scheme.members, scheme.threshold, scheme.prime
    values = _field_vector(secret, p, "secret")
    if len(domains) != k:
        raise BadInputError(f"need one domain per member: {k}, got {len(domains)}")
    chosen = list(range(t - 1)) if seeded is None else list(seeded)
    if len(chosen) != t - 1 or len(set(chosen)) != t - 1 or any(not 0 <= i < k for i in chosen):
        raise BadInputError(f"seeded must name {t - 1} distinct members in [0, {k}), got {chosen}")
    shares: dict[int, SeededShare | FullShare] = {}
    rows = [values]
    for i in chosen:
        seed = random_bytes(SEED_BYTES)
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise BadInputError(f"random_bytes must return {SEED_BYTES} bytes")
        shares[i] = SeededShare(i, seed)
        rows.append(expand_field(seed, domain=domains[i], count=values.size, prime=p))
    basis = [0] + [i + 1 for i in chosen]
    for i in range(k):
        if i not in shares:
            shares[i] = FullShare(i, _combine(_lagrange_at(basis, i + 1, p), rows, p))
    return [shares[i] for i in range(k)]


def share_values(
    share: SeededShare | FullShare, scheme: ShamirScheme, *, domain: bytes, length: int
) -> NDArray[np.int64]:
    """The field values of ``share`` (a seed is expanded under ``domain``). Run by the member
    that received it."""
    if not 0 <= share.index < scheme.members:
        raise BadInputError(f"share index {share.index} not in [0, {scheme.members})")
    if isinstance(share, SeededShare):
        return expand_field(share.seed, domain=domain, count=length, prime=scheme.prime)
    values = _field_vector(share.values, scheme.prime, "share")
    if values.size != length:
        raise BadInputError(f"share has {values.size} values, expected {length}")
    return values


def _check_points(
    points: Mapping[int, NDArray[np.int64]], scheme: ShamirScheme
) -> tuple[list[int], list[NDArray[np.int64]]]:
    indices = sorted(points)
    if len(indices) < scheme.threshold:
        raise BadInputError(f"need at least {scheme.threshold} points, got {len(indices)}")
    if any(not isinstance(i, int) or not 0 <= i < scheme.members for i in indices):
        raise BadInputError(f"point indices must be in [0, {scheme.members}), got {indices}")
    rows = [_field_vector(points[i], scheme.prime, f"point {i}") for i in indices]
    if len({row.size for row in rows}) != 1:
        raise BadInputError("points have different lengths")
    return indices, rows


def reconstruct(points: Mapping[int, NDArray[np.int64]], scheme: ShamirScheme) -> NDArray[np.int64]:
    """``f(0)`` from any ``>= t`` points ``{member index: values}`` (the ``t`` lowest indices
    are used; nothing is checked against the rest). Run by whoever combines the committee's
    points."""
    indices, rows = _check_points(points, scheme)
    t = scheme.threshold
    return _combine(lagrange_at_zero(indices[:t], scheme.prime), rows[:t], scheme.prime)


def robust_reconstruct(
    points: Mapping[int, NDArray[np.int64]], scheme: ShamirScheme
) -> tuple[NDArray[np.int64], list[int]]:
    """``(f(0), wrong)`` where ``wrong`` lists the points off the polynomial.

    With ``n`` points, up to ``e`` wrong ones are located whenever ``n >= t + 2e``: a point
    agrees only if it matches on every element, and the polynomial through some ``t`` points
    that agrees with all but ``e <= (n - t) / 2`` points is the unique one. Raises
    :class:`InconsistentShares` when the points disagree but the wrong ones cannot be
    located, and :class:`~cohort.errors.BadInputError` when fewer than ``t`` are given.
    """
    indices, rows = _check_points(points, scheme)
    t, p, n = scheme.threshold, scheme.prime, len(indices)
    xs = [i + 1 for i in indices]
    best, suspects = -1, set()
    for subset in itertools.combinations(range(n), t):
        basis = [xs[j] for j in subset]
        basis_rows = [rows[j] for j in subset]
        wrong = [
            indices[m]
            for m in range(n)
            if m not in subset
            and not np.array_equal(_combine(_lagrange_at(basis, xs[m], p), basis_rows, p), rows[m])
        ]
        if 2 * len(wrong) <= n - t:
            return _combine(_lagrange_at(basis, 0, p), basis_rows, p), wrong
        agree = n - len(wrong)
        if agree > best:
            best, suspects = agree, set(wrong)
        elif agree == best:
            suspects |= set(wrong)
    raise InconsistentShares(
        f"points of members {indices} do not lie on one polynomial of degree {t - 1} and the "
        f"wrong ones cannot be located (needs n >= t + 2e)",
        sorted(suspects),
    )


def additive_share(
    index: int, values: NDArray[np.int64], participants: Sequence[int], prime: int
) -> NDArray[np.int64]:
    """Member ``index``'s additive share ``L_index(0) * values mod p`` among ``participants``
    (their sum over ``participants`` is the secret). Run by each participating member."""
    if index not in participants:
        raise BadInputError(f"member {index} is not among the participants {list(participants)}")
    coefficient = lagrange_at_zero(participants, prime)[list(participants).index(index)]
    return _combine([coefficient], [_field_vector(values, prime, "share")], prime)
