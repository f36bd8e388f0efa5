"""Binary framing of CKKS contexts and encrypted vectors (no TenSEAL calls here).

EncryptedVector (big-endian)::

    "CHCV" | u8 version=2 | u8 kind | u64 value count | u32 chunk count
    | 32-byte context fingerprint | chunk count x (u32 length | chunk)

A chunk carries up to N values (:attr:`CkksParams.values_per_ciphertext`), two per complex
slot: value ``2j`` is the real part of slot ``j`` and value ``2j + 1`` its imaginary part
(zero past an odd count). ``kind`` says what a chunk is:

* :data:`KIND_UPLOAD` (1), a data owner's upload: a seeded chunk of
  :mod:`cohort.crypto.ckks_seeded` (``c0`` and the seed ``c1`` expands from);
* :data:`KIND_SUM` (2), a committee's sum: both polynomials, packed the same way;
* :data:`KIND_SEAL` (0), a serialized TenSEAL CKKSVector (one SEAL ciphertext): what
  TenSEAL itself writes, accepted as an input to a sum next to uploads.

Both count filled slots, ``ceil(values / 2)``. Version 1 put one value per slot and had no
kind.

Contexts::

    "CHPK" (public) or "CHSK" (secret) | u8 version=1 | 16-byte key id | params
    | u32 length | serialized TenSEAL context

    params = u32 N | u8 prime count | u8 bits per prime ... | u8 scale_bits

The key id is drawn at random when the secret context is generated, so two studies with
the same parameters still have different context fingerprints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cohort.crypto import framing
from cohort.crypto.ckks_params import CkksParams
from cohort.crypto.hashing import DIGEST_SIZE
from cohort.errors import BadInputError

VECTOR_MAGIC = b"CHCV"
PUBLIC_MAGIC = b"CHPK"
SECRET_MAGIC = b"CHSK"
VECTOR_VERSION = 2  # two values per slot, a kind byte
KIND_SEAL = 0
KIND_UPLOAD = 1
KIND_SUM = 2
_KINDS = {KIND_SEAL: "seal", KIND_UPLOAD: "upload", KIND_SUM: "sum"}
CONTEXT_VERSION = 1
KEY_ID_SIZE = 16
MAX_CONTEXT_BYTES = 64 << 20  # a secret context at N=32768 stays far below this
CHUNK_SLACK_BYTES = 4096  # TenSEAL + SEAL headers around one ciphertext


def max_chunk_bytes(params: CkksParams) -> int:
    """Upper bound on one serialized chunk: 2 polynomials x N coefficients x 8 bytes."""
    return 16 * params.poly_modulus_degree + CHUNK_SLACK_BYTES


def chunk_sizes(length: int, params: CkksParams) -> list[int]:
    """How many values each chunk of a ``length``-value vector holds."""
    full, rest = divmod(length, params.values_per_ciphertext)
    return [params.values_per_ciphertext] * full + ([rest] if rest else [])


def slot_counts(length: int, params: CkksParams) -> list[int]:
    """How many slots each chunk of a ``length``-value vector fills (its CKKSVector size)."""
    return [-(-size // 2) for size in chunk_sizes(length, params)]


@dataclass(frozen=True)
class VectorFrame:
    """A parsed EncryptedVector: header fields and the raw chunk bytes."""

    length: int
    fingerprint: bytes
    chunks: tuple[bytes, ...]
    kind: int

    def to_bytes(self) -> bytes:
        header = vector_header(
            kind=self.kind,
            length=self.length,
            chunks=len(self.chunks),
            fingerprint=self.fingerprint,
        )
        return b"".join((header, *(framing.prefixed(chunk) for chunk in self.chunks)))


def vector_header(*, kind: int, length: int, chunks: int, fingerprint: bytes) -> bytes:
    """An EncryptedVector's bytes before its first chunk's length prefix."""
    return b"".join(
        (
            VECTOR_MAGIC,
            framing.u8(VECTOR_VERSION),
            framing.u8(kind),
            framing.u64(length),
            framing.u32(chunks),
            fingerprint,
        )
    )


def _read_header(
    r: framing.Reader, params: CkksParams, length: int | None, fingerprint: bytes | None
) -> tuple[int, int, int, bytes]:
    """An EncryptedVector's header, checked as :func:`parse_vector` says: kind, value
    count, chunk count and context fingerprint."""
    r.magic(VECTOR_MAGIC)
    r.version(VECTOR_VERSION)
    kind = r.u8("kind")
    if kind not in _KINDS:
        raise r.error(f"unknown kind {kind} (0 = SEAL, 1 = upload, 2 = sum)")
    count = r.u64("value count")
    chunk_count = r.u32("chunk count")
    fp = r.take(DIGEST_SIZE, "context fingerprint")
    if count == 0:
        raise r.error("holds no values")
    if length is not None and count != length:
        raise r.error(f"holds {count} values, expected {length}")
    per_chunk = params.values_per_ciphertext
    expected_chunks = -(-count // per_chunk)
    if chunk_count != expected_chunks:
        raise r.error(
            f"has {chunk_count} chunks, expected {expected_chunks} for {count} values "
            f"at {per_chunk} per chunk"
        )
    if fingerprint is not None and fp != fingerprint:
        raise r.error(
            f"made under another CKKS context (fingerprint {fp[:8].hex()}, "
            f"expected {fingerprint[:8].hex()})"
        )
    return kind, count, chunk_count, fp


def uniform_chunks(
    blob: bytes,
    params: CkksParams,
    *,
    kind: int,
    chunk_bytes: int,
    what: str = "encrypted vector",
    length: int | None = None,
    fingerprint: bytes | None = None,
) -> tuple[int, np.ndarray] | None:
    """:func:`parse_vector` without copying, for a vector of ``kind`` whose chunks are all
    ``chunk_bytes`` long (every upload is): its value count and its chunks as a read-only
    ``(chunks, chunk_bytes)`` uint8 view of ``blob``. The header is checked as
    :func:`parse_vector` checks it (BadInputError); None if the rest is not exactly such
    chunks (another kind, another length prefix, trailing or missing bytes), for
    :func:`parse_vector` to name the fault."""
    r = framing.Reader(blob, what)
    got, count, chunk_count, _ = _read_header(r, params, length, fingerprint)
    stride = 4 + chunk_bytes
    if got != kind or r.remaining != chunk_count * stride:
        return None
    start = len(blob) - r.remaining
    rows = np.frombuffer(blob, dtype=np.uint8, offset=start).reshape(chunk_count, stride)
    if not bool((rows[:, :4].view(">u4")[:, 0] == chunk_bytes).all()):
        return None
    return count, rows[:, 4:]


def parse_vector(
    blob: bytes,
    params: CkksParams,
    *,
    what: str = "encrypted vector",
    length: int | None = None,
    fingerprint: bytes | None = None,
) -> VectorFrame:
    """Parse an EncryptedVector; BadInputError on malformed framing.

    Checks, in order: magic, version and kind, the value count (against ``length`` if given),
    the chunk count, the context fingerprint (against ``fingerprint`` if given), then
    each chunk's length prefix and the absence of trailing bytes.
    """
    r = framing.Reader(blob, what)
    kind, count, chunk_count, fp = _read_header(r, params, length, fingerprint)
    limit = max_chunk_bytes(params)
    chunks = tuple(r.prefixed(f"chunk {i}", max_size=limit) for i in range(chunk_count))
    r.end()
    return VectorFrame(length=count, fingerprint=fp, chunks=chunks, kind=kind)


def encode_params(params: CkksParams) -> bytes:
    bits = params.coeff_mod_bit_sizes
    return b"".join(
        (
            framing.u32(params.poly_modulus_degree),
            framing.u8(len(bits)),
            *(framing.u8(b) for b in bits),
            framing.u8(params.scale_bits),
        )
    )


def read_params(r: framing.Reader) -> CkksParams:
    n = r.u32("poly_modulus_degree")
    count = r.u8("prime count")
    bits = tuple(r.u8(f"coeff_mod_bit_sizes[{i}]") for i in range(count))
    scale_bits = r.u8("scale_bits")
    params = CkksParams(poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale_bits)
    try:
        params.validate()
    except BadInputError as exc:
        raise r.error(f"unusable parameters: {exc}") from None
    return params


@dataclass(frozen=True)
class ContextFrame:
    """A parsed context header plus the serialized TenSEAL context it carries."""

    magic: bytes
    key_id: bytes
    params: CkksParams
    tenseal_bytes: bytes

    def to_bytes(self) -> bytes:
        return b"".join(
            (
                self.magic,
                framing.u8(CONTEXT_VERSION),
                self.key_id,
                encode_params(self.params),
                framing.prefixed(self.tenseal_bytes),
            )
        )


def parse_context(data: bytes, *, magic: bytes, what: str) -> ContextFrame:
    r = framing.Reader(data, what)
    if magic == PUBLIC_MAGIC and bytes(data[:4]) == SECRET_MAGIC:
        raise r.error("holds a secret key (this is a secret context; send public() instead)")
    r.magic(magic)
    r.version(CONTEXT_VERSION)
    key_id = r.take(KEY_ID_SIZE, "key id")
    params = read_params(r)
    raw = r.prefixed("TenSEAL context", max_size=MAX_CONTEXT_BYTES)
    r.end()
    return ContextFrame(magic=magic, key_id=key_id, params=params, tenseal_bytes=raw)
