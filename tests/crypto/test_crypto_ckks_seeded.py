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
from cohort.crypto import framing
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


REJECTING = b"\x01" * 32  # seeds whose stream the test below edits to hold rejected words


def _stream_with_rejections(layout: fastsum.Layout) -> object:
    """chacha20_into, except that under REJECTING the stream holds a rejected word in every
    row (a real seed with one is rarer than one in 200 for these primes)."""
    real = seeded.chacha20_into
    n = layout.poly_modulus_degree

    def into(seed: bytes, words: np.ndarray) -> None:
        real(seed, words)
        if seed == REJECTING:
            for j, q in enumerate(layout.primes):
                words[j * n + 5] = fastsum.U64_MAX - fastsum.U64_MAX % q - 1 + j  # rejected

    return into


@pytest.mark.parametrize("secret", [SECRET, WIDE], ids=["48-bit", "60-bit"])
def test_decoding_a_whole_upload_equals_decoding_its_chunks(
    secret: CkksSecretContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decode_chunks (the member's path) is bit for bit decode_chunk per chunk, also for
    chunks whose c1 stream has a rejected word (expanded again by the rejection rule)."""
    layout = secret.public()._layout
    monkeypatch.setattr(seeded, "chacha20_into", _stream_with_rejections(layout))
    rejected = seeded.expand_c1(REJECTING, layout)
    n = layout.poly_modulus_degree
    spare = seeded.chacha20_words(REJECTING, len(layout.primes) * n + 64)[len(layout.primes) * n :]
    for j, q in enumerate(layout.primes):  # the rejected word was replaced by a spare one
        assert int(rejected[j, 5]) == int(spare[j]) % q
    rng = np.random.default_rng(7)
    shape = (len(layout.primes), layout.poly_modulus_degree)
    seeds = [REJECTING, bytes(32), bytes(range(32)), REJECTING]
    sizes = [17, 4096, 1, 300]
    chunks = []
    for seed, size in zip(seeds, sizes, strict=True):
        c0 = np.stack([rng.integers(0, q, size=shape[1], dtype=np.uint64) for q in layout.primes])
        c0[:, 0] = [q - 1 for q in layout.primes]  # the largest reduced coefficient
        chunks.append(seeded.encode_chunk(size, seed, c0, layout))
    whole = seeded.decode_chunks(chunks, layout, sizes=sizes, what="upload")
    assert whole.shape == (4, fastsum.POLYS, *shape)
    for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True)):
        one = seeded.decode_chunk(chunk, layout, size=size, where="chunk")
        assert np.array_equal(whole[i], one), f"chunk {i}"


def test_decoding_a_whole_upload_names_the_first_bad_chunk() -> None:
    c0 = np.zeros((1, LAYOUT.poly_modulus_degree), dtype=np.uint64)
    good = seeded.encode_chunk(17, bytes(32), c0, LAYOUT)
    unreduced = good[:36] + b"\xff" * 6 + good[42:]
    sizes = [17, 17, 17]
    with pytest.raises(BadInputError, match="upload: chunk 1: a coefficient is not reduced"):
        seeded.decode_chunks([good, unreduced, unreduced], LAYOUT, sizes=sizes, what="upload")
    with pytest.raises(BadInputError, match="upload: chunk 2 holds 49182 bytes"):
        seeded.decode_chunks([good, good, good[:-6]], LAYOUT, sizes=sizes, what="upload")
    with pytest.raises(BadInputError, match="upload: chunk 0 fills 17 slots, expected 16"):
        seeded.decode_chunks([good, good], LAYOUT, sizes=[16, 17], what="upload")
    with pytest.raises(ValueError, match="2 chunks, 3 slot counts"):
        seeded.decode_chunks([good, good], LAYOUT, sizes=sizes, what="upload")


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


def test_an_upload_is_parsed_in_place_and_anything_else_by_the_full_parser() -> None:
    """wire.uniform_chunks views an upload's chunks without copying them, exactly the
    chunks parse_vector copies out; any other framing is left to parse_vector's errors."""
    public = SECRET.public()
    blob = SECRET.encrypt(np.linspace(-1, 1, 9000))
    size = seeded.chunk_size(LAYOUT)
    found = wire.uniform_chunks(blob, public.params, kind=wire.KIND_UPLOAD, chunk_bytes=size)
    assert found is not None
    count, rows = found
    frame = wire.parse_vector(blob, public.params)
    assert count == frame.length == 9000
    assert [row.tobytes() for row in rows] == list(frame.chunks)
    assert not rows.flags.writeable  # a view of the bytes
    for bad in (blob + b"\x00", blob[:-1]):
        got = wire.uniform_chunks(bad, public.params, kind=wire.KIND_UPLOAD, chunk_bytes=size)
        assert got is None
    with pytest.raises(BadInputError, match="1 trailing bytes"):
        public.decode(blob + b"\x00")
    with pytest.raises(BadInputError, match="truncated in chunk 1"):
        public.decode(blob[:-1])
    assert wire.uniform_chunks(blob, public.params, kind=wire.KIND_SUM, chunk_bytes=size) is None
    relabelled = bytearray(blob)
    relabelled[-size - 4 : -size] = (size - 1).to_bytes(4, "big")  # a chunk's length prefix
    assert (
        wire.uniform_chunks(
            bytes(relabelled), public.params, kind=wire.KIND_UPLOAD, chunk_bytes=size
        )
        is None
    )
    with pytest.raises(BadInputError):
        public.decode(bytes(relabelled))


@pytest.mark.parametrize("secret", [SECRET, WIDE], ids=["48-bit", "60-bit"])
def test_a_whole_sum_is_encoded_as_its_chunks_one_by_one(secret: CkksSecretContext) -> None:
    """encode_sum_chunks (one array for the vector) is byte for byte the length-prefixed
    encode_sum_chunk of each chunk, whatever the primes' byte widths (6; 8 and 7 here)."""
    layout = secret.public()._layout
    rng = np.random.default_rng(3)
    count, n = 5, layout.poly_modulus_degree
    coeffs = np.empty((count, fastsum.POLYS, len(layout.primes), n), dtype=np.uint64)
    for j, q in enumerate(layout.primes):
        coeffs[:, :, j, :] = rng.integers(0, q, size=(count, fastsum.POLYS, n), dtype=np.uint64)
        coeffs[0, 0, j, 0] = q - 1
    sizes = [4096, 4096, 7, 1, 300]
    expected = b"".join(
        framing.prefixed(seeded.encode_sum_chunk(size, coeffs[i], layout))
        for i, size in enumerate(sizes)
    )
    assert seeded.encode_sum_chunks(sizes, coeffs, layout) == expected
    with pytest.raises(ValueError, match="5 chunks, 4 slot counts"):
        seeded.encode_sum_chunks(sizes[:4], coeffs, layout)
