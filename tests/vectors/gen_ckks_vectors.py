"""Write tests/vectors/ckks_vectors.json: seeded CKKS chunk test vectors, passing and failing.

Run from the repository root::

    python tests/vectors/gen_ckks_vectors.py

One chunk of an EncryptedVector is TenSEAL's CKKSVectorProto around a SEAL ciphertext; an
upload's ciphertext is *seeded*: its body holds ``c0`` and a UniformRandomGeneratorInfo
(SEAL header | u8 PRNG type 1 = Blake2xb | 64-byte seed) instead of ``c1``
(docs/ckks-parameters.md, "Seeded uploads"). The vectors are built deterministically under
:data:`~cohort.crypto.ckks_params.DEFAULT_PARAMS`: ``c0`` from a fixed numpy generator, fixed
seeds, SEAL's zstd. They are not encryptions of anything (no secret key is involved); what
they pin is the format and the expansion of ``c1``. A passing vector gives the SHA-256 of
the decoded ``(2, 1, N)`` little-endian uint64 coefficients; the generator confirms each
against SEAL itself (TenSEAL loads the chunk, expanding the seed in C++, and re-serializes it
unseeded) and refuses to write a vector the two disagree on. A rerun reproduces the file
exactly; ``test_ckks_vectors.py`` checks that.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import vectorkit

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.ckks_params import DEFAULT_PARAMS
from cohort.crypto.ckks_tenseal import seal_zstd
from cohort.errors import BadInputError

OUTPUT = Path(__file__).with_name("ckks_vectors.json")
FORMAT = "cohort-ckks-chunk-vectors/v1"
SEED_A = bytes(range(64))
SEED_B = hashlib.sha512(b"cohort ckks vector seed b").digest()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def build_chunk(
    layout: fastsum.Layout,
    *,
    size: int,
    c0_seed: int | None,
    seed: bytes,
    primes: int | None = None,
    scale: float | None = None,
    n: int | None = None,
    prng: int = fastsum.PRNG_BLAKE2XB,
    unreduced: bool = False,
    truncate: int = 0,
) -> bytes:
    """A seeded chunk; the keyword arguments after ``seed`` make it faulty."""
    ring = layout.poly_modulus_degree
    q = layout.primes[0]
    shape = (len(layout.primes), ring)
    if c0_seed is None:  # zeros: compress to almost nothing, for the failing vectors
        c0 = np.zeros(shape, dtype=np.uint64)
    else:
        c0 = np.random.default_rng(c0_seed).integers(0, q, size=shape, dtype=np.uint64)
    if unreduced:
        c0[0, 7] = q
    scale = layout.scale if scale is None else scale
    major, minor = layout.version
    count = c0.size
    members = fastsum.CT_MEMBERS.pack(
        *layout.parms_id,
        1,
        fastsum.POLYS,
        ring if n is None else n,
        len(layout.primes) if primes is None else primes,
        scale,
        1,
    )
    array = fastsum.SEAL_HEADER.pack(
        fastsum.SEAL_MAGIC, 16, major, minor, fastsum.COMPR_NONE, 0, 24 + 8 * count
    ) + fastsum.COUNT.pack(count)
    info = (
        fastsum.SEAL_HEADER.pack(
            fastsum.SEAL_MAGIC, 16, major, minor, fastsum.COMPR_NONE, 0, 17 + len(seed)
        )
        + bytes([prng])
        + seed
    )
    raw = members + array + c0.astype("<u8").tobytes() + info
    packed = seal_zstd().compress(raw)
    seal = (
        fastsum.SEAL_HEADER.pack(
            fastsum.SEAL_MAGIC, 16, major, minor, fastsum.COMPR_ZSTD, 0, 16 + len(packed)
        )
        + packed
    )
    sizes = _varint(size)
    chunk = b"".join(
        (b"\x0a", _varint(len(sizes)), sizes, b"\x12", _varint(len(seal)), seal, b"\x19")
    ) + struct.pack("<d", scale)
    return chunk[: len(chunk) - truncate] if truncate else chunk


def _layout_and_context() -> tuple[fastsum.Layout, Any]:
    secret = CkksSecretContext.generate(DEFAULT_PARAMS)
    return secret.public()._layout, secret._ctx


CASES: dict[str, dict[str, Any]] = {
    "full_chunk": {"size": 4096, "c0_seed": 1, "seed": SEED_A},
    "short_chunk": {"size": 10, "c0_seed": None, "seed": SEED_B},
}
# Failing cases: keyword changes to build_chunk, and the exact error the decoder gives.
FAILURES: dict[str, tuple[dict[str, Any], str]] = {
    "truncated": (
        {"truncate": 5},
        "chunk does not deserialize: scale is truncated",
    ),
    "truncated_ciphertext": (
        {"truncate": 20},
        "chunk does not deserialize: ciphertext is truncated",
    ),
    "wrong_prime_count": (
        {"primes": 2},
        "chunk is not a 4096-slot CKKS ciphertext under this context: 2 primes in its "
        "modulus, expected 1",
    ),
    "wrong_seed_length": (
        {"seed": SEED_A[:32]},
        "chunk does not deserialize: seed block holds 49 bytes, expected 81 (SEAL header, "
        "PRNG type, 64-byte seed)",
    ),
    "wrong_prng": (
        {"prng": 2},
        "chunk does not deserialize: seed for PRNG type 2, expected 1 (Blake2xb)",
    ),
    "wrong_scale": (
        {"scale": 2.0**40},
        "chunk is not a 4096-slot CKKS ciphertext under this context: scale 2**40, expected 2**30",
    ),
    "wrong_ring_dimension": (
        {"n": 4096},
        "chunk is not a 4096-slot CKKS ciphertext under this context: ring dimension "
        "N=4096, expected 8192",
    ),
    "unreduced_coefficient": (
        {"unreduced": True},
        "chunk is not a 4096-slot CKKS ciphertext under this context: a coefficient is "
        "not reduced modulo prime 0",
    ),
}


def _digest(coeffs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(coeffs, dtype="<u8").tobytes()).hexdigest()


def build_vectors() -> dict[str, Any]:
    layout, ctx = _layout_and_context()
    codec = seal_zstd()
    vectors: list[dict[str, Any]] = []
    for name, case in CASES.items():
        chunk = build_chunk(layout, **case)
        decoded = fastsum.decode_chunk(chunk, layout, codec, size=case["size"], where="chunk")
        # SEAL's own expansion: TenSEAL loads the seeded chunk and saves it unseeded.
        full = bytes(ts.ckks_vector_from(ctx, chunk).serialize())
        ref = fastsum.decode_chunk(full, layout, codec, size=case["size"], where="chunk")
        if not np.array_equal(decoded, ref):
            raise SystemExit(f"{name}: the seed expansion disagrees with SEAL's")
        vectors.append(
            {
                "name": name,
                "success": True,
                "size": case["size"],
                "chunk": chunk.hex(),
                "coefficients_sha256": _digest(decoded),
            }
        )
    base = {**CASES["full_chunk"], "c0_seed": None}
    for name, (change, reason) in FAILURES.items():
        chunk = build_chunk(layout, **{**base, **change})
        try:
            fastsum.decode_chunk(chunk, layout, codec, size=base["size"], where="chunk")
        except BadInputError as exc:
            if str(exc) != reason:
                raise SystemExit(f"{name}: expected {reason!r}, got {str(exc)!r}") from None
        else:
            raise SystemExit(f"{name}: the decoder accepts it")
        vectors.append(
            {
                "name": name,
                "success": False,
                "size": base["size"],
                "chunk": chunk.hex(),
                "error": "BadInputError",
                "reason": reason,
            }
        )
    p = DEFAULT_PARAMS
    return {
        "format": FORMAT,
        "params": {
            "poly_modulus_degree": p.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes),
            "scale_bits": p.scale_bits,
        },
        "primes": [str(q) for q in layout.primes],
        "parms_id": [str(x) for x in layout.parms_id],
        "vectors": vectors,
    }


def render() -> str:
    return vectorkit.render(build_vectors())


def main() -> int:
    return vectorkit.write(OUTPUT, render())


if __name__ == "__main__":
    sys.exit(main())
