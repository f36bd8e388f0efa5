"""Write tests/vectors/ckks_upload_vectors.json: CKKS upload chunk test vectors, passing and
failing.

Run from the repository root::

    python tests/vectors/gen_ckks_upload_vectors.py

An upload chunk (:mod:`cohort.crypto.ckks_seeded`) is ``u32 slots | 32-byte seed | c0`` with
each coefficient of the 48-bit default prime in 6 little-endian bytes; ``c1`` is the
ChaCha20 expansion of the seed. The vectors are built deterministically under
:data:`~cohort.crypto.ckks_params.DEFAULT_PARAMS`: ``c0`` from a fixed numpy generator, fixed
seeds. They are not encryptions of anything (no secret key is involved); what they pin is the
format and the expansion of ``c1``. A passing vector gives the SHA-256 of the decoded
``(2, 1, N)`` little-endian uint64 coefficients and the first expanded ``c1`` words; a failing
one is an edit of the full chunk (:func:`apply_edit`: keep a prefix, overwrite bytes, append
bytes) and the exact reason. A rerun reproduces the file exactly; ``test_ckks_upload_vectors.py``
checks that.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import vectorkit

from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto import ckks_seeded as seeded
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.ckks_params import DEFAULT_PARAMS
from cohort.errors import BadInputError

OUTPUT = Path(__file__).with_name("ckks_upload_vectors.json")
FORMAT = "cohort-ckks-upload-chunk-vectors/v1"
SEED_A = bytes(range(32))
SEED_B = hashlib.sha256(b"cohort ckks upload vector seed b").digest()


def build_chunk(layout: fastsum.Layout, *, slots: int, c0_seed: int, seed: bytes) -> bytes:
    q = layout.primes[0]
    shape = (len(layout.primes), layout.poly_modulus_degree)
    c0 = np.random.default_rng(c0_seed).integers(0, q, size=shape, dtype=np.uint64)
    return seeded.encode_chunk(slots, seed, c0, layout)


def _layout() -> fastsum.Layout:
    return CkksSecretContext.generate(DEFAULT_PARAMS).public()._layout


CASES: dict[str, dict[str, Any]] = {
    "full_chunk": {"slots": 4096, "c0_seed": 1, "seed": SEED_A},
    "short_chunk": {"slots": 5, "c0_seed": 2, "seed": SEED_B},
}


def _failures(layout: fastsum.Layout) -> dict[str, tuple[dict[str, Any], int, str]]:
    """name -> (edit of the full chunk, expected slots, exact reason). An edit keeps the
    first ``keep`` bytes (all if absent), then writes ``write`` (hex) at ``at``, then
    appends ``append`` (hex)."""
    size = seeded.chunk_size(layout)
    q = layout.primes[0]
    at = seeded.HEADER.size + seeded.SEED_BYTES + 6 * 7
    return {
        "truncated": (
            {"keep": size - 1},
            4096,
            f"chunk holds {size - 1} bytes, an upload chunk is {size}",
        ),
        "trailing_byte": (
            {"append": "00"},
            4096,
            f"chunk holds {size + 1} bytes, an upload chunk is {size}",
        ),
        "empty": ({"keep": 0}, 4096, f"chunk holds 0 bytes, an upload chunk is {size}"),
        "wrong_slot_count": (
            {"at": 0, "write": struct.pack("<I", 4095).hex()},
            4096,
            "chunk fills 4095 slots, expected 4096",
        ),
        "unreduced_coefficient": (
            {"at": at, "write": q.to_bytes(8, "little")[:6].hex()},
            4096,
            "chunk: a coefficient is not reduced modulo prime 0",
        ),
    }


def apply_edit(chunk: bytes, edit: dict[str, Any]) -> bytes:
    """A failing vector's chunk: ``edit`` (see :func:`_failures`) of ``chunk``."""
    out = bytearray(chunk[: edit.get("keep", len(chunk))])
    if "write" in edit:
        data = bytes.fromhex(edit["write"])
        out[edit["at"] : edit["at"] + len(data)] = data
    out += bytes.fromhex(edit.get("append", ""))
    return bytes(out)


def _digest(coeffs: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(coeffs, dtype="<u8").tobytes()).hexdigest()


def build_vectors() -> dict[str, Any]:
    layout = _layout()
    vectors: list[dict[str, Any]] = []
    for name, case in CASES.items():
        chunk = build_chunk(layout, **case)
        coeffs = seeded.decode_chunk(chunk, layout, size=case["slots"], where="chunk")
        vectors.append(
            {
                "name": name,
                "success": True,
                "slots": case["slots"],
                "chunk": chunk.hex(),
                "coefficients_sha256": _digest(coeffs),
                "c1_first_words": [str(int(w)) for w in coeffs[1, 0, :4]],
            }
        )
    good = build_chunk(layout, **CASES["full_chunk"])
    for name, (edit, slots, reason) in _failures(layout).items():
        chunk = apply_edit(good, edit)
        try:
            seeded.decode_chunk(chunk, layout, size=slots, where="chunk")
        except BadInputError as exc:
            if str(exc) != reason:
                raise SystemExit(f"{name}: expected {reason!r}, got {str(exc)!r}") from None
        else:
            raise SystemExit(f"{name}: the decoder accepts it")
        vectors.append(
            {
                "name": name,
                "success": False,
                "slots": slots,
                "base": "full_chunk",
                "edit": edit,
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
        "vectors": vectors,
    }


def render() -> str:
    return vectorkit.render(build_vectors())


def main() -> int:
    return vectorkit.write(OUTPUT, render())


if __name__ == "__main__":
    sys.exit(main())
