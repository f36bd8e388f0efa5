"""Cohort's CKKS chunks: seeded uploads (``c1`` expanded from a 32-byte seed with ChaCha20)
and packed sums, both with each coefficient in ``ceil(bits / 8)`` bytes.

A fresh symmetric CKKS ciphertext is ``(c0, c1) = (-a*s + e + m, a)`` with ``a`` uniform, so
``c1`` can travel as the seed it was drawn from. SEAL draws it from Blake2xb, and expanding
those seeds is what a committee member spent most of its acceptance time on (one Blake2b
compression per 64 output bytes, ~30 ms per million values). A data owner therefore
*re-bases* SEAL's fresh ciphertext ``(c0', a')`` onto an ``a`` drawn from ChaCha20 under a
fresh seed::

    c0 = c0' + (a' - a) * s = -a*s + e + m        (mod each prime, NTT form)

SEAL's plaintext ``m`` and its fresh error ``e`` are unchanged and ``a'`` is discarded, so
what is published, ``(c0, seed)``, is an ordinary symmetric RLWE encryption whose uniform
polynomial comes from a PRG under a fresh key: the same construction as SEAL's seeded
ciphertexts (and as Kyber's matrix expansion), with another XOF. docs/ckks-parameters.md,
"Seeded uploads", gives the security argument.

The expansion, exactly (:func:`expand_c1`): the ChaCha20 keystream of RFC 8439 under key
``seed``, nonce 0 and initial block counter 0, read as little-endian u64 words; row ``j``
(prime ``q_j``) takes the next ``N`` words, a word ``w >= 2**64 - (2**64 mod q_j)`` is
rejected and replaced by the next unused word after all rows' first words (in row and index
order, rejecting again if need be), and every word is reduced mod ``q_j``: SEAL's
``sample_poly_uniform`` rule on another stream.

An upload chunk, little-endian::

    u32 slots | 32-byte seed | c0: for each prime q_j, N coefficients of ceil(bits(q_j) / 8)
    bytes each

(6 bytes per coefficient for the default 48-bit prime: 48 KiB per 8192 values, 1.5x the
float32 bytes). A committee's sum has no seed to send, so its chunk carries both
polynomials the same way::

    u32 slots | c0 | c1        (each: for each prime q_j, N coefficients of ceil(bits / 8) bytes)

which is smaller than SEAL's zstd of the same coefficients in 64-bit words, and costs a
member a copy instead of a compression.
"""

from __future__ import annotations

import functools
import secrets
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cohort.crypto.ckks_fastsum import POLYS, U64_MAX, Layout, sample_uniform
from cohort.errors import BadInputError

SEED_BYTES = 32
HEADER = struct.Struct("<I")  # slots
_CHACHA_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: u32 LE block counter 0 | 96-bit nonce 0


def coeff_bytes(layout: Layout) -> tuple[int, ...]:
    """Bytes per ``c0`` coefficient for each prime: ``ceil(bits(q_j) / 8)``."""
    return tuple(-(-prime.bit_length() // 8) for prime in layout.primes)


def chunk_size(layout: Layout) -> int:
    """The exact size of one upload chunk under ``layout``."""
    return HEADER.size + SEED_BYTES + layout.poly_modulus_degree * sum(coeff_bytes(layout))


def chacha20_words(seed: bytes, count: int) -> np.ndarray:
    """The first ``count`` little-endian u64 words of the ChaCha20 keystream under ``seed``."""
    words = np.empty(count, dtype="<u8")
    chacha20_into(seed, words)
    return words


def chacha20_into(seed: bytes, words: np.ndarray) -> None:
    """Fill the contiguous little-endian u64 array ``words`` with the first words of the
    ChaCha20 keystream under ``seed`` (no intermediate copy)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"chacha20_words: a seed is {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.ChaCha20(seed, _CHACHA_NONCE), mode=None).encryptor()
    target = memoryview(words.view(np.uint8).data)  # numpy's buffer, written in place
    stream.update_into(_zeros(words.nbytes), target)  # zeros XOR keystream


@functools.lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    """``size`` zero bytes, the plaintext whose encryption is the keystream (cached: a
    member expands thousands of seeds of the same length)."""
    return bytes(size)


def expand_c1(seed: bytes, layout: Layout) -> np.ndarray:
    """The ``c1`` of an upload chunk with ``seed``: ``(primes, N)`` uint64, reduced."""
    return sample_uniform(lambda count: chacha20_words(seed, count), layout)


def _mulmod_estimated(x: np.ndarray, y: np.ndarray, prime: int) -> np.ndarray:
    """``x * y mod prime`` when ``x < prime < 2**62`` and ``x * y / prime < 2**50``: the
    quotient is estimated in float64 (its error is a few ``2**-53`` relative, so it is off
    by at most one), the remainder computed in wrapping uint64 arithmetic (exact modulo
    2**64, and it lies in ``(-prime, 2 * prime)``, inside int64) and corrected."""
    q = np.uint64(prime)
    quotient = np.floor(x.astype(np.float64) * y.astype(np.float64) / float(prime))
    r = (x * y - quotient.astype(np.uint64) * q).view(np.int64)
    r += np.int64(prime) * (r < 0)
    r -= np.int64(prime) * (r >= prime)
    out: np.ndarray = r.view(np.uint64)
    return out


_LIMB_BITS = 12  # x * limb / prime < 2**12 for any prime: the float quotient stays exact


def mulmod(x: np.ndarray, y: np.ndarray, prime: int) -> np.ndarray:
    """``x * y mod prime`` for uint64 arrays of values below ``prime < 2**62``, exactly.

    One estimated-quotient step (:func:`_mulmod_estimated`) when ``prime < 2**50``; for
    larger primes ``y`` is taken in 12-bit limbs, most significant first (Horner: shift the
    partial result by 2**12 and add ``x * limb``, each a product with a small factor).
    """
    if prime < 1 << 50:
        return _mulmod_estimated(x, y, prime)
    if prime >= 1 << 62:
        raise ValueError(f"mulmod: prime {prime} has more than 62 bits")
    q = np.uint64(prime)
    shift = np.full_like(x, 1 << _LIMB_BITS)
    mask = np.uint64((1 << _LIMB_BITS) - 1)
    top = -(-prime.bit_length() // _LIMB_BITS) - 1
    out = np.zeros_like(x)
    for k in range(top, -1, -1):
        limb = (y >> np.uint64(k * _LIMB_BITS)) & mask
        out = _mulmod_estimated(out, shift, prime) + _mulmod_estimated(x, limb, prime)
        out -= q * (out >= q)
    return out


def _pack(poly: np.ndarray, layout: Layout) -> list[bytes]:
    """One polynomial ``(primes, N)``, each row's coefficients in its prime's width."""
    out = []
    for row, width in zip(poly, coeff_bytes(layout), strict=True):
        wide = np.ascontiguousarray(row, dtype="<u8").view(np.uint8).reshape(-1, 8)
        out.append(wide[:, :width].tobytes())
    return out


def _unpack(data: bytes, at: int, out: np.ndarray, layout: Layout, where: str) -> int:
    """Read one packed polynomial at ``at`` into ``out`` ``(primes, N)``; the next offset.
    BadInputError if a coefficient is not reduced modulo its prime.

    Each row is copied once into a buffer with 8 spare bytes, then read as little-endian
    u64 words through a window that advances by the coefficient width (an unaligned,
    strided view) and masked to that width: one copy and one pass, whatever the width."""
    n = layout.poly_modulus_degree
    for j, (prime, width) in enumerate(zip(layout.primes, coeff_bytes(layout), strict=True)):
        size = n * width
        buf = np.zeros(size + 8, dtype=np.uint8)
        buf[:size] = np.frombuffer(data, dtype=np.uint8, count=size, offset=at)
        window = np.ndarray((n,), dtype="<u8", buffer=buf, strides=(width,))
        row = np.bitwise_and(window, np.uint64((1 << (8 * width)) - 1), out=out[j])
        if int(row.max()) >= prime:
            raise BadInputError(f"{where}: a coefficient is not reduced modulo prime {j}")
        at += size
    return at


def _header(data: bytes, expected: int, size: int, where: str, what: str) -> None:
    if len(data) != expected:
        raise BadInputError(f"{where} holds {len(data)} bytes, {what} is {expected}")
    (slots,) = HEADER.unpack_from(data)
    if slots != size:
        raise BadInputError(f"{where} fills {slots} slots, expected {size}")


def encode_chunk(slots: int, seed: bytes, c0: np.ndarray, layout: Layout) -> bytes:
    """An upload chunk of ``slots`` filled slots from reduced ``c0`` ``(primes, N)``."""
    return b"".join((HEADER.pack(slots), seed, *_pack(c0, layout)))


def decode_chunk(data: bytes, layout: Layout, *, size: int, where: str) -> np.ndarray:
    """Parse and check one upload chunk of ``size`` slots; its ``(2, primes, N)`` uint64
    coefficients (``c1`` expanded from the seed). BadInputError naming ``where`` and the
    fault: the length, the slot count, or a coefficient not reduced modulo its prime."""
    _header(data, chunk_size(layout), size, where, "an upload chunk")
    seed = bytes(data[HEADER.size : HEADER.size + SEED_BYTES])
    out = np.empty((POLYS, len(layout.primes), layout.poly_modulus_degree), dtype=np.uint64)
    _unpack(data, HEADER.size + SEED_BYTES, out[0], layout, where)
    out[1] = expand_c1(seed, layout)
    return out


def decode_chunks(
    chunks: Sequence[bytes] | np.ndarray, layout: Layout, *, sizes: Sequence[int], what: str
) -> np.ndarray:
    """:func:`decode_chunk` of every chunk of one upload at once: ``(chunks, 2, primes, N)``
    uint64, bit for bit what decoding them one by one gives.

    ``chunks`` is the chunks' bytes, or (no copy) a ``(chunks, chunk_size)`` uint8 array of
    them (:func:`cohort.crypto.ckks_wire.uniform_chunks`). A member decodes every upload it
    takes, and an upload at 1M values has 123 chunks, so this works on the whole upload per
    step (one unpack and one reduction per prime over all chunks, each chunk's ChaCha20
    stream written straight into one array) instead of paying Python's per-call overhead
    and a copy for each chunk. The rare chunk whose stream has a rejected word (a word has
    probability ``(2**64 mod q) / 2**64 < q / 2**64`` of it) is expanded again by
    :func:`expand_c1`, which applies the rejection rule. BadInputError names ``what``, the
    first faulty chunk and the fault, as :func:`decode_chunk` does (every chunk's length
    and slot count are checked before any coefficient)."""
    expected = chunk_size(layout)
    if isinstance(chunks, np.ndarray):
        raw = chunks
        if raw.ndim != 2 or raw.shape[1] != expected or raw.dtype != np.uint8:
            raise ValueError(f"decode_chunks: chunks of shape {raw.shape}, not (n, {expected})")
    else:
        for i, data in enumerate(chunks):
            if len(data) != expected:
                raise BadInputError(
                    f"{what}: chunk {i} holds {len(data)} bytes, an upload chunk is {expected}"
                )
        raw = np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(len(chunks), expected)
    count = raw.shape[0]
    if count != len(sizes):
        raise ValueError(f"decode_chunks: {count} chunks, {len(sizes)} slot counts")
    slots = np.ascontiguousarray(raw[:, : HEADER.size]).view("<u4")[:, 0]
    wrong = np.flatnonzero(slots != np.asarray(sizes, dtype=np.uint32))
    if wrong.size:
        i = int(wrong[0])
        raise BadInputError(f"{what}: chunk {i} fills {int(slots[i])} slots, expected {sizes[i]}")
    primes, n = len(layout.primes), layout.poly_modulus_degree
    out = np.empty((count, POLYS, primes, n), dtype=np.uint64)
    at = HEADER.size + SEED_BYTES
    for j, (prime, width) in enumerate(zip(layout.primes, coeff_bytes(layout), strict=True)):
        size = n * width
        buf = np.zeros((count, size + 8), dtype=np.uint8)
        buf[:, :size] = raw[:, at : at + size]
        window = np.ndarray((count, n), dtype="<u8", buffer=buf, strides=(size + 8, width))
        row = np.bitwise_and(window, np.uint64((1 << (8 * width)) - 1), out=out[:, 0, j])
        high = row.max(axis=1)
        if int(high.max()) >= prime:
            first = int(np.flatnonzero(high >= np.uint64(prime))[0])
            raise BadInputError(
                f"{what}: chunk {first}: a coefficient is not reduced modulo prime {j}"
            )
        at += size
    need = primes * n
    words = np.empty((count, need), dtype="<u8")
    seeds = [raw[i, HEADER.size : HEADER.size + SEED_BYTES].tobytes() for i in range(count)]
    for i, seed in enumerate(seeds):
        chacha20_into(seed, words[i])
    first_words = words.reshape(count, primes, n)
    redo = np.zeros(count, dtype=bool)
    for j, prime in enumerate(layout.primes):
        limit = np.uint64(U64_MAX - U64_MAX % prime - 1)
        redo |= (first_words[:, j, :] >= limit).any(axis=1)
        np.remainder(first_words[:, j, :], np.uint64(prime), out=out[:, 1, j, :])
    for again in np.flatnonzero(redo).tolist():
        out[again, 1] = expand_c1(seeds[again], layout)
    return out


def sum_chunk_size(layout: Layout) -> int:
    """The exact size of one sum chunk under ``layout``."""
    return HEADER.size + POLYS * layout.poly_modulus_degree * sum(coeff_bytes(layout))


def encode_sum_chunk(slots: int, coeffs: np.ndarray, layout: Layout) -> bytes:
    """A sum chunk of ``slots`` filled slots from reduced ``coeffs`` ``(2, primes, N)``."""
    return b"".join((HEADER.pack(slots), *_pack(coeffs[0], layout), *_pack(coeffs[1], layout)))


def _pieces(width: int) -> list[tuple[int, np.dtype[Any]]]:
    """A ``width``-byte little-endian field as whole-word pieces: (byte offset, dtype)."""
    out: list[tuple[int, np.dtype[Any]]] = []
    at = 0
    for size in (8, 4, 2, 1):
        if width - at >= size:
            out.append((at, np.dtype(f"<u{size}")))
            at += size
    return out


def encode_sum_chunks(sizes: Sequence[int], coeffs: np.ndarray, layout: Layout) -> bytes:
    """Every sum chunk of one vector, each behind its u32 big-endian length prefix (the
    chunk part of an EncryptedVector): the concatenation of ``framing.prefixed(
    encode_sum_chunk(size, coeffs[i]))``, built in one array instead of chunk by chunk.

    ``coeffs`` is ``(chunks, 2, primes, N)``, reduced. Each prime's coefficients are
    written as a packed record of whole-word pieces (6 bytes: a u32 and a u16), which numpy
    fills one truncating cast per piece over the whole vector."""
    count = coeffs.shape[0]
    if count != len(sizes):
        raise ValueError(f"encode_sum_chunks: {count} chunks, {len(sizes)} slot counts")
    chunk = sum_chunk_size(layout)
    out = np.empty((count, 4 + chunk), dtype=np.uint8)
    out[:, :4] = np.frombuffer(chunk.to_bytes(4, "big"), dtype=np.uint8)
    out[:, 4 : 4 + HEADER.size] = (
        np.asarray(sizes, dtype="<u4").view(np.uint8).reshape(count, HEADER.size)
    )
    at = 4 + HEADER.size
    n = layout.poly_modulus_degree
    for poly in range(POLYS):
        for j, width in enumerate(coeff_bytes(layout)):
            pieces = _pieces(width)
            record = np.dtype(
                {
                    "names": [f"p{k}" for k in range(len(pieces))],
                    "formats": [dtype for _, dtype in pieces],
                    "offsets": [offset for offset, _ in pieces],
                    "itemsize": width,
                }
            )
            target = out[:, at : at + n * width].view(record)
            row = coeffs[:, poly, j, :]
            for k, (offset, dtype) in enumerate(pieces):
                shifted = row >> np.uint64(8 * offset) if offset else row
                target[f"p{k}"] = shifted.astype(dtype, casting="unsafe")  # low bytes
            at += n * width
    return out.tobytes()


def decode_sum_chunk(data: bytes, layout: Layout, *, size: int, where: str) -> np.ndarray:
    """Parse and check one sum chunk of ``size`` slots; its ``(2, primes, N)`` uint64
    coefficients. BadInputError naming ``where`` and the fault, as :func:`decode_chunk`."""
    _header(data, sum_chunk_size(layout), size, where, "a sum chunk")
    out = np.empty((POLYS, len(layout.primes), layout.poly_modulus_degree), dtype=np.uint64)
    at = _unpack(data, HEADER.size, out[0], layout, where)
    _unpack(data, at, out[1], layout, where)
    return out


class Rebaser:
    """A data owner's re-basing of SEAL's fresh symmetric ciphertexts onto ChaCha20 seeds.

    Holds the secret key's NTT form for the data level's primes (secret: never logged or
    written anywhere); every seed comes fresh from the system CSPRNG. Thread-safe.
    """

    __slots__ = ("_layout", "_secret")

    def __init__(self, secret_ntt: np.ndarray, layout: Layout) -> None:
        shape = (len(layout.primes), layout.poly_modulus_degree)
        if secret_ntt.shape != shape:
            raise ValueError(f"Rebaser: secret key of shape {secret_ntt.shape}, expected {shape}")
        self._secret = secret_ntt
        self._layout = layout

    def __repr__(self) -> str:
        return "Rebaser(<secret key>)"

    def rebase(self, coeffs: np.ndarray, slots: int) -> bytes:
        """The upload chunk of SEAL's fresh ciphertext ``coeffs`` (``(2, primes, N)``:
        ``c0'``, ``a'``, reduced, NTT form) under a fresh seed."""
        seed = secrets.token_bytes(SEED_BYTES)
        a = expand_c1(seed, self._layout)
        c0 = np.empty_like(coeffs[0])
        for j, prime in enumerate(self._layout.primes):
            q = np.uint64(prime)
            diff = coeffs[1, j] + (q - a[j])  # a' - a + q < 2q: no overflow below 2**63
            np.remainder(diff, q, out=diff)
            shifted = coeffs[0, j] + mulmod(diff, self._secret[j], prime)
            c0[j] = np.remainder(shifted, q)
        return encode_chunk(slots, seed, c0, self._layout)
