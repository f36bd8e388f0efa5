"""Seed expansion: deterministic, domain-separated, exactly uniform on [0, p)."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from nacl.bindings import randombytes_buf_deterministic
from scipy import stats  # type: ignore[import-untyped]

from cohort.crypto.fixed_point import PRIME
from cohort.crypto.prg import PRG_PERSON, SEED_BYTES, expand_field, share_domain
from cohort.errors import BadInputError

SEED = bytes(range(32))
DOMAIN = share_domain("study-kat", 3, "m1", "owner-a")
# Known answers, pinned: a change here is a wire-incompatible change of the PRG.
KAT_DOMAIN = "7aeee1528eb52c315ff23aa30d00c3cac8f4c44106088244bed66aadeb3501a7"
KAT_VALUES = [785418, 5263512, 4109509, 2516519, 4668031, 8042418, 731789, 3241917]
KAT_257 = [48, 153, 165, 208]


def _reference(seed: bytes, domain: bytes, count: int, prime: int) -> list[int]:
    """Slow oracle straight from the module doc: one draw at a time."""
    data = struct.pack(">Q", len(domain)) + domain + struct.pack(">Q", prime)
    key = hashlib.blake2b(data, digest_size=32, key=seed, person=PRG_PERSON).digest()
    width = prime.bit_length()
    size = (width + 7) // 8
    stream = randombytes_buf_deterministic(size * (4 * count + 64), key)
    out = []
    for pos in range(0, len(stream), size):
        draw = int.from_bytes(stream[pos : pos + size], "little") & (2**width - 1)
        if draw < prime:
            out.append(draw)
        if len(out) == count:
            break
    return out


def test_known_answer() -> None:
    assert DOMAIN.hex() == KAT_DOMAIN
    assert expand_field(SEED, domain=DOMAIN, count=8, prime=PRIME).tolist() == KAT_VALUES
    assert expand_field(bytes(32), domain=b"", count=4, prime=257).tolist() == KAT_257


@pytest.mark.parametrize("prime", [257, 8191, PRIME, 2**31 - 1])
def test_matches_reference(prime: int) -> None:
    got = expand_field(SEED, domain=DOMAIN, count=300, prime=prime)
    assert got.dtype == np.int64
    assert got.tolist() == _reference(SEED, DOMAIN, 300, prime)


def test_deterministic_and_prefix_consistent() -> None:
    long = expand_field(SEED, domain=DOMAIN, count=5000, prime=PRIME)
    np.testing.assert_array_equal(long, expand_field(SEED, domain=DOMAIN, count=5000, prime=PRIME))
    for count in (0, 1, 17, 999):
        np.testing.assert_array_equal(
            expand_field(SEED, domain=DOMAIN, count=count, prime=PRIME), long[:count]
        )


def test_domain_separation() -> None:
    base = ("study", 1, "m1", "owner")
    variants = [
        ("study2", 1, "m1", "owner"),
        ("study", 2, "m1", "owner"),
        ("study", 1, "m2", "owner"),
        ("study", 1, "m1", "owner2"),
        ("studym", 1, "1", "owner"),  # shifting bytes between fields changes the domain
    ]
    domains = {share_domain(*base)} | {share_domain(*v) for v in variants}
    assert len(domains) == 1 + len(variants)
    streams = {tuple(expand_field(SEED, domain=d, count=16, prime=PRIME).tolist()) for d in domains}
    assert len(streams) == len(domains)
    other_seed = expand_field(bytes(32), domain=DOMAIN, count=16, prime=PRIME)
    assert other_seed[:8].tolist() != KAT_VALUES
    other_prime = expand_field(SEED, domain=DOMAIN, count=8, prime=8388587)
    assert other_prime.tolist() != KAT_VALUES


def test_exact_uniform_range() -> None:
    # 257 = 2^8 + 1 needs 9-bit draws; almost half are rejected. Every residue appears,
    # nothing outside [0, p), and the counts pass a chi-square test of uniformity.
    prime = 257
    values = expand_field(SEED, domain=DOMAIN, count=257 * 200, prime=prime)
    assert values.min() == 0
    assert values.max() == prime - 1
    counts = np.bincount(values, minlength=prime)
    assert stats.chisquare(counts).pvalue > 1e-4
    big = expand_field(SEED, domain=DOMAIN, count=100_000, prime=PRIME)
    assert big.min() >= 0
    assert big.max() < PRIME
    assert stats.kstest(big / PRIME, "uniform").pvalue > 1e-4


def test_bad_arguments() -> None:
    with pytest.raises(BadInputError, match=f"{SEED_BYTES} bytes"):
        expand_field(b"short", domain=DOMAIN, count=1, prime=PRIME)
    with pytest.raises(BadInputError, match="count"):
        expand_field(SEED, domain=DOMAIN, count=-1, prime=PRIME)
    with pytest.raises(BadInputError, match="round"):
        share_domain("s", -1, "m", "o")
