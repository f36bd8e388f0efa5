"""Share payload wire format: round trips, 23-bit packing, every malformed case refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto import framing
from cohort.crypto.fixed_point import PRIME
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import FullShare, SeededShare, ShamirScheme, share
from cohort.crypto.share_payload import (
    MAGIC,
    ShareKind,
    SharePayload,
    pack_field,
    packed_size,
    unpack_field,
)
from cohort.errors import BadInputError

SCHEME = ShamirScheme(3, 2)
VALUES = np.array([0, 1, PRIME - 1, 12345, 2**22], dtype=np.int64)
FULL = SharePayload(SCHEME, 5, FullShare(1, VALUES))
SEEDED = SharePayload(SCHEME, 5, SeededShare(0, bytes(range(32))))


def _header(
    kind: int = 2, index: int = 1, k: int = 3, t: int = 2, p: int = PRIME, n: int = 5
) -> bytes:
    return (
        MAGIC + framing.u8(1) + framing.u8(kind) + framing.u32(index) + framing.u32(k)
        + framing.u32(t) + framing.u32(p) + framing.u64(n)
    )  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, PRIME - 1), max_size=40), st.sampled_from([257, 8191, PRIME]))
def test_pack_round_trip(values: list[int], prime: int) -> None:
    array = np.array([v % prime for v in values], dtype=np.int64)
    packed = pack_field(array, prime)
    assert (
        len(packed) == packed_size(array.size, prime) == (array.size * prime.bit_length() + 7) // 8
    )
    np.testing.assert_array_equal(unpack_field(packed, array.size, prime), array)


def _reference_pack(values: list[int], width: int) -> bytes:
    """The format by its definition: every value's bits, most significant first, one stream."""
    stream = "".join(format(v, f"0{width}b") for v in values)
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([3, 257, 65537, 8191, 131071, PRIME, 2147483647]),
    st.lists(st.integers(0, 2**31), max_size=30),
)
def test_the_vectorised_packing_is_the_bit_stream_of_its_definition(
    prime: int, raw: list[int]
) -> None:
    values = [v % prime for v in raw]
    packed = pack_field(np.array(values, dtype=np.int64), prime)
    assert packed == _reference_pack(values, prime.bit_length())
    np.testing.assert_array_equal(
        unpack_field(packed, len(values), prime), np.array(values, dtype=np.int64)
    )


def test_pack_layout_is_23_bit_big_endian() -> None:
    assert pack_field(np.array([1], dtype=np.int64), PRIME) == b"\x00\x00\x02"
    assert pack_field(np.array([PRIME - 1, 1], dtype=np.int64), PRIME).hex() == "ffffe0000004"
    # k=3, t=2: two full shares of 23 bits + one 32-byte seed per parameter.
    n = 1_000_000
    assert 2 * packed_size(n, PRIME) * 8 / n == 46
    assert 2 * packed_size(n, PRIME) / (4 * n) == 1.4375


def test_payload_round_trip() -> None:
    for payload in (FULL, SEEDED):
        wire = payload.to_bytes()
        back = SharePayload.from_bytes(wire, length=5)
        assert back.kind == payload.kind
        assert back.scheme == SCHEME
        assert back.length == 5
        assert back.to_bytes() == wire
    assert isinstance(SharePayload.from_bytes(FULL.to_bytes()).share, FullShare)
    np.testing.assert_array_equal(SharePayload.from_bytes(FULL.to_bytes()).share.values, VALUES)  # type: ignore[union-attr]
    assert SEEDED.kind == ShareKind.SEED


def test_shares_survive_the_wire() -> None:
    doms = [share_domain("s", 0, f"m{i}", "o") for i in range(3)]
    secret = np.arange(100, dtype=np.int64) * 777
    for s in share(secret, SCHEME, domains=doms, seeded=[2]):
        payload = SharePayload.from_bytes(SharePayload(SCHEME, 100, s).to_bytes(), length=100)
        original = SharePayload(SCHEME, 100, s).values(domain=doms[s.index])
        np.testing.assert_array_equal(payload.values(domain=doms[s.index]), original)


WIRE = FULL.to_bytes()
SEED_WIRE = SEEDED.to_bytes()
MALFORMED = {
    "bad magic": (b"CHSX" + WIRE[4:], "bad magic b'CHSX'"),
    "bad version": (WIRE[:4] + b"\x02" + WIRE[5:], "unsupported version 2"),
    "bad kind": (WIRE[:5] + b"\x03" + WIRE[6:], "unknown kind 3"),
    "truncated": (WIRE[:-1], "truncated in values"),
    "truncated header": (WIRE[:10], "truncated in members"),
    "trailing": (WIRE + b"\x00", "1 trailing bytes"),
    "index >= k": (
        _header(index=3) + WIRE[len(_header()) :],
        "member index 3 is not below members 3",
    ),
    "t > k": (_header(t=4) + WIRE[len(_header()) :], "threshold 4 not in [1, members 3]"),
    "t = 0": (_header(t=0) + WIRE[len(_header()) :], "threshold 0 not in [1, members 3]"),
    "not prime": (_header(p=PRIME + 1) + WIRE[len(_header()) :], "prime must be an odd prime"),
    "wrong length": (_header(n=6) + WIRE[len(_header()) :], "values has 15 bytes, expected 18"),
    "value >= p": (
        _header() + framing.prefixed64(bytes.fromhex("ffffff") + WIRE[-12:]),
        "value at index 0 is not below the prime",
    ),
    "non-zero padding": (WIRE[:-1] + bytes([WIRE[-1] | 1]), "non-zero padding bits"),
    "short seed": (SEED_WIRE[:-36] + framing.prefixed(bytes(31)), "seed has 31 bytes, expected 32"),
    "long seed": (SEED_WIRE[:-36] + framing.prefixed(bytes(33)), "seed has 33 bytes, expected 32"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_rejected(name: str) -> None:
    data, reason = MALFORMED[name]
    with pytest.raises(BadInputError) as info:
        SharePayload.from_bytes(data)
    message = str(info.value)
    assert message.startswith("share payload: ")
    assert reason in message
    assert "\n" not in message


def test_expected_length_enforced() -> None:
    with pytest.raises(BadInputError, match="share payload: length 5, expected 6"):
        SharePayload.from_bytes(WIRE, length=6)
    with pytest.raises(BadInputError, match="expected bytes"):
        SharePayload.from_bytes("text")  # type: ignore[arg-type]


def test_constructor_validates() -> None:
    with pytest.raises(BadInputError, match="member index 3"):
        SharePayload(SCHEME, 5, FullShare(3, VALUES))
    with pytest.raises(BadInputError, match="expected 4"):
        SharePayload(SCHEME, 4, FullShare(0, VALUES))
    with pytest.raises(BadInputError, match="seed has 31 bytes"):
        SharePayload(SCHEME, 4, SeededShare(0, bytes(31)))
    with pytest.raises(BadInputError, match="values must lie"):
        SharePayload(SCHEME, 1, FullShare(0, np.array([PRIME]))).to_bytes()
