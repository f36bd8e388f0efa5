"""Length-prefixed binary framing shared by Cohort's wire formats (envelopes, CKKS blobs).

Every integer is big-endian. A :class:`Reader` walks a buffer field by field and raises
:class:`~cohort.errors.BadInputError` naming the format and the field on any problem
(truncation, a size out of bounds, trailing bytes), so a parser never indexes past the
end of its input and never reports anything but bad input.
"""

from __future__ import annotations

import struct

from cohort.errors import BadInputError

_U8 = struct.Struct(">B")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


def u8(value: int) -> bytes:
    return _U8.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def prefixed(data: bytes) -> bytes:
    """``u32(len(data)) || data``."""
    return _U32.pack(len(data)) + data


def prefixed64(data: bytes) -> bytes:
    """``u64(len(data)) || data`` for fields that may pass 4 GiB."""
    return _U64.pack(len(data)) + data


class Reader:
    """Sequential parser over ``data``; ``what`` prefixes every error ("envelope: ...")."""

    def __init__(self, data: bytes, what: str) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise BadInputError(f"{what}: expected bytes, got {type(data).__name__}")
        self._data = memoryview(data).cast("B")
        self._pos = 0
        self.what = what

    def error(self, message: str) -> BadInputError:
        return BadInputError(f"{self.what}: {message}")

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, size: int, field: str) -> bytes:
        return bytes(self.view(size, field))

    def view(self, size: int, field: str) -> memoryview:
        """The next ``size`` bytes without copying them (valid while ``data`` is)."""
        if size > self.remaining:
            raise self.error(f"truncated in {field}: needs {size} bytes, {self.remaining} left")
        out = self._data[self._pos : self._pos + size]
        self._pos += size
        return out

    def magic(self, expected: bytes) -> None:
        got = self.take(len(expected), "magic")
        if got != expected:
            raise self.error(f"bad magic {got!r}, expected {expected!r}")

    def version(self, expected: int) -> None:
        got = self.u8("version")
        if got != expected:
            raise self.error(f"unsupported version {got}, expected {expected}")

    def u8(self, field: str) -> int:
        value: int = _U8.unpack(self.take(1, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = _U32.unpack(self.take(4, field))[0]
        return value

    def u64(self, field: str) -> int:
        value: int = _U64.unpack(self.take(8, field))[0]
        return value

    def prefixed(self, field: str, *, max_size: int, exact: int | None = None) -> bytes:
        """A ``u32``-length-prefixed field of at most ``max_size`` (or exactly ``exact``) bytes."""
        return self._sized(self.u32(f"{field} length"), field, max_size=max_size, exact=exact)

    def prefixed64(self, field: str, *, max_size: int) -> bytes:
        """A ``u64``-length-prefixed field of at most ``max_size`` bytes."""
        return self._sized(self.u64(f"{field} length"), field, max_size=max_size, exact=None)

    def _sized(self, size: int, field: str, *, max_size: int, exact: int | None) -> bytes:
        if exact is not None and size != exact:
            raise self.error(f"{field} has {size} bytes, expected {exact}")
        if size > max_size:
            raise self.error(f"{field} has {size} bytes, more than the maximum {max_size}")
        return self.take(size, field)

    def text(self, field: str, *, max_size: int) -> str:
        """A length-prefixed, non-empty, printable UTF-8 string."""
        raw = self.prefixed(field, max_size=max_size)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{field} is not valid UTF-8") from None
        if not value or not value.isprintable():
            raise self.error(f"{field} must be non-empty printable text")
        return value

    def end(self) -> None:
        if self.remaining:
            raise self.error(f"{self.remaining} trailing bytes after the last field")
