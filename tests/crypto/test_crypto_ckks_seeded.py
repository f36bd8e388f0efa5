"""Seeded CKKS upload chunks: the ChaCha20 expansion, exact modular arithmetic, the chunk
format, and the re-based ciphertext decrypting to what SEAL encrypted."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto import ckks_seeded as seeded
from cohort.crypto import ckks_wire as wire
from cohort.crypto.ckks import DEFAULT_PARAMS, CkksParams, CkksSecretContext
from cohort.errors import BadInputError

SECRET = CkksSecretContext.generate()
LAYOUT = SECRET.public()._layout
Q = LAYOUT.primes[0]
# A 60-bit data prime: mulmod's limb path.
WIDE = CkksSecretContext.generate(CkksParams(4096, (60, 49), 40))

# RFC 8439, appendix A.1, test vector #1: key 0, nonce 0, block counter 0.
RFC8439_A1_1 = (
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)


def test_chacha20_stream_is_rfc_8439() -> None:
    assert seeded.chacha20_words(bytes(32), 8).tobytes().hex() == RFC8439_A1_1
    longer = seeded.chacha20_words(bytes(32), 100)
    assert longer[:8].tobytes().hex() == RFC8439_A1_1  # a fixed prefix whatever the count
    with pytest.raises(ValueError, match="32 bytes"):
        seeded.chacha20_words(bytes(16), 8)


@pytest.mark.parametrize("prime", [12289, Q, (1 << 49) + 9, WIDE.public()._layout.primes[0]])
@given(data=st.data())
@settings(max_examples=30, deadline=None)
def test_mulmod_is_exact(prime: int, data: st.DataObject) -> None:
    values = st.lists(st.integers(0, prime - 1), min_size=1, max_size=40)
    xs = data.draw(values)
    ys = data.draw(st.lists(st.integers(0, prime - 1), min_size=len(xs), max_size=len(xs)))
    xs[0], ys[0] = prime - 1, prime - 1  # the largest product
    got = seeded.mulmod(np.array(xs, dtype=np.uint64), np.array(ys, dtype=np.uint64), prime)
    assert [int(v) for v in got] == [x * y % prime for x, y in zip(xs, ys, strict=True)]


def test_sample_uniform_rejects_like_seal() -> None:
    """A word at or above the largest multiple of q is replaced by the next unused word."""
    n = LAYOUT.poly_modulus_degree
    limit = fastsum.U64_MAX - fastsum.U64_MAX % Q - 1
    stream = np.arange(10, 10 + n + 100, dtype=np.uint64)
    stream[3] = limit  # rejected
    stream[n] = limit + 5  # the first spare word: rejected too
    stream[n + 1] = 77

    def draw(count: int) -> np.ndarray:
        return stream[:count]

    out = fastsum.sample_uniform(draw, LAYOUT)
    assert out.shape == (1, n)
    assert int(out[0, 3]) == 77
    assert int(out[0, 2]) == 12
    assert int(out[0, 4]) == 14


def test_expansion_is_reduced_deterministic_and_per_seed() -> None:
    a = seeded.expand_c1(bytes(range(32)), LAYOUT)
    assert a.shape == (1, LAYOUT.poly_modulus_degree)
    assert int(a.max()) < Q
    assert np.array_equal(a, seeded.expand_c1(bytes(range(32)), LAYOUT))
    assert not np.array_equal(a, seeded.expand_c1(bytes(range(1, 33)), LAYOUT))


def test_chunk_round_trip_and_size() -> None:
    c0 = np.random.default_rng(1).integers(0, Q, size=(1, LAYOUT.poly_modulus_degree))
    chunk = seeded.encode_chunk(17, bytes(32), c0.astype(np.uint64), LAYOUT)
    assert len(chunk) == seeded.chunk_size(LAYOUT) == 4 + 32 + 6 * 8192
    coeffs = seeded.decode_chunk(chunk, LAYOUT, size=17, where="chunk")
    assert np.array_equal(coeffs[0], c0)
    assert np.array_equal(coeffs[1], seeded.expand_c1(bytes(32), LAYOUT))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: c[:-6], "holds 49182 bytes, an upload chunk is 49188"),
        (lambda c: c[:4] + c[4:] + b"\x00", "holds 49189 bytes"),
        (lambda c: b"\x10" + c[1:], "fills 16 slots, expected 17"),
        (lambda c: c[:36] + b"\xff" * 6 + c[42:], "not reduced modulo prime 0"),
    ],
)
def test_bad_chunk_named(edit: object, reason: str) -> None:
    c0 = np.zeros((1, LAYOUT.poly_modulus_degree), dtype=np.uint64)
    chunk = seeded.encode_chunk(17, bytes(32), c0, LAYOUT)
    with pytest.raises(BadInputError, match=reason):
        seeded.decode_chunk(edit(chunk), LAYOUT, size=17, where="chunk")  # type: ignore[operator]


@pytest.mark.parametrize("secret", [SECRET, WIDE], ids=["48-bit", "60-bit"])
def test_rebased_upload_decrypts_to_the_values(secret: CkksSecretContext) -> None:
    """The re-based ciphertext decrypts (SEAL's decryptor) to what SEAL encrypted, and its
    c1 is the ChaCha20 expansion of the seed it carries."""
    grid = secret.params.release_grid
    values = np.round(np.random.default_rng(4).normal(0, 1, 3000) / grid) * grid
    blob = secret.encrypt(values)
    np.testing.assert_array_equal(secret.decrypt(blob), values)
    frame = wire.parse_vector(blob, secret.params)
    layout = secret.public()._layout
    chunk = frame.chunks[0]
    coeffs = seeded.decode_chunk(chunk, layout, size=1500, where="chunk")
    assert np.array_equal(coeffs[1], seeded.expand_c1(chunk[4:36], layout))


def test_rebaser_keeps_its_key_out_of_repr() -> None:
    encrypt = SECRET.encrypt(np.ones(2))
    assert encrypt  # builds the thread's encryptor
    rebaser = SECRET._local.encryptor._rebaser
    assert repr(rebaser) == "Rebaser(<secret key>)"
    with pytest.raises(ValueError, match="shape"):
        seeded.Rebaser(np.zeros((2, 8192), dtype=np.uint64), LAYOUT)


def test_upload_is_one_and_a_half_times_float32() -> None:
    length = 1_000_000
    blob = SECRET.encrypt(np.zeros(length))
    assert len(blob) < 1.52 * 4 * length
    assert wire.parse_vector(blob, DEFAULT_PARAMS).kind == wire.KIND_UPLOAD


def test_sum_chunk_round_trip_and_faults() -> None:
    rng = np.random.default_rng(2)
    coeffs = rng.integers(0, Q, size=(2, 1, LAYOUT.poly_modulus_degree)).astype(np.uint64)
    chunk = seeded.encode_sum_chunk(9, coeffs, LAYOUT)
    assert len(chunk) == seeded.sum_chunk_size(LAYOUT) == 4 + 2 * 6 * 8192
    assert np.array_equal(seeded.decode_sum_chunk(chunk, LAYOUT, size=9, where="sum"), coeffs)
    with pytest.raises(BadInputError, match="sum: a coefficient is not reduced modulo prime 0"):
        seeded.decode_sum_chunk(chunk[:-6] + b"\xff" * 6, LAYOUT, size=9, where="sum")  # in c1
    with pytest.raises(BadInputError, match="sum holds 98307 bytes, a sum chunk is 98308"):
        seeded.decode_sum_chunk(chunk[:-1], LAYOUT, size=9, where="sum")
    with pytest.raises(BadInputError, match="sum fills 9 slots, expected 10"):
        seeded.decode_sum_chunk(chunk, LAYOUT, size=10, where="sum")


def test_a_committee_sum_is_packed_and_smaller_than_seals() -> None:
    public = SECRET.public()
    blobs = [SECRET.encrypt(np.full(3 * 8192, 0.25)) for _ in range(2)]
    summed = public.add(blobs)
    frame = wire.parse_vector(summed, DEFAULT_PARAMS)
    assert frame.kind == wire.KIND_SUM
    seal = fastsum.encode_chunk(public.decode(summed).coeffs[0], LAYOUT, public._codec, size=4096)
    assert len(frame.chunks[0]) < len(seal)  # 6 bytes a coefficient beat zstd of 8
    np.testing.assert_array_equal(SECRET.decrypt(summed), np.full(3 * 8192, 0.5))
