"""The numpy fast sum against TenSEAL's homomorphic sum, and rejection of bad chunks.

Oracle: TenSEAL's own ``CKKSVector.add_`` over the same ciphertexts; the fast sum must give
the same serialized bytes (SEAL's serialization of a ciphertext is canonical: fixed header
fields, coefficients in order, one zstd frame with default parameters).

Timing (not a test): ``.venv/bin/python tests/crypto/test_crypto_ckks_fastsum.py``.
"""

from __future__ import annotations

import dataclasses
import struct
import time
import zlib

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto import ckks_seeded as seeded
from cohort.crypto import ckks_wire as wire
from cohort.crypto.ckks import DEFAULT_PARAMS, CkksParams, CkksPublicContext, CkksSecretContext
from cohort.crypto.ckks_tenseal import encrypt_chunk, seal_zstd
from cohort.errors import BadInputError

SECRET = CkksSecretContext.generate()
PUBLIC = CkksPublicContext.from_bytes(SECRET.public().to_bytes())
SLOTS = DEFAULT_PARAMS.slots
# A 60-bit data prime allows only 15 lazy adds: sums of 20 exercise the intermediate remainder.
WIDE = CkksSecretContext.generate(CkksParams(4096, (60, 49), 40))
RNG = np.random.default_rng(7)
# The malformed-chunk tests mutate TenSEAL's own (unseeded, two-polynomial) serialization,
# which members still accept; uploads from encrypt() are seeded (tested below and in
# tests/vectors/test_ckks_vectors.py). TenSEAL puts one value per slot, so a 100-value
# vector's one chunk (50 slots, two values each) is TenSEAL's ciphertext of 50 values.
CHUNK = encrypt_chunk(SECRET._ctx, RNG.normal(0, 1, 50))
BLOB = wire.VectorFrame(
    length=100, fingerprint=PUBLIC.fingerprint(), chunks=(CHUNK,), kind=wire.KIND_SEAL
).to_bytes()
SEEDED = SECRET.encrypt(RNG.normal(0, 1, 100))
CODEC = seal_zstd()


def _as_seal(public: CkksPublicContext, frame: wire.VectorFrame, j: int) -> bytes:
    """Chunk ``j`` as SEAL serializes a ciphertext (an upload chunk's ``c1`` expanded)."""
    if frame.kind == wire.KIND_SEAL:
        return frame.chunks[j]
    slots = wire.slot_counts(frame.length, public.params)[j]
    coeffs = public._decode(frame.kind, frame.chunks[j], "t", slots)
    return fastsum.encode_chunk(coeffs, public._layout, CODEC, size=slots)


def _tenseal_sum(public: CkksPublicContext, blobs: list[bytes]) -> np.ndarray:
    """The reference: deserialize into TenSEAL, add_ chunk by chunk (the old member path)
    and serialize; the sum's coefficients."""
    raw = wire.parse_context(public.to_bytes(), magic=wire.PUBLIC_MAGIC, what="t").tenseal_bytes
    ctx = ts.context_from(raw)
    frames = [wire.parse_vector(b, public.params) for b in blobs]
    chunks = []
    for j in range(len(frames[0].chunks)):
        acc = ts.ckks_vector_from(ctx, _as_seal(public, frames[0], j))
        for frame in frames[1:]:
            acc.add_(ts.ckks_vector_from(ctx, _as_seal(public, frame, j)))
        chunk = bytes(acc.serialize())
        # encode_chunk with SEAL's zstd writes exactly TenSEAL's bytes for the same sum.
        slots = wire.slot_counts(frames[0].length, public.params)[j]
        coeffs = fastsum.decode_chunk(chunk, public._layout, CODEC, size=slots, where="t")
        assert fastsum.encode_chunk(coeffs, public._layout, CODEC, size=slots) == chunk
        chunks.append(chunk)
    summed = dataclasses.replace(frames[0], chunks=tuple(chunks), kind=wire.KIND_SEAL)
    return public.decode(summed.to_bytes()).coeffs


def _coeffs(public: CkksPublicContext, blob: bytes) -> np.ndarray:
    """A (sum) vector's coefficients, for comparing sums bit for bit."""
    return public.decode(blob).coeffs


def _as_seal_chunk(public: CkksPublicContext, blob: bytes) -> bytes:
    """The first chunk of ``blob`` as SEAL serializes a ciphertext (zstd)."""
    return _as_seal(public, wire.parse_vector(blob, public.params), 0)


# --- bit-identical to TenSEAL -----------------------------------------------------------------


@given(
    length=st.one_of(
        st.integers(1, 50), st.sampled_from([SLOTS, SLOTS + 1, 2 * SLOTS, 2 * SLOTS + 1])
    ),
    count=st.integers(1, 5),
    data=st.data(),
)
@settings(max_examples=20, deadline=None)
def test_fast_sum_equals_tenseal_sum(length: int, count: int, data: st.DataObject) -> None:
    values = st.floats(
        -DEFAULT_PARAMS.max_abs, DEFAULT_PARAMS.max_abs, allow_nan=False, allow_infinity=False
    )
    vectors = [data.draw(hnp.arrays(np.float64, length, elements=values)) for _ in range(count)]
    blobs = [SECRET.encrypt(v) for v in vectors]
    fast = PUBLIC.add(blobs)
    assert np.array_equal(_coeffs(PUBLIC, fast), _tenseal_sum(PUBLIC, blobs))
    # Parsed once (as a member does at acceptance), summed later from the arrays.
    acc = PUBLIC.accumulator()
    for blob in blobs:
        decoded = PUBLIC.decode(blob, length=length)
        acc.add_decoded(decoded.coeffs, decoded.length)
    assert acc.finish() == fast
    np.testing.assert_allclose(SECRET.decrypt(fast), np.sum(vectors, axis=0), atol=1e-4, rtol=0)


def test_upload_chunk_is_under_half_the_size_and_sums_with_tenseal_ones() -> None:
    upload = wire.parse_vector(SEEDED, DEFAULT_PARAMS)
    assert upload.kind == wire.KIND_UPLOAD
    assert len(upload.chunks[0]) == seeded.chunk_size(PUBLIC._layout) < 0.45 * len(CHUNK)
    # Uploads and TenSEAL's own ciphertexts sum together, byte for byte as TenSEAL adds them.
    assert np.array_equal(
        _coeffs(PUBLIC, PUBLIC.add([SEEDED, BLOB])), _tenseal_sum(PUBLIC, [SEEDED, BLOB])
    )
    assert PUBLIC.add([BLOB, SEEDED]) == PUBLIC.add([SEEDED, BLOB])


def test_seeds_are_fresh_per_ciphertext() -> None:
    frames = [wire.parse_vector(SECRET.encrypt(np.zeros(4 * SLOTS)), DEFAULT_PARAMS)]
    frames.append(wire.parse_vector(SECRET.encrypt(np.zeros(4 * SLOTS)), DEFAULT_PARAMS))
    seeds = {chunk[4 : 4 + seeded.SEED_BYTES] for frame in frames for chunk in frame.chunks}
    assert len(seeds) == 4


@pytest.mark.parametrize("count", [1, 2, 15, 16, 17, 33])
def test_fast_sum_equals_tenseal_across_lazy_reductions(count: int) -> None:
    blobs = [WIDE.encrypt(RNG.normal(0, 1, 300)) for _ in range(count)]
    public = WIDE.public()
    assert fastsum.lazy_adds(public._layout.primes[0]) == 15
    assert np.array_equal(_coeffs(public, public.add(blobs)), _tenseal_sum(public, blobs))
    assert public.add(blobs[::-1]) == public.add(blobs)  # modular addition commutes exactly


def test_lazy_adds_bound() -> None:
    assert fastsum.lazy_adds((1 << 60) - 1) == 15
    assert fastsum.lazy_adds(PUBLIC._layout.primes[0]) == 65535
    for prime in ((1 << 60) - 93, (1 << 61) - 1, 281474976694273):
        m = fastsum.lazy_adds(prime)
        assert (m + 1) * (prime - 1) <= fastsum.U64_MAX < (m + 2) * (prime - 1)


@pytest.mark.parametrize("prime", [(1 << 61) - 1, (1 << 60) - 93])
def test_add_chunks_worst_case_against_integers(prime: int) -> None:
    layout = dataclasses.replace(PUBLIC._layout, primes=(prime,), poly_modulus_degree=4)
    terms = [np.full((2, 1, 4), prime - 1 - i, dtype=np.uint64) for i in range(40)]
    expected = sum(prime - 1 - i for i in range(40)) % prime
    assert (fastsum.add_chunks(terms, layout) == expected).all()


# --- parsing other encodings SEAL accepts -----------------------------------------------------


def _raw(chunk: bytes) -> bytes:
    """The uncompressed SEAL ciphertext body inside a TenSEAL chunk."""
    proto = fastsum._Proto(memoryview(chunk), "t")
    proto.tag(0x0A, "sizes")
    proto.take(proto.varint("n"), "sizes")
    proto.tag(0x12, "ciphertext")
    seal = proto.take(proto.varint("n"), "ciphertext")
    out = np.empty(fastsum.PREFIX + 8 * PUBLIC._layout.coeff_count, dtype=np.uint8)
    assert CODEC.decompress_into(seal[16:], out) == out.size
    return out.tobytes()


def _rewrap(raw: bytes, *, compr: int = fastsum.COMPR_NONE, size: int = 50) -> bytes:
    body = zlib.compress(raw) if compr == fastsum.COMPR_ZLIB else raw
    header = fastsum.SEAL_HEADER.pack(fastsum.SEAL_MAGIC, 16, 4, 3, compr, 0, 16 + len(body))
    seal = header + body
    sizes = fastsum._varint(size)
    length = fastsum._varint(len(seal))
    return b"\x0a" + bytes([len(sizes)]) + sizes + b"\x12" + length + seal + b"\x19" + CHUNK[-8:]


def _as_blob(chunk: bytes) -> bytes:
    return dataclasses.replace(wire.parse_vector(BLOB, DEFAULT_PARAMS), chunks=(chunk,)).to_bytes()


@pytest.mark.parametrize("compr", [fastsum.COMPR_NONE, fastsum.COMPR_ZLIB])
def test_uncompressed_and_zlib_chunks_accepted_like_tenseal(compr: int) -> None:
    blob = _as_blob(_rewrap(_raw(CHUNK), compr=compr))
    PUBLIC.check(blob, length=100)
    assert PUBLIC.add([blob, BLOB]) == PUBLIC.add([BLOB, BLOB])


# --- rejection at acceptance, with the reason --------------------------------------------------


def _with_member(offset: int, fmt: str, value: object) -> bytes:
    raw = bytearray(_raw(CHUNK))
    struct.pack_into(fmt, raw, offset, value)
    return _as_blob(_rewrap(bytes(raw)))


def _other(params: CkksParams) -> bytes:
    """A chunk made under other parameters, as SEAL serializes it, framed under our
    fingerprint."""
    other = CkksSecretContext.generate(params)
    return _as_blob(_as_seal_chunk(other.public(), other.encrypt(np.ones(100))))


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (_other(CkksParams(4096, (48, 60), 30)), "ring dimension N=4096, expected 8192"),
        (_other(CkksParams(8192, (49, 60), 30)), "another prime chain"),
        (_other(CkksParams(8192, (48, 60), 31)), r"scale 2\*\*31, expected 2\*\*30"),
        (_with_member(0, "<Q", 12345), "another prime chain"),
        (_with_member(32, "<B", 0), "NTT form False"),
        (_with_member(33, "<Q", 3), "3 polynomials"),
        (_with_member(49, "<Q", 2), "2 primes in its modulus"),
        (_with_member(57, "<d", 2.0**31), r"scale 2\*\*31"),
        (_with_member(65, "<Q", 7), "correction factor 7"),
        (_with_member(fastsum.PREFIX, "<Q", 281474976694273), "not reduced modulo prime 0"),
        (_as_blob(_rewrap(_raw(CHUNK), size=49)), "it fills 49 slots"),
        (_as_blob(_rewrap(_raw(CHUNK)[:-8])), "131161 ciphertext bytes, expected 131169"),
        (_as_blob(_rewrap(_raw(CHUNK), compr=7)), "compression mode 7"),
        (_as_blob(CHUNK[:11] + b"\x09" + CHUNK[12:]), r"SEAL version 4.9, expected 4.3"),
        (_as_blob(CHUNK[:-20]), "truncated"),
        (_as_blob(CHUNK[:40] + bytes(20) + CHUNK[60:]), "zstd"),
        (_as_blob(CHUNK + b"\x00"), "1 trailing bytes"),
        (_as_blob(CHUNK[:7] + b"\x00" + CHUNK[8:]), "bad SEAL header"),
        (_as_blob(b"\x12" + CHUNK[1:]), r"field 1 \(sizes\)"),
    ],
)
def test_bad_chunk_rejected_at_acceptance_with_reason(blob: bytes, reason: str) -> None:
    with pytest.raises(BadInputError, match=reason) as info:
        PUBLIC.check(blob, length=100)
    assert "encrypted vector: chunk 0" in str(info.value)
    with pytest.raises(BadInputError, match=reason):
        PUBLIC.add([BLOB, blob])


def test_other_context_fingerprint_rejected() -> None:
    with pytest.raises(BadInputError, match="another CKKS context"):
        PUBLIC.check(CkksSecretContext.generate().encrypt(np.ones(100)), length=100)


@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
@settings(max_examples=60, deadline=None)
def test_accepted_mutation_also_loads_in_tenseal(position: int, byte: int) -> None:
    chunk = bytearray(CHUNK)
    chunk[position % len(chunk)] = byte
    blob = _as_blob(bytes(chunk))
    try:
        PUBLIC.check(blob, length=100)
    except BadInputError:
        return
    assert np.array_equal(
        _coeffs(PUBLIC, PUBLIC.add([blob, BLOB])), _tenseal_sum(PUBLIC, [blob, BLOB])
    )


# --- timing, run by hand -----------------------------------------------------------------------


def _measure(length: int = 1_000_000, uploads: int = 10) -> None:
    blobs = [SECRET.encrypt(RNG.normal(0, 0.05, length)) for _ in range(uploads)]
    t0 = time.perf_counter()
    before = _tenseal_sum(PUBLIC, blobs)
    t1 = time.perf_counter()
    for blob in blobs:
        PUBLIC.check(blob, length=length)
    t2 = time.perf_counter()
    after = PUBLIC.add(blobs)
    t3 = time.perf_counter()
    print(f"{uploads} x {length} values, {sum(map(len, blobs)) / 1e6:.1f} MB of uploads")
    print(f"TenSEAL deserialize + add_ + serialize: {t1 - t0:.2f} s")
    print(f"fast check of every upload:            {t2 - t1:.2f} s")
    print(f"fast add (parse, check, sum, encode):  {t3 - t2:.2f} s")
    print(f"coefficients identical: {np.array_equal(before, _coeffs(PUBLIC, after))}")


if __name__ == "__main__":
    _measure()
