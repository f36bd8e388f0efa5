"""Digest ids from the wire: exactly 64 lower-case hex digits, nothing around them."""

from __future__ import annotations

import pytest

from cohort.crypto.hashing import Tag, is_digest_hex, tagged_hash

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
