"""The TenSEAL calls behind :mod:`cohort.crypto.ckks`, kept in one place.

Everything here takes or returns TenSEAL objects (untyped, hence ``Any``) and turns
TenSEAL's assorted exceptions on malformed input into :class:`BadInputError`. Swapping the
CKKS backend means replacing this module only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts

from cohort.crypto.ckks_params import CkksParams
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
    """Encrypt at most ``slots`` float64 values under the secret key in ``ctx``."""
    return bytes(ts.ckks_vector(ctx, values).serialize())


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
    """Deserialize one chunk under ``ctx`` and check it is a fresh-shaped ciphertext."""
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
            f"{where} is not a {size}-value CKKS ciphertext at scale 2**{params.scale_bits}"
        )
    return vec
