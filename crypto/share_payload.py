"""Wire format of one member's Shamir share, carried inside a signed, sealed upload.

A data owner runs :meth:`SharePayload.to_bytes` once per member per round; the member runs
:meth:`SharePayload.from_bytes` on the unsealed payload (:mod:`cohort.crypto.upload` has
already checked the signature and the payload hash). Framing, big-endian::

    "CHSH" | u8 version=1 | u8 kind (1 seed, 2 full) | u32 member index | u32 members k
    | u32 threshold t | u32 prime p | u64 length n
    | seed:  u32-prefixed seed (32 bytes)
    | full:  u64-prefixed packed values (ceil(n * w / 8) bytes, w = p.bit_length())

Packed values are the ``w``-bit big-endian binary of each value, concatenated MSB first and
zero-padded to a whole byte (:func:`pack_field`): with the default prime ``w = 23``, so a
committee of 3 with threshold 2 costs 2 full shares + 1 seed = 46 bits per parameter, 1.4375x
float32. Parsing is strict: a value ``>= p``, non-zero padding, an index or threshold out of
range, a wrong length or seed size, truncation or trailing bytes is a
:class:`~cohort.errors.BadInputError` whose message names the field.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cohort.crypto import framing
from cohort.crypto.prg import SEED_BYTES, expand_field_u32
from cohort.crypto.shamir import FullShare, SeededShare, ShamirScheme, share_values
from cohort.errors import BadInputError

MAGIC = b"CHSH"
VERSION = 1
WHAT = "share payload"


class ShareKind(enum.IntEnum):
    SEED = 1
    FULL = 2


def packed_size(count: int, prime: int) -> int:
    """Bytes of ``count`` packed field values."""
    return (count * prime.bit_length() + 7) // 8


def _window(width: int) -> tuple[int, str, str]:
    """Bytes, big-endian dtype and unsigned dtype of the window one value is read through: a
    value starts at most 7 bits into its first byte, so ``7 + width`` bits must fit."""
    return (4, ">u4", "u4") if width + 7 <= 32 else (8, ">u8", "u8")


def pack_field(values: NDArray[np.integer[Any]], prime: int) -> bytes:
    """Bit-pack field values in ``prime.bit_length()`` bits each (see the module doc).

    Eight values make ``width`` bytes; value ``j`` of a group starts at bit ``width * j``.
    Each of the eight lanes is OR-ed into the output through a strided big-endian window
    (``window`` bytes wide, one per group); windows of one pass never overlap."""
    array = np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise BadInputError(f"packed field: expected a 1-D integer vector, got {array.dtype}")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= prime):
        raise BadInputError(f"packed field: values must lie in [0, {prime})")
    width = prime.bit_length()
    count = int(array.size)
    if count == 0:
        return b""
    groups = (count + 7) // 8
    window, big, native = _window(width)
    padded = np.zeros(groups * 8, dtype=native)
    padded[:count] = array
    lanes = padded.reshape(groups, 8)
    out = bytearray(groups * width + window)
    passes = -(-window // width)  # windows of groups this close would overlap
    for j in range(8):
        first, bit = divmod(width * j, 8)
        shifted = lanes[:, j] << np.dtype(native).type(8 * window - bit - width)
        for start in range(min(passes, groups)):
            view = np.ndarray(
                ((groups - start + passes - 1) // passes,),
                dtype=big,
                buffer=out,
                offset=first + start * width,
                strides=(passes * width,),
            )
            view |= shifted[start::passes]
    return bytes(memoryview(out)[: packed_size(count, prime)])


def unpack_field(data: bytes | memoryview, count: int, prime: int) -> NDArray[np.int64]:
    """Inverse of :func:`pack_field`; rejects a wrong size, non-zero padding and values ``>= p``."""
    values: NDArray[np.int64] = _unpack(data, count, prime, np.int64)
    return values


def unpack_field_u32(data: bytes | memoryview, count: int, prime: int) -> NDArray[np.uint32]:
    """:func:`unpack_field` as uint32 (every prime Cohort takes is below 2^31): half the
    memory traffic for a member that only adds the values up."""
    values: NDArray[np.uint32] = _unpack(data, count, prime, np.uint32)
    return values


def _unpack(data: bytes | memoryview, count: int, prime: int, dtype: type) -> NDArray[Any]:
    width = prime.bit_length()
    if len(data) != packed_size(count, prime):
        raise BadInputError(
            f"packed field: {len(data)} bytes, expected {packed_size(count, prime)} "
            f"for {count} values"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    groups = (count + 7) // 8
    window, big, native = _window(width)
    buffer = b"".join((data, bytes(groups * width + window - len(data))))
    mask = np.dtype(native).type((1 << width) - 1)
    every: NDArray[Any] = np.empty((groups, 8), dtype=dtype)
    for j in range(8):
        first, bit = divmod(width * j, 8)
        view = np.ndarray((groups,), dtype=big, buffer=buffer, offset=first, strides=(width,))
        shift = np.dtype(native).type(8 * window - bit - width)
        np.bitwise_and(view >> shift, mask, out=every[:, j], casting="unsafe")
    flat = every.reshape(-1)
    if flat[count:].any():
        raise BadInputError("packed field: non-zero padding bits")
    values = flat[:count]
    if values.size and int(values.max()) >= prime:
        i = int(np.flatnonzero(values >= prime)[0])
        raise BadInputError(f"packed field: value at index {i} is not below the prime {prime}")
    return values


@dataclass(frozen=True, eq=False)
class SharePayload:
    """Member ``share.index``'s share of an ``length``-value secret under ``scheme``."""

    scheme: ShamirScheme
    length: int
    share: SeededShare | FullShare

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or not 0 <= self.length < 2**64:
            raise BadInputError(f"{WHAT}: length must be an integer in [0, 2^64)")
        if not 0 <= self.share.index < self.scheme.members:
            raise BadInputError(
                f"{WHAT}: member index {self.share.index} is not below members "
                f"{self.scheme.members}"
            )
        if isinstance(self.share, SeededShare) and len(self.share.seed) != SEED_BYTES:
            raise BadInputError(f"{WHAT}: seed has {len(self.share.seed)} bytes, expected 32")
        if isinstance(self.share, FullShare) and np.asarray(self.share.values).size != self.length:
            raise BadInputError(
                f"{WHAT}: share has {self.share.values.size} values, expected {self.length}"
            )

    @property
    def kind(self) -> ShareKind:
        return ShareKind.SEED if isinstance(self.share, SeededShare) else ShareKind.FULL

    def values(self, *, domain: bytes) -> NDArray[np.int64]:
        """The share's field values (a seed expands under ``domain``). Run by the member."""
        return share_values(self.share, self.scheme, domain=domain, length=self.length)

    def narrow_values(self, *, domain: bytes) -> NDArray[np.uint32]:
        """:meth:`values` as uint32, for a member that adds them up. Run by the member on a
        share it parsed (:meth:`from_bytes` checked every value is below p)."""
        if isinstance(self.share, SeededShare):
            return expand_field_u32(
                self.share.seed, domain=domain, count=self.length, prime=self.scheme.prime
            )
        out: NDArray[np.uint32] = self.share.values.astype(np.uint32, copy=False)
        return out

    def to_bytes(self) -> bytes:
        """Serialise (see the module doc). Run by the data owner."""
        s = self.scheme
        header = (
            MAGIC
            + framing.u8(VERSION)
            + framing.u8(self.kind)
            + framing.u32(self.share.index)
            + framing.u32(s.members)
            + framing.u32(s.threshold)
            + framing.u32(s.prime)
            + framing.u64(self.length)
        )
        if isinstance(self.share, SeededShare):
            return header + framing.prefixed(self.share.seed)
        packed = pack_field(self.share.values, s.prime)
        return b"".join((header, framing.u64(len(packed)), packed))  # = prefixed64, one copy

    @classmethod
    def from_bytes(
        cls, data: bytes, *, length: int | None = None, narrow: bool = False
    ) -> SharePayload:
        """Parse strictly; ``length``, when given, is the value count the member expects.
        ``narrow`` keeps a full share's values as uint32 (see :meth:`narrow_values`)."""
        r = framing.Reader(data, WHAT)
        r.magic(MAGIC)
        r.version(VERSION)
        kind = r.u8("kind")
        if kind not in tuple(ShareKind):
            raise r.error(f"unknown kind {kind}, expected 1 (seed) or 2 (full)")
        index, members, threshold = r.u32("index"), r.u32("members"), r.u32("threshold")
        prime, count = r.u32("prime"), r.u64("length")
        if not 1 <= threshold <= members:
            raise r.error(f"threshold {threshold} not in [1, members {members}]")
        try:
            scheme = ShamirScheme(members, threshold, prime)
        except BadInputError as exc:
            raise r.error(f"scheme: {exc}") from None
        if index >= members:
            raise r.error(f"member index {index} is not below members {members}")
        if length is not None and count != length:
            raise r.error(f"length {count}, expected {length}")
        share: SeededShare | FullShare
        if kind == ShareKind.SEED:
            share = SeededShare(index, r.prefixed("seed", max_size=SEED_BYTES, exact=SEED_BYTES))
        else:
            size = r.u64("values length")
            if size != packed_size(count, prime):
                raise r.error(f"values has {size} bytes, expected {packed_size(count, prime)}")
            try:
                unpack = unpack_field_u32 if narrow else unpack_field
                values = unpack(r.view(size, "values"), count, prime)
            except BadInputError as exc:
                if str(exc).startswith(WHAT):
                    raise
                raise r.error(f"values: {exc}") from None
            share = FullShare(index, values)
        r.end()
        return cls(scheme, count, share)
