"""Measure CKKS parameter candidates for docs/ckks-parameters.md (not a pytest module).

    .venv/bin/python tests/crypto/ckks_measure.py [--length 1000000] [--uploads 10]

For each candidate: wire bytes per value of one upload (EncryptedVector framing
included), ratio to float32, encrypt / add / decrypt times, the max error of one fresh
upload, and the max error of the weighted mean of ``--uploads`` updates
(weights = example counts 30..120, update values ~ N(0, 0.05)) computed two ways:
clients encrypt ``(n_i / sum n) * u_i`` ("normalized"), or ``n_i * u_i`` and the sum is
divided by ``sum n`` afterwards ("counts"; only where ``n_i * |u_i|`` fits ``max_abs``).
Errors include the rounding of decrypted values to ``params.release_grid``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cohort.crypto.ckks import DEFAULT_PARAMS, CkksParams, CkksSecretContext

CANDIDATES = [
    CkksParams(4096, (54, 55), 40),
    CkksParams(4096, (40, 60), 28),
    CkksParams(4096, (48, 60), 30),
    CkksParams(8192, (40, 60), 28),
    CkksParams(8192, (44, 60), 30),
    DEFAULT_PARAMS,
    CkksParams(8192, (52, 60), 30),
    CkksParams(8192, (60, 60), 40),
]


def measure(params: CkksParams, length: int, uploads: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    secret = CkksSecretContext.generate(params)
    public = secret.public()
    counts = rng.integers(30, 121, size=uploads)
    updates = [rng.normal(0, 0.05, length) for _ in range(uploads)]
    mean = np.average(np.stack(updates), axis=0, weights=counts)
    weights = counts / counts.sum()

    t0 = time.perf_counter()
    blobs = [secret.encrypt(w * u) for w, u in zip(weights, updates, strict=True)]
    t_enc = (time.perf_counter() - t0) / uploads
    t0 = time.perf_counter()
    total = public.add(blobs)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    decrypted = secret.decrypt(total)
    t_dec = time.perf_counter() - t0
    fresh = float(np.max(np.abs(secret.decrypt(blobs[0]) - weights[0] * updates[0])))
    out = {
        "bytes_per_value": len(blobs[0]) / length,
        "ratio_f32": len(blobs[0]) / (4 * length),
        "encrypt_s": t_enc,
        "add_s": t_add,
        "decrypt_s": t_dec,
        "fresh_err": fresh,
        "mean_err_normalized": float(np.max(np.abs(decrypted - mean))),
        "mean_err_counts": float("nan"),
    }
    biggest = max(float(np.max(np.abs(n * u))) for n, u in zip(counts, updates, strict=True))
    if biggest <= params.max_abs:
        blobs = [secret.encrypt(n * u) for n, u in zip(counts, updates, strict=True)]
        summed = secret.decrypt(public.add(blobs)) / counts.sum()
        out["mean_err_counts"] = float(np.max(np.abs(summed - mean)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--default-only", action="store_true", help="measure DEFAULT_PARAMS only")
    args = parser.parse_args()
    print(
        "| N | primes (bits) | scale | max_abs | bytes/value | x float32 | encrypt s | add s "
        "| decrypt s | fresh err | mean err (normalized) | mean err (counts) |"
    )
    print("|---" * 12 + "|")
    for params in [DEFAULT_PARAMS] if args.default_only else CANDIDATES:
        m = measure(params, args.length, args.uploads, args.seed)
        primes = "+".join(str(b) for b in params.coeff_mod_bit_sizes)
        print(
            f"| {params.poly_modulus_degree} | {primes} | 2^{params.scale_bits} "
            f"| {params.max_abs:g} | {m['bytes_per_value']:.2f} | {m['ratio_f32']:.2f} "
            f"| {m['encrypt_s']:.2f} | {m['add_s']:.2f} | {m['decrypt_s']:.2f} "
            f"| {m['fresh_err']:.1e} | {m['mean_err_normalized']:.1e} "
            f"| {m['mean_err_counts']:.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
