"""CKKS encryption of model updates with TenSEAL, for pure homomorphic addition.

Who runs what:

* Data owners hold :class:`CkksSecretContext` (one secret key shared by the study's data
  owners, symmetric encryption): they :meth:`~CkksSecretContext.encrypt` their weighted
  update and later :meth:`~CkksSecretContext.decrypt` the committee's sum.
* Committee members and the coordinator hold :class:`CkksPublicContext`: parameters only,
  no secret key, no Galois keys, no relinearization keys. They
  :meth:`~CkksPublicContext.check` uploads and :meth:`~CkksPublicContext.add` them; the
  sum is bit-identical for the same inputs in the same order, so honest members agree on
  its hash.

Parameters and their justification: :mod:`cohort.crypto.ckks_params` and
docs/ckks-parameters.md. Framing: :mod:`cohort.crypto.ckks_wire`.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto import ckks_seeded as seeded
from cohort.crypto import ckks_wire as wire
from cohort.crypto.ckks_params import (
    DEFAULT_PARAMS,
    HE_STANDARD_128_MAX_BITS,
    MAX_SUMMANDS,
    CkksParams,
)
from cohort.crypto.ckks_tenseal import (
    SeededEncryptor,
    SlotDecryptor,
    load_chunk,
    load_context,
    new_context,
    seal_layout,
    seal_zstd,
    serialize_context,
    unpack_complex,
)
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import BadInputError

__all__ = [
    "DEFAULT_PARAMS",
    "HE_STANDARD_128_MAX_BITS",
    "MAX_SUMMANDS",
    "CkksParams",
    "CkksPublicContext",
    "CkksSecretContext",
    "CkksSum",
    "DecodedVector",
]


@dataclass(frozen=True)
class DecodedVector:
    """An encrypted vector parsed and checked once: its value count and its coefficients,
    uint64 ``(chunks, 2, primes, N)`` (``c0``, ``c1`` of each chunk, ``c1`` expanded from
    its seed), reduced modulo each prime."""

    length: int
    coeffs: np.ndarray


class CkksPublicContext:
    """Parameters without keys. Run by committee members (check, add) and the coordinator."""

    __slots__ = ("_bytes", "_codec", "_ctx", "_fingerprint", "_frame", "_layout")

    def __init__(self, frame: wire.ContextFrame) -> None:
        what = "CKKS public context"
        ctx = load_context(frame.tenseal_bytes, frame.params, what=what)
        if ctx.is_private() or ctx.has_secret_key():
            raise BadInputError(f"{what}: holds a secret key")
        if serialize_context(ctx, secret=False) != frame.tenseal_bytes:
            raise BadInputError(f"{what}: TenSEAL context is not in canonical form")
        self._frame = frame
        self._ctx = ctx
        self._layout = seal_layout(ctx, frame.params, what=what)
        self._codec = seal_zstd()
        self._bytes = frame.to_bytes()
        self._fingerprint = tagged_hash(Tag.CKKS_CONTEXT, self._bytes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksPublicContext:
        """Load a public context; BadInputError if malformed or if it holds any key."""
        return cls(wire.parse_context(data, magic=wire.PUBLIC_MAGIC, what="CKKS public context"))

    def to_bytes(self) -> bytes:
        return self._bytes

    @property
    def params(self) -> CkksParams:
        return self._frame.params

    def fingerprint(self) -> bytes:
        """``tagged_hash(Tag.CKKS_CONTEXT, to_bytes())``; every EncryptedVector carries it."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"CkksPublicContext({self.params}, fingerprint={self._fingerprint[:8].hex()})"

    def check(self, blob: bytes, *, length: int) -> None:
        """Run by a committee member on each upload before accepting it.

        Raises BadInputError on malformed framing, a value count other than ``length``, a
        wrong chunk count, another context's fingerprint, or a chunk that is not a fresh SEAL
        ciphertext filling ``ceil(values / 2)`` slots, of this context's ring dimension,
        prime chain and scale (:func:`cohort.crypto.ckks_fastsum.decode_chunk` names the
        fault). It cannot
        see the plaintext, so it cannot check ``|value| <= max_abs``.
        """
        self.decode(blob, length=length)

    def decode(
        self, blob: bytes, *, length: int | None = None, what: str = "encrypted vector"
    ) -> DecodedVector:
        """:meth:`check` ``blob`` and return its coefficients, parsed once (uint64
        ``(chunks, 2, primes, N)``, reduced, seeds expanded). Run by a committee member at
        acceptance; :meth:`CkksSum.add_decoded` sums them without parsing again."""
        layout = self._layout
        uniform = wire.uniform_chunks(
            blob,
            self.params,
            kind=wire.KIND_UPLOAD,
            chunk_bytes=seeded.chunk_size(layout),
            what=what,
            length=length,
            fingerprint=self._fingerprint,
        )
        if uniform is not None:  # an upload, as every data owner sends: parsed in place
            count, rows = uniform
            sizes = wire.slot_counts(count, self.params)
            coeffs = seeded.decode_chunks(rows, layout, sizes=sizes, what=what)
            return DecodedVector(length=count, coeffs=coeffs)
        frame = wire.parse_vector(
            blob, self.params, what=what, length=length, fingerprint=self._fingerprint
        )
        sizes = wire.slot_counts(frame.length, self.params)
        if frame.kind == wire.KIND_UPLOAD:
            coeffs = seeded.decode_chunks(frame.chunks, layout, sizes=sizes, what=what)
            return DecodedVector(length=frame.length, coeffs=coeffs)
        out = np.empty(
            (len(sizes), fastsum.POLYS, len(layout.primes), layout.poly_modulus_degree),
            dtype=np.uint64,
        )
        for i, (chunk, size) in enumerate(zip(frame.chunks, sizes, strict=True)):
            out[i] = self._decode(frame.kind, chunk, f"{what}: chunk {i}", size)
        return DecodedVector(length=frame.length, coeffs=out)

    def _decode(self, kind: int, data: bytes, where: str, size: int) -> np.ndarray:
        if kind == wire.KIND_UPLOAD:
            return seeded.decode_chunk(data, self._layout, size=size, where=where)
        if kind == wire.KIND_SUM:
            return seeded.decode_sum_chunk(data, self._layout, size=size, where=where)
        return fastsum.decode_chunk(data, self._layout, self._codec, size=size, where=where)

    def add(self, blobs: Sequence[bytes]) -> bytes:
        """Run by a committee member: the homomorphic sum of ``blobs`` as EncryptedVector bytes.

        Byte-identical to TenSEAL's ``add_`` of the same ciphertexts, computed on the raw
        coefficient arrays (:mod:`cohort.crypto.ckks_fastsum`); every chunk is checked as in
        :meth:`check`. Deterministic and independent of the order of ``blobs``. At most
        :data:`MAX_SUMMANDS` blobs, all with the same value count under this context.
        Equivalent to feeding ``blobs`` to :meth:`accumulator` one by one.
        """
        if len(blobs) == 0:
            raise BadInputError("add: expected a non-empty sequence of encrypted vectors")
        if len(blobs) > MAX_SUMMANDS:
            raise BadInputError(
                f"add: {len(blobs)} encrypted vectors, more than the {MAX_SUMMANDS} the "
                "parameters leave headroom for"
            )
        acc = self.accumulator()
        for blob in blobs:
            acc.add(blob)
        return acc.finish()

    def accumulator(self) -> CkksSum:
        """A streaming :meth:`add`: feed encrypted vectors one at a time, then finish once.

        Run by a committee member at aggregation, over uploads read one by one from its
        store: it holds one running sum per chunk and prime (the size of one ciphertext),
        whatever the number of uploads. The result is byte-identical to :meth:`add`.
        """
        return CkksSum(self)


class CkksSum:
    """The running homomorphic sum of :meth:`CkksPublicContext.accumulator` (not thread-safe).

    :meth:`add` checks each encrypted vector as :meth:`CkksPublicContext.check` does (all
    with the first one's value count) and adds its coefficients modulo each prime;
    :meth:`finish` serializes the sum. At most :data:`MAX_SUMMANDS` vectors.
    """

    __slots__ = ("_chunks", "_context", "_count", "_length", "_sizes")

    def __init__(self, context: CkksPublicContext) -> None:
        self._context = context
        self._count = 0
        self._length: int | None = None
        self._sizes: list[int] = []
        self._chunks: list[fastsum.ChunkAccumulator] = []

    @property
    def count(self) -> int:
        """How many encrypted vectors were added."""
        return self._count

    def add(self, blob: bytes) -> None:
        """Check and add one encrypted vector; BadInputError names it by its position."""
        ctx, i = self._context, self._count
        if i >= MAX_SUMMANDS:
            raise BadInputError(
                f"add: more than the {MAX_SUMMANDS} encrypted vectors the parameters leave "
                "headroom for"
            )
        # Decode (and so check) every chunk before adding any: a bad vector changes nothing.
        decoded = ctx.decode(blob, length=self._length, what=f"encrypted vector {i}")
        self._add(decoded.coeffs, decoded.length)

    def add_decoded(self, coeffs: np.ndarray, length: int) -> None:
        """Add the coefficients of a ``length``-value vector that
        :meth:`CkksPublicContext.decode` returned (so already checked; only the shape is
        checked here). Run by a member at aggregation over the arrays it kept at acceptance."""
        if self._count >= MAX_SUMMANDS:
            raise BadInputError(
                f"add: more than the {MAX_SUMMANDS} encrypted vectors the parameters leave "
                "headroom for"
            )
        self._add(coeffs, length)

    def _add(self, coeffs: np.ndarray, length: int) -> None:
        ctx = self._context
        layout = ctx._layout
        sizes = wire.slot_counts(length, ctx.params)
        shape = (len(sizes), fastsum.POLYS, len(layout.primes), layout.poly_modulus_degree)
        if coeffs.shape != shape or (self._length is not None and length != self._length):
            raise BadInputError(
                f"add: a decoded vector of {length} values and shape {coeffs.shape} does not "
                f"match the sum's {self._length} values"
            )
        if self._length is None:
            self._length, self._sizes = length, sizes
            self._chunks = [fastsum.ChunkAccumulator(layout) for _ in sizes]
        for acc, chunk in zip(self._chunks, coeffs, strict=True):
            acc.add(chunk)
        self._count += 1

    def finish(self) -> bytes:
        """The sum as EncryptedVector bytes; the accumulator is spent afterwards."""
        if self._length is None:
            raise BadInputError("add: no encrypted vectors to sum")
        ctx = self._context
        total = np.stack([acc.finish() for acc in self._chunks])
        self._chunks = []
        length, self._length = self._length, None
        header = wire.vector_header(
            kind=wire.KIND_SUM, length=length, chunks=len(total), fingerprint=ctx.fingerprint()
        )
        return header + seeded.encode_sum_chunks(self._sizes, total, ctx._layout)


class CkksSecretContext:
    """The study's CKKS secret key and parameters. Data owners only; never sent in clear."""

    __slots__ = ("_ctx", "_key_id", "_local", "_params", "_public")

    def __init__(self, ctx: Any, params: CkksParams, key_id: bytes) -> None:
        self._ctx = ctx
        self._local = threading.local()  # one SeededEncryptor and SlotDecryptor per thread
        self._params = params
        self._key_id = key_id
        self._public = CkksPublicContext(
            wire.ContextFrame(
                magic=wire.PUBLIC_MAGIC,
                key_id=key_id,
                params=params,
                tenseal_bytes=serialize_context(ctx, secret=False),
            )
        )

    @classmethod
    def generate(cls, params: CkksParams = DEFAULT_PARAMS) -> CkksSecretContext:
        """Run once per study by the data owner that creates the key (then shared sealed)."""
        params.validate()
        return cls(new_context(params), params, secrets.token_bytes(wire.KEY_ID_SIZE))

    @classmethod
    def from_bytes(cls, data: bytes) -> CkksSecretContext:
        """Load :meth:`to_bytes` output; BadInputError if malformed or without a secret key."""
        what = "CKKS secret context"
        frame = wire.parse_context(data, magic=wire.SECRET_MAGIC, what=what)
        ctx = load_context(frame.tenseal_bytes, frame.params, what=what)
        if not ctx.has_secret_key():
            raise BadInputError(f"{what}: holds no secret key")
        return cls(ctx, frame.params, frame.key_id)

    def to_bytes(self) -> bytes:
        """Serialized context WITH the secret key: for key stores and sealed boxes only."""
        return wire.ContextFrame(
            magic=wire.SECRET_MAGIC,
            key_id=self._key_id,
            params=self._params,
            tenseal_bytes=serialize_context(self._ctx, secret=True),
        ).to_bytes()

    @property
    def params(self) -> CkksParams:
        return self._params

    def public(self) -> CkksPublicContext:
        """The context to send to the committee and coordinator: no secret/Galois/relin keys."""
        return self._public

    def __repr__(self) -> str:
        fingerprint = self._public.fingerprint()[:8].hex()
        return f"CkksSecretContext({self._params}, fingerprint={fingerprint})"

    def encrypt(self, vector: np.ndarray) -> bytes:
        """Run by a data owner on its (weighted) update: EncryptedVector bytes.

        Each chunk is a *seeded* symmetric ciphertext of up to N values, two per complex
        slot: ``c0`` and the 64-byte seed its ``c1`` expands from (fresh from the system
        CSPRNG per ciphertext, drawn by SEAL), a quarter of the bytes of TenSEAL's own
        serialization of the same values; see docs/ckks-parameters.md.

        BadInputError if ``vector`` is not a non-empty 1-D real vector, holds NaN or inf, or
        has a value with ``|value| > params.max_abs`` (the message names the first index).
        """
        v = np.asarray(vector)
        if v.dtype.kind not in "fiu":
            raise BadInputError(f"encrypt: expected real numbers, got dtype {v.dtype}")
        if v.ndim != 1:
            raise BadInputError(f"encrypt: expected a 1-D vector, got shape {v.shape}")
        if v.size == 0:
            raise BadInputError("encrypt: vector is empty")
        v = v.astype(np.float64, copy=False)
        finite = np.isfinite(v)
        if not finite.all():
            i = int(np.argmin(finite))
            kind = "NaN" if np.isnan(v[i]) else "infinite"
            raise BadInputError(f"encrypt: value at index {i} is {kind}")
        too_big = np.abs(v) > self._params.max_abs
        if too_big.any():
            i = int(np.argmax(too_big))
            raise BadInputError(
                f"encrypt: value at index {i} exceeds max_abs {self._params.max_abs:g} in magnitude"
            )
        per_chunk = self._params.values_per_ciphertext
        encryptor: SeededEncryptor | None = getattr(self._local, "encryptor", None)
        if encryptor is None:
            encryptor = self._local.encryptor = SeededEncryptor(
                self._ctx, self._params, self._public._layout
            )
        chunks = tuple(
            encryptor.encrypt(v[start : start + per_chunk]) for start in range(0, v.size, per_chunk)
        )
        return wire.VectorFrame(
            length=int(v.size),
            fingerprint=self._public.fingerprint(),
            chunks=chunks,
            kind=wire.KIND_UPLOAD,
        ).to_bytes()

    def decrypt(self, blob: bytes) -> np.ndarray:
        """Run by a data owner on the committee's sum: float64 values (sum of the inputs).

        Values are rounded to multiples of ``params.release_grid`` so that what a data owner
        releases does not carry the exact decryption noise (see docs/ckks-parameters.md).
        """
        frame = wire.parse_vector(blob, self._params, fingerprint=self._public.fingerprint())
        per_chunk = self._params.values_per_ciphertext
        out = np.empty(frame.length, dtype=np.float64)
        sizes = wire.chunk_sizes(frame.length, self._params)
        decryptor: SlotDecryptor | None = getattr(self._local, "decryptor", None)
        if decryptor is None:
            decryptor = self._local.decryptor = SlotDecryptor(self._ctx)
        public = self._public
        for j, (chunk, size) in enumerate(zip(frame.chunks, sizes, strict=True)):
            slots = -(-size // 2)
            where = f"encrypted vector: chunk {j}"
            if frame.kind != wire.KIND_SEAL:  # a sum or an upload: as SEAL reads it
                coeffs = public._decode(frame.kind, chunk, where, slots)
                chunk = fastsum.encode_chunk(coeffs, public._layout, None, size=slots)
            vec = load_chunk(self._ctx, self._params, chunk, where=where, size=slots)
            values = unpack_complex(decryptor.decrypt(vec)[:slots], size)
            out[j * per_chunk : j * per_chunk + size] = values
        steps = 1.0 / self._params.release_grid  # a power of two: exact scaling
        return np.round(out * steps) / steps


def dealt_context_digest(study_id: str, fingerprint: bytes) -> bytes:
    """What the key dealer signs for a study's public context:
    ``tagged_hash(Tag.DEALT_CONTEXT, study id bytes, context fingerprint)``.

    Committee members and the other data owners check it with the dealer key of the approved
    manifest, so a context the coordinator made up is refused.
    """
    try:
        study = bytes.fromhex(study_id)
    except ValueError:
        raise BadInputError("dealt context: study id is not hex") from None
    return tagged_hash(Tag.DEALT_CONTEXT, study, fingerprint)
