"""CKKS parameters for pure homomorphic addition, checked against the HE security standard.

Cohort's committee only ever adds ciphertexts, so a ciphertext needs no multiplicative
depth: one data prime carries the values, and a second, "special" prime exists only
because TenSEAL generates key-switching keys when it builds a context (those keys are
never serialized or shipped). See docs/ckks-parameters.md for the measurements behind
:data:`DEFAULT_PARAMS`.

Capacity. Two reals share one complex slot (``v[2j] + i*v[2j+1]``, see
:attr:`CkksParams.values_per_ciphertext`), so a slot's magnitude is at most ``sqrt(2)``
times ``max |v|``, and the canonical embedding bounds every plaintext coefficient by the
largest slot magnitude, below ``2 * max |v|``. Decryption is correct while a coefficient,
plus noise, stays under half the data prime ``q0``. A prime of ``b`` bits is at least
``2**(b-1)``, so a sum whose reals satisfy ``|sum| < 2**(b - 3 - scale_bits)`` is always safe
(SEAL picks primes just under ``2**b``, which leaves one more bit for noise).
:attr:`CkksParams.max_abs` divides that bound by :data:`MAX_SUMMANDS`, so that any sum of
up to that many valid uploads decrypts without wrap-around.
"""

from __future__ import annotations

from dataclasses import dataclass

from cohort.errors import ConfigError

# Largest total coefficient modulus (bits) for 128-bit classical security with a ternary
# secret, per the Homomorphic Encryption Security Standard (Albrecht et al., 2018), Table 1.
HE_STANDARD_128_MAX_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

SUMMAND_BITS = 10
MAX_SUMMANDS = 1 << SUMMAND_BITS  # uploads one homomorphic sum may hold
MIN_SCALE_BITS = 20  # below this the encoding error passes 1e-3
MAX_PRIME_BITS = 60  # SEAL's limit for one RNS prime
# Decrypted values are rounded to multiples of 2**-(scale_bits - RELEASE_DROP_BITS): the
# grid is coarser than the CKKS noise of a sum, so a released aggregate does not hand out
# the exact noise that approximate-decryption key-recovery attacks (Li-Micciancio) need.
RELEASE_DROP_BITS = 14
# Bits between the data prime and the largest coefficient of a valid sum: one because a
# prime of b bits may be as small as 2**(b-1), one for the sign (correct while under q/2),
# one because two reals packed in a complex slot can reach twice the larger of them.
HEADROOM_BITS = 3


@dataclass(frozen=True)
class CkksParams:
    """Ring dimension, the two prime sizes (data prime, special prime) and the scale."""

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext (N / 2)."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Reals per ciphertext (N): two per complex slot, ``v[2j] + i*v[2j+1]``."""
        return self.poly_modulus_degree

    @property
    def data_prime_bits(self) -> int:
        return self.coeff_mod_bit_sizes[0]

    @property
    def max_abs(self) -> float:
        """Largest |value| :meth:`CkksSecretContext.encrypt` accepts: any sum of up to
        :data:`MAX_SUMMANDS` such uploads still decrypts without wrap-around."""
        return float(2.0 ** (self.data_prime_bits - HEADROOM_BITS - self.scale_bits - SUMMAND_BITS))

    @property
    def release_grid(self) -> float:
        """Decrypted values are multiples of this (2**-(scale_bits - 14)): a mitigation,
        see docs/ckks-parameters.md, "Releasing decrypted sums"."""
        return float(2.0 ** -(self.scale_bits - RELEASE_DROP_BITS))

    def validate(self) -> None:
        """Raise ConfigError naming the parameter if these are unsafe or unusable."""
        n = self.poly_modulus_degree
        if isinstance(n, bool) or not isinstance(n, int) or n not in HE_STANDARD_128_MAX_BITS:
            raise ConfigError(
                "poly_modulus_degree (ring dimension N) must be one of "
                f"{sorted(HE_STANDARD_128_MAX_BITS)}, got {n!r}"
            )
        bits = self.coeff_mod_bit_sizes
        if not isinstance(bits, tuple) or len(bits) != 2:
            raise ConfigError(
                "coeff_mod_bit_sizes must be a tuple of exactly 2 prime sizes (bits): one data "
                "prime (pure addition needs no multiplicative depth) and the special prime "
                f"TenSEAL requires, got {bits!r}"
            )
        min_prime_bits = n.bit_length() + 2  # primes are 1 mod 2N: more bits than 2N has
        for i, b in enumerate(bits):
            if isinstance(b, bool) or not isinstance(b, int):
                raise ConfigError(f"coeff_mod_bit_sizes[{i}] must be an int (bits), got {b!r}")
            if not min_prime_bits <= b <= MAX_PRIME_BITS:
                raise ConfigError(
                    f"coeff_mod_bit_sizes[{i}] must be in [{min_prime_bits}, {MAX_PRIME_BITS}] "
                    f"bits for N={n}, got {b}"
                )
        limit = HE_STANDARD_128_MAX_BITS[n]
        if sum(bits) > limit:
            raise ConfigError(
                f"coeff_mod_bit_sizes total {sum(bits)} bits exceeds {limit} bits, the "
                f"128-bit security limit of the HE standard for N={n}"
            )
        s = self.scale_bits
        if isinstance(s, bool) or not isinstance(s, int) or s < MIN_SCALE_BITS:
            raise ConfigError(f"scale_bits must be an int >= {MIN_SCALE_BITS} (bits), got {s!r}")
        if s + HEADROOM_BITS + SUMMAND_BITS > bits[0]:
            raise ConfigError(
                f"scale_bits {s} leaves no headroom: the data prime ({bits[0]} bits) must be "
                f"at least scale_bits + {HEADROOM_BITS} + {SUMMAND_BITS} bits (sums of "
                f"{MAX_SUMMANDS} uploads of |value| <= 1, two values per slot)"
            )


# N = 8192 with a 48-bit data prime, a 60-bit special prime (108 of 218 bits) and scale
# 2**30: 8192 values per ciphertext (two per slot), ~6.9 bytes per value on the wire,
# CKKS noise ~1e-6 per upload, max_abs = 32, decrypted values rounded to multiples of 2**-16.
DEFAULT_PARAMS = CkksParams(poly_modulus_degree=8192, coeff_mod_bit_sizes=(48, 60), scale_bits=30)
