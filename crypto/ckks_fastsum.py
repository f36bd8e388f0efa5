"""Homomorphic addition of CKKS ciphertexts on SEAL's serialized form, with numpy.

Run by committee members (through :class:`cohort.crypto.ckks.CkksPublicContext`): each
serialized chunk (a TenSEAL CKKSVector holding one SEAL ciphertext) is parsed once into its
raw RNS coefficients, checked against the context's :class:`Layout`, and the coefficient
arrays are added modulo each prime. The sum is written back exactly as TenSEAL would
serialize ``a.add_(b)``: same bytes. No TenSEAL or SEAL object is built; the zstd codec SEAL
itself uses is passed in (:class:`Codec`). Format and overflow argument:
docs/ckks-parameters.md, "Fast sum".
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cohort.errors import BadInputError

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
# parms_id (4 x u64), is_ntt_form (u8), polynomial count, N, prime count (u64), scale (double),
# correction factor (u64): SEAL 4.x Ciphertext::save_members before its coefficient DynArray.
CT_MEMBERS = struct.Struct("<4QBQQQdQ")
COUNT = struct.Struct("<Q")
PREFIX = CT_MEMBERS.size + SEAL_HEADER.size + COUNT.size  # 97 bytes before the coefficients
PAD = -PREFIX % 8  # decompress at this offset so the coefficients land 8-byte aligned
U64_MAX = (1 << 64) - 1
POLYS = 2  # a fresh ciphertext: c0, c1
# A seeded ciphertext (SEAL's Serializable from encrypt_symmetric) stores c0 only, then a
# UniformRandomGeneratorInfo: SEAL header (16 bytes) | u8 PRNG type | 64-byte seed.
SEED_BYTES = 64
SEED_INFO_SIZE = SEAL_HEADER.size + 1 + SEED_BYTES
PRNG_BLAKE2XB = 1  # SEAL's prng_type::blake2xb, its default factory
PRNG_BLOCK_BYTES = 4096  # SEAL's UniformRandomGenerator buffer: one blake2xb call each


def lazy_adds(prime: int) -> int:
    """How many values below ``prime`` may be added in uint64 to a reduced accumulator
    (itself below ``prime``) before a remainder is due: ``(m + 1) * (prime - 1) <= 2**64 - 1``.
    At least 15 for any prime below 2**60 (SEAL's limit), 65535 for the default 48-bit one."""
    return U64_MAX // (prime - 1) - 1


class Codec(Protocol):
    """zstd as SEAL links it: compress like ``ZSTD_compress2`` with a default context."""

    def compress(self, data: bytes) -> bytes: ...

    def decompress_into(self, data: memoryview, out: np.ndarray) -> int:
        """Decompress one zstd frame into ``out`` (uint8); bytes written, or -1 on error."""
        ...

    def content_size(self, data: memoryview) -> int:
        """The decompressed size a zstd frame header declares; -1 if absent or invalid."""
        ...

    def prng_stream(self, seed: bytes, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` of SEAL's Blake2xb PRNG stream keyed by ``seed`` (uint8)."""
        ...


@dataclass(frozen=True)
class Layout:
    """What a fresh data-level ciphertext under one context looks like. Built from the
    context by :func:`cohort.crypto.ckks_tenseal.seal_layout`."""

    poly_modulus_degree: int
    primes: tuple[int, ...]  # the data level's RNS primes
    parms_id: tuple[int, int, int, int]  # SEAL's hash of (N, primes): names the prime chain
    scale: float
    version: tuple[int, int]  # SEAL (major, minor) as written in headers

    @property
    def coeff_count(self) -> int:
        return POLYS * len(self.primes) * self.poly_modulus_degree

    @property
    def raw_size(self) -> int:
        """Uncompressed SEAL ciphertext body (after its outer 16-byte header)."""
        return PREFIX + 8 * self.coeff_count


class _Proto:
    """The three fields of TenSEAL's CKKSVectorProto, in the canonical order TenSEAL writes."""

    def __init__(self, view: memoryview, where: str) -> None:
        self.view, self.pos, self.where = view, 0, where

    def error(self, msg: str) -> BadInputError:
        return BadInputError(f"{self.where} does not deserialize: {msg}")

    def varint(self, what: str) -> int:
        value = shift = 0
        while True:
            if self.pos >= len(self.view) or shift > 63:
                raise self.error(f"{what} is truncated")
            byte = self.view[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def tag(self, expected: int, what: str) -> None:
        if self.pos >= len(self.view) or self.view[self.pos] != expected:
            raise self.error(f"expected TenSEAL CKKSVector field {what}")
        self.pos += 1

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.view) - self.pos:
            raise self.error(f"{what} is truncated")
        self.pos += n
        return self.view[self.pos - n : self.pos]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_chunk(data: bytes, layout: Layout, codec: Codec, *, size: int, where: str) -> np.ndarray:
    """Parse and check one serialized chunk; its coefficients as uint64 ``(2, primes, N)``.

    BadInputError naming ``where`` and the fault: framing, compression, ring dimension,
    prime count, prime chain (parms_id), polynomial count, NTT form, scale, correction
    factor, value count, or a coefficient not reduced modulo its prime.
    """
    p = _Proto(memoryview(data), where)
    p.tag(0x0A, "1 (sizes)")
    sizes = _Proto(p.take(p.varint("sizes length"), "sizes"), where)
    count = sizes.varint("size")
    if sizes.pos != len(sizes.view):
        raise p.error("holds more than one ciphertext")
    p.tag(0x12, "2 (ciphertext)")
    seal = p.take(p.varint("ciphertext length"), "ciphertext")
    p.tag(0x19, "3 (scale)")
    (proto_scale,) = struct.unpack("<d", p.take(8, "scale"))
    if p.pos != len(p.view):
        raise p.error(f"{len(p.view) - p.pos} trailing bytes")
    if len(seal) < SEAL_HEADER.size:
        raise p.error("SEAL header is truncated")
    magic, hsize, major, minor, compr, reserved, total = SEAL_HEADER.unpack_from(seal)
    if magic != SEAL_MAGIC or hsize != SEAL_HEADER.size or reserved != 0:
        raise p.error("bad SEAL header")
    if (major, minor) != layout.version:  # SEAL itself refuses other versions
        raise p.error(
            f"SEAL version {major}.{minor}, expected {layout.version[0]}.{layout.version[1]}"
        )
    if total != len(seal):
        raise p.error(f"SEAL header declares {total} bytes, ciphertext field holds {len(seal)}")
    buf = _inflate(seal[SEAL_HEADER.size :], compr, layout, codec, p)
    raw = buf[PAD:]
    head = raw.data  # struct reads the header fields through the buffer protocol
    bad = f"{where} is not a {size}-slot CKKS ciphertext under this context"
    if raw.size < CT_MEMBERS.size:
        raise p.error(f"{raw.size} ciphertext bytes, expected {layout.raw_size}")
    *parms_id, ntt, polys, n, primes, scale, correction = CT_MEMBERS.unpack_from(head)
    if n != layout.poly_modulus_degree:
        raise BadInputError(f"{bad}: ring dimension N={n}, expected {layout.poly_modulus_degree}")
    if primes != len(layout.primes):
        raise BadInputError(f"{bad}: {primes} primes in its modulus, expected {len(layout.primes)}")
    if tuple(parms_id) != layout.parms_id:
        raise BadInputError(f"{bad}: another prime chain (SEAL parms_id differs)")
    if polys != POLYS or not ntt or correction != 1:
        raise BadInputError(
            f"{bad}: not a fresh ciphertext ({polys} polynomials, NTT form {bool(ntt)}, "
            f"correction factor {correction})"
        )
    if scale != layout.scale or proto_scale != layout.scale:
        shown = math.log2(scale) if scale > 0 else scale
        raise BadInputError(f"{bad}: scale 2**{shown:g}, expected 2**{math.log2(layout.scale):g}")
    if count != size:
        raise BadInputError(f"{bad}: it fills {count} slots")
    if raw.size < PREFIX:
        raise p.error(f"{raw.size} ciphertext bytes, expected {layout.raw_size}")
    magic, hsize, major, minor, compr, reserved, total = SEAL_HEADER.unpack_from(
        head, CT_MEMBERS.size
    )
    (coeffs,) = COUNT.unpack_from(head, CT_MEMBERS.size + SEAL_HEADER.size)
    half = layout.coeff_count // POLYS
    seeded = coeffs == half
    if (magic, hsize, (major, minor), compr, reserved) != (
        SEAL_MAGIC,
        SEAL_HEADER.size,
        layout.version,
        COMPR_NONE,
        0,
    ) or coeffs not in (half, layout.coeff_count):
        raise p.error("bad coefficient array header")
    if total != SEAL_HEADER.size + COUNT.size + 8 * coeffs:
        raise p.error("bad coefficient array header")
    primes, n = len(layout.primes), layout.poly_modulus_degree
    if not seeded:
        if raw.size != layout.raw_size:
            raise p.error(f"{raw.size} ciphertext bytes, expected {layout.raw_size}")
        out_coeffs = buf[PAD + PREFIX :].view("<u8").reshape((POLYS, primes, n))
        _check_reduced(out_coeffs, layout, bad)
        return out_coeffs
    rest = raw.size - PREFIX - 8 * half
    if rest != SEED_INFO_SIZE:
        raise p.error(
            f"seed block holds {rest} bytes, expected {SEED_INFO_SIZE} (SEAL header, PRNG "
            f"type, {SEED_BYTES}-byte seed)"
        )
    at = PREFIX + 8 * half
    magic, hsize, major, minor, compr, reserved, total = SEAL_HEADER.unpack_from(head, at)
    if (magic, hsize, (major, minor), compr, reserved, total) != (
        SEAL_MAGIC,
        SEAL_HEADER.size,
        layout.version,
        COMPR_NONE,
        0,
        SEED_INFO_SIZE,
    ):
        raise p.error("bad seed block header")
    prng = head[at + SEAL_HEADER.size]
    if prng != PRNG_BLAKE2XB:
        raise p.error(f"seed for PRNG type {prng}, expected {PRNG_BLAKE2XB} (Blake2xb)")
    seed = bytes(head[at + SEAL_HEADER.size + 1 : at + SEED_INFO_SIZE])
    c0 = buf[PAD + PREFIX : PAD + at].view("<u8").reshape((1, primes, n))
    _check_reduced(c0, layout, bad)
    out = np.empty((POLYS, primes, n), dtype=np.uint64)
    out[0] = c0[0]
    out[1] = expand_uniform(seed, layout, codec)
    return out


def _check_reduced(coeffs: np.ndarray, layout: Layout, bad: str) -> None:
    for i, prime in enumerate(layout.primes):
        if int(coeffs[:, i, :].max()) >= prime:
            raise BadInputError(f"{bad}: a coefficient is not reduced modulo prime {i}")


def sample_uniform(draw: Callable[[int], np.ndarray], layout: Layout) -> np.ndarray:
    """SEAL's ``sample_poly_uniform`` rule on the u64 word stream ``draw(count)`` (at least
    its first ``count`` words, a fixed prefix whatever ``count``): ``(primes, N)`` uint64,
    reduced. The stream's first ``primes * N`` words fill the rows (row ``j`` for prime
    ``q_j``); a word ``w >= 2**64 - 1 - ((2**64 - 1) mod q) - 1`` is rejected and replaced
    by the next unused word after them (row by row, in index order, rejecting again if need
    be); every word is then reduced mod ``q``. Rejections happen with probability below
    ``q / 2**64`` (2**-16 for a 48-bit prime). Used with SEAL's Blake2xb stream
    (:func:`expand_uniform`) and with ChaCha20 (:mod:`cohort.crypto.ckks_seeded`)."""
    primes, n = len(layout.primes), layout.poly_modulus_degree
    need = primes * n
    words = draw(need + 64)  # a few spare words: a rejection is rare (below 2**-16 per word)
    first = words[:need].reshape(primes, n)
    out = np.empty((primes, n), dtype=np.uint64)
    pos = need
    for j, prime in enumerate(layout.primes):
        q = np.uint64(prime)
        limit = U64_MAX - U64_MAX % prime - 1
        rejected = np.flatnonzero(first[j] >= np.uint64(limit))
        if rejected.size == 0:
            np.remainder(first[j], q, out=out[j])
            continue
        row = first[j].copy()
        for k in rejected:
            while True:
                if pos >= words.size:
                    words = draw(2 * words.size)
                word = int(words[pos])
                pos += 1
                if word < limit:
                    break
            row[k] = word
        np.remainder(row, q, out=out[j])
    return out


def expand_uniform(seed: bytes, layout: Layout, codec: Codec) -> np.ndarray:
    """SEAL's ``sample_poly_uniform`` from a Blake2xb stream keyed by ``seed``: the ``c1``
    of a SEAL-seeded ciphertext, ``(primes, N)`` uint64, reduced (:func:`sample_uniform`
    over the stream's little-endian u64 words, drawn in whole 4096-byte blocks)."""

    def draw(count: int) -> np.ndarray:
        blocks = -(-8 * count // PRNG_BLOCK_BYTES)
        return codec.prng_stream(seed, blocks * PRNG_BLOCK_BYTES).view("<u8")

    return sample_uniform(draw, layout)


def add_chunks(chunks: Iterable[np.ndarray], layout: Layout) -> np.ndarray:
    """Sum decoded chunks modulo each prime: lazy uint64 adds, a remainder every
    :func:`lazy_adds` terms and one at the end. Order-independent and exact."""
    q = np.array(layout.primes, dtype=np.uint64)[None, :, None]
    every = min(lazy_adds(prime) for prime in layout.primes)
    acc: np.ndarray | None = None
    pending = 0
    for chunk in chunks:
        if acc is None:
            acc = chunk.copy()
            continue
        if pending == every:
            np.remainder(acc, q, out=acc)
            pending = 0
        np.add(acc, chunk, out=acc)
        pending += 1
    if acc is None:
        raise BadInputError("add: no chunks to sum")
    np.remainder(acc, q, out=acc)
    return acc


class ChunkAccumulator:
    """A running sum modulo each prime of decoded chunks of one shape, fed one at a time.

    Holds one ``(2, primes, N)`` uint64 array, whatever the number of chunks added: the
    member's memory for a sum does not grow with the number of hospitals. Same schedule as
    :func:`add_chunks` (lazy uint64 adds, a remainder every :func:`lazy_adds` terms and one
    at :meth:`finish`), hence the same exact result. ``add`` may reuse nothing it is given.
    """

    __slots__ = ("_acc", "_count", "_every", "_pending", "_q")

    def __init__(self, layout: Layout) -> None:
        self._q = np.array(layout.primes, dtype=np.uint64)[None, :, None]
        self._every = min(lazy_adds(prime) for prime in layout.primes)
        self._acc: np.ndarray | None = None
        self._pending = 0
        self._count = 0

    @property
    def count(self) -> int:
        """How many chunks were added."""
        return self._count

    def add(self, chunk: np.ndarray) -> None:
        """Add one decoded (reduced) chunk, as returned by :func:`decode_chunk`."""
        if self._acc is None:
            self._acc = chunk.copy()
        else:
            if self._pending == self._every:
                np.remainder(self._acc, self._q, out=self._acc)
                self._pending = 0
            np.add(self._acc, chunk, out=self._acc)
            self._pending += 1
        self._count += 1

    def finish(self) -> np.ndarray:
        """The reduced sum; the accumulator is spent afterwards."""
        acc, self._acc = self._acc, None
        if acc is None:
            raise BadInputError("add: no chunks to sum")
        np.remainder(acc, self._q, out=acc)
        return acc


def encode_chunk(coeffs: np.ndarray, layout: Layout, codec: Codec | None, *, size: int) -> bytes:
    """Serialize reduced coefficients as TenSEAL serializes a CKKSVector of ``size`` slots,
    compressed with ``codec`` (SEAL's zstd: the same bytes TenSEAL writes) or, with None,
    uncompressed (which SEAL loads as well)."""
    major, minor = layout.version
    body_size = SEAL_HEADER.size + COUNT.size + 8 * layout.coeff_count
    raw = b"".join(
        (
            CT_MEMBERS.pack(
                *layout.parms_id,
                1,
                POLYS,
                layout.poly_modulus_degree,
                len(layout.primes),
                layout.scale,
                1,
            ),
            SEAL_HEADER.pack(SEAL_MAGIC, SEAL_HEADER.size, major, minor, COMPR_NONE, 0, body_size),
            COUNT.pack(layout.coeff_count),
            np.ascontiguousarray(coeffs, dtype="<u8").tobytes(),
        )
    )
    packed = raw if codec is None else codec.compress(raw)
    seal = (
        SEAL_HEADER.pack(
            SEAL_MAGIC,
            SEAL_HEADER.size,
            major,
            minor,
            COMPR_NONE if codec is None else COMPR_ZSTD,
            0,
            SEAL_HEADER.size + len(packed),
        )
        + packed
    )
    sizes = _varint(size)
    return b"".join(
        (
            b"\x0a",
            _varint(len(sizes)),
            sizes,
            b"\x12",
            _varint(len(seal)),
            seal,
            b"\x19",
            struct.pack("<d", layout.scale),
        )
    )


def _inflate(body: memoryview, compr: int, layout: Layout, codec: Codec, p: _Proto) -> np.ndarray:
    """The uncompressed ciphertext body at offset :data:`PAD` of a fresh uint8 buffer. Any
    size up to four times the expected one is returned, so that a chunk of other parameters
    is named by its header fields; the caller checks the exact size."""
    limit = 4 * layout.raw_size
    if compr == COMPR_NONE:
        n = len(body)
        if n > limit:
            raise p.error(f"{n} ciphertext bytes, expected {layout.raw_size}")
        buf = np.empty(PAD + n, dtype=np.uint8)
        buf[PAD:] = np.frombuffer(body, dtype=np.uint8)
        return buf
    if compr == COMPR_ZLIB:
        inflate = zlib.decompressobj()
        try:
            out = inflate.decompress(body, limit)
        except zlib.error:
            raise p.error("zlib data is corrupt") from None
        if not inflate.eof or inflate.unused_data:
            raise p.error("zlib data is truncated, too long or followed by other bytes")
        buf = np.empty(PAD + len(out), dtype=np.uint8)
        buf[PAD:] = np.frombuffer(out, dtype=np.uint8)
        return buf
    if compr == COMPR_ZSTD:
        n = codec.content_size(body)
        if n < 0 or n > limit:
            raise p.error("zstd frame header is corrupt or declares an implausible size")
        buf = np.empty(PAD + n, dtype=np.uint8)
        if codec.decompress_into(body, buf[PAD:]) != n:
            raise p.error(f"zstd data does not decompress to the {n} bytes it declares")
        return buf
    raise p.error(f"unknown SEAL compression mode {compr}")
