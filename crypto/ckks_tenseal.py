"""The TenSEAL calls behind :mod:`cohort.crypto.ckks`, kept in one place.

Everything here takes or returns TenSEAL objects (untyped, hence ``Any``) and turns
TenSEAL's assorted exceptions on malformed input into :class:`BadInputError`. Swapping the
CKKS backend means replacing this module only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import tempfile
from functools import cache
from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from cohort.crypto.ckks_fastsum import PRNG_BLOCK_BYTES, Layout, decode_chunk
from cohort.crypto.ckks_params import CkksParams
from cohort.crypto.ckks_seeded import Rebaser
from cohort.errors import BadInputError, ConfigError


def new_context(params: CkksParams) -> Any:
    """A fresh symmetric-key CKKS context (secret key included) for validated ``params``."""
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
    except ValueError as exc:
        raise ConfigError(f"TenSEAL rejects CKKS parameters {params}: {exc}") from None
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def encrypt_chunk(ctx: Any, values: np.ndarray) -> bytes:
    """Encrypt at most ``slots`` float64 values, one per slot, under the secret key in
    ``ctx``: TenSEAL's own (unseeded, two-polynomial) ciphertext. The reference that tests
    hold the fast sum to; uploads use :class:`SeededEncryptor`."""
    return bytes(ts.ckks_vector(ctx, values).serialize())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


class SeededEncryptor:
    """A data owner's upload chunks: SEAL's symmetric encryption (``Encryptor::
    encrypt_symmetric``), re-based onto a ChaCha20 seed (:mod:`cohort.crypto.ckks_seeded`).

    SEAL returns a ``Serializable<Ciphertext>`` whose ``c1`` is a Blake2xb stream under a
    seed SEAL draws from the system CSPRNG; it is expanded here once (SEAL's rule,
    :func:`cohort.crypto.ckks_fastsum.decode_chunk`) and the ciphertext re-based onto a
    fresh 32-byte seed whose ChaCha20 expansion costs a member a tenth as much. Not
    thread-safe: one per thread (SEAL's Serializable saves only to a path, so each instance
    owns a file).
    """

    def __init__(self, ctx: Any, params: CkksParams, layout: Layout) -> None:
        seal = ctx.seal_context().data
        self._encoder = sealapi.CKKSEncoder(seal)
        self._encryptor = sealapi.Encryptor(seal, ctx.secret_key().data)
        self._rebaser = Rebaser(secret_ntt(ctx, layout), layout)
        self._layout = layout
        self._codec = seal_zstd()
        self._scale = 2.0**params.scale_bits
        self._scale_bytes = struct.pack("<d", self._scale)
        # A RAM-backed folder where there is one: SEAL's save opens the path per ciphertext.
        # mkstemp makes the name unpredictable and the file private (0600); what is written
        # there is a fresh ciphertext (its c0 and SEAL's seed for c1), removed on close.
        shm = "/dev/shm"  # noqa: S108
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
        fd, self._path = tempfile.mkstemp(prefix="cohort-ckks-", suffix=".ct", dir=base)
        os.close(fd)

    def __del__(self) -> None:
        path = getattr(self, "_path", None)
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def encrypt(self, values: np.ndarray) -> bytes:
        """At most N float64 values as one upload chunk, two per complex slot:
        ``values[2j] + i*values[2j+1]`` (:func:`pack_complex`)."""
        slots = pack_complex(values)
        plain = sealapi.Plaintext()
        self._encoder.encode(slots.tolist(), self._scale, plain)
        self._encryptor.encrypt_symmetric(plain).save(self._path)
        with open(self._path, "rb") as f:
            seal = f.read()
        sizes = _varint(int(slots.size))
        fresh = b"".join(
            (
                b"\x0a",
                _varint(len(sizes)),
                sizes,
                b"\x12",
                _varint(len(seal)),
                seal,
                b"\x19",
                self._scale_bytes,
            )
        )
        coeffs = decode_chunk(fresh, self._layout, self._codec, size=slots.size, where="SEAL")
        return self._rebaser.rebase(coeffs, slots.size)


def secret_ntt(ctx: Any, layout: Layout) -> np.ndarray:
    """The secret key in ``ctx`` in NTT form for ``layout``'s primes, ``(primes, N)`` uint64
    (the key level's first primes are the data level's). Secret: for :class:`Rebaser` only."""
    key = ctx.secret_key().data.data()
    count = len(layout.primes) * layout.poly_modulus_degree
    values = np.fromiter((key.data(i) for i in range(count)), dtype=np.uint64, count=count)
    return values.reshape(len(layout.primes), layout.poly_modulus_degree)


def pack_complex(values: np.ndarray) -> np.ndarray:
    """``ceil(n / 2)`` complex slots from ``n`` reals: slot ``j`` is
    ``values[2j] + i*values[2j+1]`` (imaginary part 0 past an odd count)."""
    out = np.zeros(-(-values.size // 2), dtype=np.complex128)
    out.real = values[0::2]
    out.imag[: values.size // 2] = values[1::2]
    return out


def unpack_complex(slots: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` reals of :func:`pack_complex`'s ``slots`` (float64)."""
    out = np.empty(2 * slots.size, dtype=np.float64)
    out[0::2] = slots.real
    out[1::2] = slots.imag
    return out[:count]


class SlotDecryptor:
    """SEAL's decryption and complex decoding under the secret key in ``ctx``: the slots of
    a chunk that :func:`load_chunk` loaded. Not thread-safe: one per thread."""

    def __init__(self, ctx: Any) -> None:
        seal = ctx.seal_context().data
        self._encoder = sealapi.CKKSEncoder(seal)
        self._decryptor = sealapi.Decryptor(seal, ctx.secret_key().data)

    def decrypt(self, vec: Any) -> np.ndarray:
        """All N/2 slots of ``vec``'s ciphertext, complex128."""
        plain = sealapi.Plaintext()
        self._decryptor.decrypt(vec.ciphertext()[0], plain)
        return np.array(self._encoder.decode_complex(plain), dtype=np.complex128)


def serialize_context(ctx: Any, *, secret: bool) -> bytes:
    # A symmetric context has no public key; Galois and relin keys are never needed to add.
    data: bytes = ctx.serialize(
        save_public_key=False,
        save_secret_key=secret,
        save_galois_keys=False,
        save_relin_keys=False,
    )
    return data


def load_context(raw: bytes, params: CkksParams, *, what: str) -> Any:
    """Deserialize a TenSEAL context and check it matches ``params``."""
    try:
        ctx = ts.context_from(raw)
        seal = ctx.seal_context().data
        n = seal.key_context_data().parms().poly_modulus_degree()
        total_bits = seal.key_context_data().total_coeff_modulus_bit_count()
        data_bits = seal.first_context_data().total_coeff_modulus_bit_count()
        data_levels = seal.first_context_data().chain_index() + 1
        scale = ctx.global_scale
    except Exception:  # TenSEAL raises assorted types on malformed input
        raise BadInputError(f"{what}: TenSEAL context does not deserialize") from None
    if (
        n != params.poly_modulus_degree
        or total_bits != sum(params.coeff_mod_bit_sizes)
        or data_bits != params.data_prime_bits
        or data_levels != 1
        or scale != 2.0**params.scale_bits
    ):
        raise BadInputError(f"{what}: TenSEAL context does not match its declared parameters")
    if ctx.has_galois_keys() or ctx.has_relin_keys():
        raise BadInputError(f"{what}: holds Galois or relinearization keys; none are allowed")
    return ctx


def load_chunk(ctx: Any, params: CkksParams, data: bytes, *, where: str, size: int) -> Any:
    """Deserialize one chunk under ``ctx`` and check it is a fresh-shaped ciphertext of
    ``size`` slots."""
    try:
        vec = ts.ckks_vector_from(ctx, data)
        cts = vec.ciphertext()
        ok = (
            vec.size() == size
            and len(cts) == 1
            and cts[0].size() == 2
            and cts[0].is_ntt_form()
            and cts[0].coeff_modulus_size() == 1
            and cts[0].poly_modulus_degree() == params.poly_modulus_degree
            and cts[0].scale == 2.0**params.scale_bits
        )
    except Exception:  # TenSEAL raises assorted types on malformed input
        raise BadInputError(f"{where} does not deserialize under this CKKS context") from None
    if not ok:
        raise BadInputError(
            f"{where} is not a {size}-slot CKKS ciphertext at scale 2**{params.scale_bits}"
        )
    return vec


def seal_layout(ctx: Any, params: CkksParams, *, what: str) -> Layout:
    """The data level of ``ctx`` as :mod:`cohort.crypto.ckks_fastsum` checks it: SEAL's
    primes for ``params`` (recomputed with ``sealapi``), confirmed by the context's parms_id."""
    n = params.poly_modulus_degree
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, list(params.coeff_mod_bit_sizes)))
    ref = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
    parms_id = tuple(int(x) for x in ref.first_parms_id())
    if parms_id != tuple(int(x) for x in ctx.seal_context().data.first_parms_id()):
        raise BadInputError(f"{what}: SEAL's prime chain for {params} differs from the context's")
    primes = tuple(int(m.value()) for m in ref.first_context_data().parms().coeff_modulus())
    header = sealapi.Serialization.SEALHeader()
    return Layout(
        poly_modulus_degree=n,
        primes=primes,
        parms_id=(parms_id[0], parms_id[1], parms_id[2], parms_id[3]),
        scale=2.0**params.scale_bits,
        version=(int(header.version_major), int(header.version_minor)),
    )


class SealZstd:
    """The zstd and Blake2xb that SEAL inside TenSEAL links (exported by TenSEAL's extension
    module), so compressed output is byte-identical to SEAL's ``compr_mode_type::zstd`` and
    an expanded seed equals SEAL's ``Blake2xbPRNG`` stream."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(ts._ts_cpp.__file__)
        size_t, ptr = ctypes.c_size_t, ctypes.c_void_p
        try:
            self._compress = lib.ZSTD_compress2
            self._decompress = lib.ZSTD_decompress
            self._bound = lib.ZSTD_compressBound
            self._new, self._free = lib.ZSTD_createCCtx, lib.ZSTD_freeCCtx
            self._is_error = lib.ZSTD_isError
            self._content_size = lib.ZSTD_getFrameContentSize
            self._blake2xb = lib.blake2xb
        except AttributeError:
            raise ConfigError(
                "this TenSEAL build exports no zstd or blake2xb: the fast CKKS sum needs them"
            ) from None
        self._blake2xb.argtypes = [ptr, size_t, ptr, size_t, ptr, size_t]
        self._blake2xb.restype = ctypes.c_int
        self._compress.argtypes = [ptr, ptr, size_t, ptr, size_t]
        self._decompress.argtypes = [ptr, size_t, ptr, size_t]
        self._compress.restype = self._decompress.restype = self._bound.restype = size_t
        self._bound.argtypes = [size_t]
        self._new.restype = ptr
        self._free.argtypes = [ptr]
        self._is_error.argtypes = [size_t]
        self._is_error.restype = ctypes.c_uint
        self._content_size.argtypes = [ptr, size_t]
        self._content_size.restype = ctypes.c_ulonglong

    def compress(self, data: bytes) -> bytes:
        """Like SEAL's ``zstd_deflate_array_inplace``: one frame, default parameters."""
        out = ctypes.create_string_buffer(self._bound(len(data)))
        cctx = self._new()
        try:
            n = self._compress(cctx, out, len(out), data, len(data))
        finally:
            self._free(cctx)
        if self._is_error(n):
            raise RuntimeError(f"zstd compression failed (code {n})")
        return out.raw[:n]

    def decompress_into(self, data: memoryview, out: np.ndarray) -> int:
        src = np.frombuffer(data, dtype=np.uint8)
        n = self._decompress(out.ctypes.data, out.size, src.ctypes.data, src.size)
        return -1 if self._is_error(n) else int(n)

    def prng_stream(self, seed: bytes, nbytes: int) -> np.ndarray:
        """The first ``nbytes`` (a multiple of the block size) of SEAL's ``Blake2xbPRNG``
        keyed by ``seed``: block ``k`` is ``blake2xb(outlen=4096, in=u64le(k), key=seed)``."""
        block = PRNG_BLOCK_BYTES
        if nbytes % block:
            raise ValueError(f"prng_stream: {nbytes} is not a multiple of {block}")
        out = np.empty(nbytes, dtype=np.uint8)
        key = ctypes.create_string_buffer(seed, len(seed))
        counter = ctypes.c_uint64(0)
        base = out.ctypes.data
        for k in range(nbytes // block):
            counter.value = k
            rc = self._blake2xb(base + k * block, block, ctypes.byref(counter), 8, key, len(seed))
            if rc != 0:
                raise RuntimeError("blake2xb failed")
        return out

    def content_size(self, data: memoryview) -> int:
        src = np.frombuffer(data, dtype=np.uint8)
        n = int(self._content_size(src.ctypes.data, src.size))
        return -1 if n >= (1 << 64) - 2 else n  # ZSTD_CONTENTSIZE_UNKNOWN / _ERROR


@cache
def seal_zstd() -> SealZstd:
    return SealZstd()
