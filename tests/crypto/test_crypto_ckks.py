"""CKKS: encrypted sums against a plaintext oracle, rejection of bad uploads, key hygiene."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto import ckks_wire as wire
from cohort.crypto.ckks import (
    DEFAULT_PARAMS,
    HE_STANDARD_128_MAX_BITS,
    MAX_SUMMANDS,
    CkksParams,
    CkksPublicContext,
    CkksSecretContext,
)
from cohort.crypto.ckks_tenseal import SlotDecryptor, load_chunk, pack_complex, unpack_complex
from cohort.errors import BadInputError, ConfigError

SECRET = CkksSecretContext.generate()
PUBLIC = CkksPublicContext.from_bytes(SECRET.public().to_bytes())
OTHER = CkksSecretContext.generate()  # same parameters, another key
SMALL = CkksSecretContext.generate(
    CkksParams(poly_modulus_degree=4096, coeff_mod_bit_sizes=(49, 60), scale_bits=30)
)
SLOTS = DEFAULT_PARAMS.slots
PER_CHUNK = DEFAULT_PARAMS.values_per_ciphertext  # two values per slot
MAX_ABS = DEFAULT_PARAMS.max_abs
GRID = DEFAULT_PARAMS.release_grid  # decrypt rounds to multiples of this (2**-16)
NOISE = 2e-6  # per summand; measured max CKKS error of a fresh upload is ~1e-6 at 1M values
TOL = GRID / 2 + NOISE

RNG = np.random.default_rng(20240601)
X = RNG.normal(0, 0.05, PER_CHUNK + 101)
BLOB = SECRET.encrypt(X)


# --- parameters ---------------------------------------------------------------------------


def test_default_params() -> None:
    DEFAULT_PARAMS.validate()
    assert SLOTS == 4096
    assert PER_CHUNK == 8192
    assert MAX_ABS == 32.0
    assert sum(DEFAULT_PARAMS.coeff_mod_bit_sizes) <= HE_STANDARD_128_MAX_BITS[8192]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (CkksParams(5000, (48, 60), 30), "poly_modulus_degree"),
        (CkksParams(8192, (48,), 30), "coeff_mod_bit_sizes"),
        (CkksParams(8192, (48, 40, 60), 30), "coeff_mod_bit_sizes"),
        (CkksParams(8192, (48, 61), 30), r"coeff_mod_bit_sizes\[1\]"),
        (CkksParams(4096, (50, 60), 30), "128-bit security"),
        (CkksParams(2048, (27, 28), 20), "128-bit security"),
        (CkksParams(8192, (48, 60), 19), "scale_bits"),
        (CkksParams(8192, (48, 60), 37), "headroom"),
        (CkksParams(8192, [48, 60], 30), "tuple"),  # type: ignore[arg-type]
    ],
)
def test_bad_params_rejected(params: CkksParams, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        params.validate()
    with pytest.raises(ConfigError):
        CkksSecretContext.generate(params)


@pytest.mark.parametrize("n", [4096, 8192])
def test_security_limit_agrees_with_seal(n: int) -> None:
    """SEAL's own 128-bit check accepts our limit and rejects one bit more."""
    limit = HE_STANDARD_128_MAX_BITS[n]
    full, rest = divmod(limit, 60)
    bits = [60] * full + [rest]  # the limit, split into primes of at most 60 bits
    ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits)
    bits[-1] += 1
    with pytest.raises(ValueError, match="not set correctly"):
        ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits)


# --- encrypt / add / decrypt against the plaintext oracle --------------------------------------


def test_round_trip() -> None:
    np.testing.assert_allclose(SECRET.decrypt(BLOB), X, atol=TOL, rtol=0)
    PUBLIC.check(BLOB, length=X.size)


@given(
    length=st.one_of(
        st.integers(1, 10),
        st.sampled_from([SLOTS + 1, PER_CHUNK - 1, PER_CHUNK, PER_CHUNK + 1, 2 * PER_CHUNK + 7]),
    ),
    count=st.integers(1, 4),
    data=st.data(),
)
@settings(max_examples=25, deadline=None)
def test_encrypted_sum_matches_plaintext(length: int, count: int, data: st.DataObject) -> None:
    values = st.floats(-MAX_ABS, MAX_ABS, allow_nan=False, allow_infinity=False)
    vectors = [data.draw(hnp.arrays(np.float64, length, elements=values)) for _ in range(count)]
    blobs = [SECRET.encrypt(v) for v in vectors]
    for blob in blobs:
        PUBLIC.check(blob, length=length)
    total = PUBLIC.add(blobs)
    PUBLIC.check(total, length=length)
    np.testing.assert_allclose(
        SECRET.decrypt(total), np.sum(vectors, axis=0), atol=GRID / 2 + NOISE * count, rtol=0
    )


def test_weighted_mean_of_ten_updates_at_one_million() -> None:
    """The sizing requirement: 10 weighted updates, 1M values, error and upload size."""
    length = 1_000_000
    rng = np.random.default_rng(7)
    counts = rng.integers(30, 121, size=10)
    weights = counts / counts.sum()
    updates = [rng.normal(0, 0.05, length) for _ in counts]
    blobs = [SECRET.encrypt(w * u) for w, u in zip(weights, updates, strict=True)]
    assert all(len(b) <= 8 * 4 * length for b in blobs)  # <= 8x the float32 bytes
    total = PUBLIC.add(blobs)
    mean = np.average(np.stack(updates), axis=0, weights=counts)
    err = float(np.max(np.abs(SECRET.decrypt(total) - mean)))
    assert err < 1e-4
    assert err < 2e-5  # noise ~4e-6 + rounding <= 2**-17: flags a regression early


@pytest.mark.parametrize("pattern", ["mixed", "constant", "alternating", "random_signs"])
def test_headroom_for_max_summands(pattern: str) -> None:
    """MAX_SUMMANDS uploads at +-max_abs sum without wrap-around, also when both values of
    every slot are at the bound (slot magnitude sqrt(2) * max_abs)."""
    v = {
        "mixed": np.array([MAX_ABS, -MAX_ABS, 0.5, MAX_ABS]),
        "constant": np.full(PER_CHUNK, MAX_ABS),
        "alternating": np.resize([MAX_ABS, MAX_ABS, -MAX_ABS, -MAX_ABS], PER_CHUNK),
        "random_signs": MAX_ABS * np.random.default_rng(3).choice([-1.0, 1.0], PER_CHUNK),
    }[pattern]
    blob = SECRET.encrypt(v)
    total = PUBLIC.add([blob] * MAX_SUMMANDS)
    np.testing.assert_allclose(SECRET.decrypt(total), v * MAX_SUMMANDS, atol=1e-3, rtol=0)


@given(hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6)))
def test_complex_packing_round_trips(values: np.ndarray) -> None:
    slots = pack_complex(values)
    assert slots.size == -(-values.size // 2)
    np.testing.assert_array_equal(slots.real, values[0::2])
    np.testing.assert_array_equal(unpack_complex(slots, values.size), values)


def test_two_values_per_slot_on_the_wire() -> None:
    """Value 2j is slot j's real part, value 2j + 1 its imaginary part; a chunk holds N
    values and its CKKSVector counts ceil(values / 2) slots."""
    v = np.arange(1, PER_CHUNK + 4, dtype=np.float64) / 512
    frame = wire.parse_vector(SECRET.encrypt(v), DEFAULT_PARAMS)
    assert len(frame.chunks) == 2
    assert wire.slot_counts(v.size, DEFAULT_PARAMS) == [SLOTS, 2]
    assert frame.kind == wire.KIND_UPLOAD
    summed = PUBLIC.add([SECRET.encrypt(v)])
    assert wire.parse_vector(summed, DEFAULT_PARAMS).kind == wire.KIND_SUM
    coeffs = PUBLIC.decode(summed).coeffs[1]
    chunk = fastsum.encode_chunk(coeffs, PUBLIC._layout, None, size=2)  # as SEAL reads it
    vec = load_chunk(SECRET._ctx, DEFAULT_PARAMS, chunk, where="chunk 1", size=2)
    slots = SlotDecryptor(SECRET._ctx).decrypt(vec)[:3]
    np.testing.assert_allclose(slots.real, [v[-3], v[-1], 0.0], atol=1e-5)
    np.testing.assert_allclose(slots.imag, [v[-2], 0.0, 0.0], atol=1e-5)


def test_add_is_deterministic() -> None:
    blobs = [SECRET.encrypt(RNG.normal(0, 1, 300)) for _ in range(3)]
    first = PUBLIC.add(blobs)
    assert PUBLIC.add(blobs) == first
    assert SECRET.public().add(blobs) == first  # another member holding the same context
    np.testing.assert_allclose(
        SECRET.decrypt(PUBLIC.add(blobs[::-1])), SECRET.decrypt(first), atol=GRID, rtol=0
    )


def test_decrypted_values_lie_on_the_release_grid() -> None:
    out = SECRET.decrypt(BLOB)
    assert GRID == 2.0**-16
    np.testing.assert_array_equal(out / GRID, np.round(out / GRID))


def test_encryption_is_randomized() -> None:
    assert SECRET.encrypt(X) != BLOB


def test_integer_input_and_exact_bound_accepted() -> None:
    np.testing.assert_allclose(SECRET.decrypt(SECRET.encrypt(np.arange(5))), np.arange(5), atol=TOL)
    SECRET.encrypt(np.array([MAX_ABS, -MAX_ABS], dtype=np.float32))


# --- encrypt validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.array([0.0, 1.0, np.nan]), "index 2 is NaN"),
        (np.array([np.inf, 0.0]), "index 0 is infinite"),
        (np.array([0.0, -np.inf]), "index 1 is infinite"),
        (np.array([0.0, 1.0, MAX_ABS * 1.01, 1e9]), "index 2 exceeds max_abs 32"),
        (np.zeros((2, 3)), r"1-D vector, got shape \(2, 3\)"),
        (np.zeros(0), "empty"),
        (np.array([1 + 2j]), "real numbers"),
        (np.array(["a"]), "real numbers"),
        (np.array([True]), "real numbers"),
    ],
)
def test_encrypt_rejects(vector: np.ndarray, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        SECRET.encrypt(vector)


def test_encrypt_error_does_not_leak_values() -> None:
    secret_value = 1234.5678
    with pytest.raises(BadInputError) as info:
        SECRET.encrypt(np.array([0.0, secret_value]))
    assert "1234" not in str(info.value)


# --- check / add rejections -------------------------------------------------------------------


def test_wrong_length_rejected() -> None:
    with pytest.raises(BadInputError, match=f"holds {X.size} values, expected {X.size + 1}"):
        PUBLIC.check(BLOB, length=X.size + 1)


def test_other_context_rejected() -> None:
    with pytest.raises(BadInputError, match="another CKKS context"):
        PUBLIC.check(OTHER.encrypt(X), length=X.size)
    with pytest.raises(BadInputError, match="another CKKS context"):
        SECRET.decrypt(OTHER.encrypt(X))
    with pytest.raises(BadInputError, match="another CKKS context"):
        PUBLIC.add([BLOB, OTHER.encrypt(X)])


def _reframe(blob: bytes, params: CkksParams, **changes: object) -> bytes:
    frame = wire.parse_vector(blob, params)
    return dataclasses.replace(frame, **changes).to_bytes()  # type: ignore[arg-type]


def test_forged_fingerprint_with_foreign_chunks_rejected() -> None:
    """Chunks from another parameter set under our fingerprint do not deserialize."""
    foreign = SMALL.encrypt(np.ones(10))
    frame = wire.parse_vector(foreign, SMALL.params)
    forged = wire.VectorFrame(
        length=10, fingerprint=PUBLIC.fingerprint(), chunks=frame.chunks, kind=frame.kind
    )
    with pytest.raises(BadInputError, match="chunk 0"):
        PUBLIC.check(forged.to_bytes(), length=10)


def test_chunk_of_wrong_size_rejected() -> None:
    short = wire.parse_vector(SECRET.encrypt(np.ones(100)), DEFAULT_PARAMS).chunks[0]
    frame = wire.parse_vector(BLOB, DEFAULT_PARAMS)
    swapped = dataclasses.replace(frame, chunks=(short, frame.chunks[1])).to_bytes()
    with pytest.raises(BadInputError, match="chunk 0 fills 50 slots, expected 4096"):
        PUBLIC.check(swapped, length=X.size)
    with pytest.raises(BadInputError, match="chunk 0"):
        PUBLIC.add([BLOB, swapped])


def test_garbage_chunk_rejected() -> None:
    frame = wire.parse_vector(BLOB, DEFAULT_PARAMS)
    bad = dataclasses.replace(frame, chunks=(b"\x00" * 100, frame.chunks[1])).to_bytes()
    with pytest.raises(BadInputError, match="chunk 0 holds 100 bytes"):
        PUBLIC.check(bad, length=X.size)
    as_seal = dataclasses.replace(frame, kind=wire.KIND_SEAL).to_bytes()  # the wrong kind
    with pytest.raises(BadInputError, match="chunk 0 does not deserialize"):
        PUBLIC.check(as_seal, length=X.size)
    as_sum = dataclasses.replace(frame, kind=wire.KIND_SUM).to_bytes()
    with pytest.raises(BadInputError, match="chunk 0 holds 49188 bytes, a sum chunk is 98308"):
        PUBLIC.check(as_sum, length=X.size)


def test_framing_errors_rejected() -> None:
    cases = {
        "truncated": BLOB[:-1],
        "trailing": BLOB + b"\x00",
        "bad magic": b"XXXX" + BLOB[4:],
        "version": BLOB[:4] + b"\x07" + BLOB[5:],
        "unknown kind 9": BLOB[:5] + b"\x09" + BLOB[6:],
        "chunks, expected 2": BLOB[:14] + struct.pack(">I", 3) + BLOB[18:],
        "holds no values": BLOB[:6] + struct.pack(">Q", 0) + BLOB[14:],
    }
    for message, blob in cases.items():
        with pytest.raises(BadInputError, match=message):
            PUBLIC.check(blob, length=X.size if message != "holds no values" else 0)


def test_add_rejects_bad_batches() -> None:
    with pytest.raises(BadInputError, match="non-empty"):
        PUBLIC.add([])
    with pytest.raises(BadInputError, match=f"more than the {MAX_SUMMANDS}"):
        PUBLIC.add([BLOB] * (MAX_SUMMANDS + 1))
    with pytest.raises(BadInputError, match="encrypted vector 1: holds 3 values"):
        PUBLIC.add([BLOB, SECRET.encrypt(np.ones(3))])


@given(data=st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_random_bytes_only_bad_input(data: bytes) -> None:
    for call in (
        lambda: PUBLIC.check(data, length=3),
        lambda: PUBLIC.add([data]),
        lambda: SECRET.decrypt(data),
        lambda: CkksPublicContext.from_bytes(data),
        lambda: CkksSecretContext.from_bytes(data),
    ):
        with pytest.raises(BadInputError):
            call()


@given(position=st.integers(0, 10_000), byte=st.integers(0, 255))
@settings(max_examples=60, deadline=None)
def test_mutated_chunk_only_bad_input_or_accepted(position: int, byte: int) -> None:
    small = SECRET.encrypt(np.ones(5))
    frame = wire.parse_vector(small, DEFAULT_PARAMS)
    chunk = bytearray(frame.chunks[0])
    chunk[position % len(chunk)] = byte
    mutated = dataclasses.replace(frame, chunks=(bytes(chunk),)).to_bytes()
    try:
        PUBLIC.check(mutated, length=5)
    except BadInputError:
        return
    PUBLIC.add([mutated, small])  # accepted: it must also add cleanly


# --- contexts ----------------------------------------------------------------------------------


def test_public_context_holds_no_keys_and_cannot_decrypt() -> None:
    data = PUBLIC.to_bytes()
    assert len(data) < 1024  # relin keys alone are ~250 KB, Galois keys ~6 MB at N=8192
    frame = wire.parse_context(data, magic=wire.PUBLIC_MAGIC, what="test")
    ctx = ts.context_from(frame.tenseal_bytes)
    assert not ctx.is_private()
    assert not ctx.has_secret_key()
    assert not ctx.has_galois_keys()
    assert not ctx.has_relin_keys()
    coeffs = PUBLIC.decode(BLOB).coeffs[0]
    chunk = fastsum.encode_chunk(coeffs, PUBLIC._layout, None, size=SLOTS)
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(ctx, chunk).decrypt()
    assert not hasattr(PUBLIC, "decrypt")


def test_public_context_round_trip_and_fingerprint() -> None:
    assert PUBLIC.to_bytes() == SECRET.public().to_bytes()
    assert PUBLIC.fingerprint() == SECRET.public().fingerprint()
    assert PUBLIC.params == DEFAULT_PARAMS
    assert OTHER.public().fingerprint() != PUBLIC.fingerprint()
    assert len(PUBLIC.fingerprint()) == 32


def _public_frame_with(tenseal_bytes: bytes) -> bytes:
    frame = wire.parse_context(PUBLIC.to_bytes(), magic=wire.PUBLIC_MAGIC, what="test")
    return dataclasses.replace(frame, tenseal_bytes=tenseal_bytes).to_bytes()


def _fresh_tenseal_context() -> ts.Context:
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        8192,
        coeff_mod_bit_sizes=[48, 60],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.global_scale = 2.0**30
    return ctx


def test_public_context_rejects_keys() -> None:
    with pytest.raises(BadInputError, match="holds a secret key"):
        CkksPublicContext.from_bytes(SECRET.to_bytes())
    ctx = _fresh_tenseal_context()
    with_secret = ctx.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(BadInputError, match="holds a secret key"):
        CkksPublicContext.from_bytes(_public_frame_with(with_secret))
    with_relin = ctx.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=True
    )
    with pytest.raises(BadInputError, match="relinearization"):
        CkksPublicContext.from_bytes(_public_frame_with(with_relin))


def test_public_context_rejects_mismatched_parameters() -> None:
    small = wire.parse_context(SMALL.public().to_bytes(), magic=wire.PUBLIC_MAGIC, what="t")
    with pytest.raises(BadInputError, match="does not match its declared parameters"):
        CkksPublicContext.from_bytes(_public_frame_with(small.tenseal_bytes))


def test_secret_context_round_trip() -> None:
    data = SECRET.to_bytes()
    loaded = CkksSecretContext.from_bytes(data)
    assert loaded.public().fingerprint() == SECRET.public().fingerprint()
    assert loaded.params == SECRET.params
    np.testing.assert_allclose(loaded.decrypt(BLOB), X, atol=TOL, rtol=0)
    np.testing.assert_allclose(SECRET.decrypt(loaded.encrypt(X)), X, atol=TOL, rtol=0)
    assert CkksSecretContext.from_bytes(loaded.to_bytes()).public().to_bytes() == PUBLIC.to_bytes()


def test_secret_context_rejects_public_or_damaged_bytes() -> None:
    with pytest.raises(BadInputError, match="bad magic"):
        CkksSecretContext.from_bytes(PUBLIC.to_bytes())
    frame = wire.parse_context(PUBLIC.to_bytes(), magic=wire.PUBLIC_MAGIC, what="t")
    keyless = dataclasses.replace(frame, magic=wire.SECRET_MAGIC).to_bytes()
    with pytest.raises(BadInputError, match="holds no secret key"):
        CkksSecretContext.from_bytes(keyless)
    with pytest.raises(BadInputError, match="truncated"):
        CkksSecretContext.from_bytes(SECRET.to_bytes()[:-10])


def test_reprs_show_no_key_material() -> None:
    key_bytes = SECRET.to_bytes()
    for text in (repr(SECRET), repr(PUBLIC)):
        assert PUBLIC.fingerprint()[:8].hex() in text
        assert key_bytes[-64:].hex()[:16] not in text
