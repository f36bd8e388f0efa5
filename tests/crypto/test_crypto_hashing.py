"""Digest ids from the wire: exactly 64 lower-case hex digits, nothing around them; and
tagged_hash's two implementations computing one function."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto.hashing import LARGE_INPUT, Tag, is_digest_hex, tagged_hash

GOOD = tagged_hash(Tag.MANIFEST, b"a manifest").hex()


def test_a_digest_in_hex_is_accepted() -> None:
    assert is_digest_hex(GOOD)


@pytest.mark.parametrize(
    "bad",
    ["", GOOD[:-1], GOOD + "0", GOOD + "\n", "\n" + GOOD, GOOD.upper(), "g" * 64, "../" + GOOD[3:]],
)
def test_anything_else_is_refused(bad: str) -> None:
    assert not is_digest_hex(bad)


def test_non_text_is_refused() -> None:
    assert not is_digest_hex(bytes.fromhex(GOOD))
    assert not is_digest_hex(None)


def _reference(tag: Tag, *parts: bytes) -> bytes:
    """The module doc's construction, written out with hashlib alone."""
    data = len(tag.value).to_bytes(2, "big") + tag.value
    for part in parts:
        data += len(part).to_bytes(8, "big") + part
    return hashlib.blake2b(data, digest_size=32).digest()


@given(
    sizes=st.lists(
        st.sampled_from([0, 1, 100, LARGE_INPUT - 9, LARGE_INPUT - 1, LARGE_INPUT, 200_000]),
        min_size=0,
        max_size=3,
    ),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_small_and_large_inputs_hash_the_same_construction(sizes: list[int], seed: int) -> None:
    """Below LARGE_INPUT tagged_hash runs hashlib, from it on libsodium: one function."""
    rng = random.Random(seed)
    parts = [rng.randbytes(size) for size in sizes]
    assert tagged_hash(Tag.PAYLOAD, *parts) == _reference(Tag.PAYLOAD, *parts)
    assert tagged_hash(Tag.AGGREGATE, *parts) != tagged_hash(Tag.PAYLOAD, *parts)
