"""Cryptographically secure randomness for DP-SGD: ChaCha20 streams, Gaussians, Poisson batches.

Run by a data owner inside :func:`cohort.clients.training.train_dp`, once per round. Two
independent streams are derived from one 256-bit round key, one per purpose
(:data:`NOISE`, :data:`SAMPLING`)::

    round key   = os.urandom(32)                                   (default)
                | BLAKE2b-256(key=u256 seed, person=SEED_PERSON,
                              lp(owner) || lp(study id) || u64 round)   (seeded, not private)
    stream key  = BLAKE2b-256(key=round key,  person=STREAM_PERSON, lp(purpose))
    draw subkey = BLAKE2b-256(key=stream key, person=DRAW_PERSON,   u64 draw counter)
    draw bytes  = libsodium randombytes_buf_deterministic(size, draw subkey)   (ChaCha20)

``lp`` is a u64 length prefix. libsodium runs ChaCha20 under the subkey with a fixed nonce,
so a subkey must never be used twice: the counter advances on every draw, and each draw
starts a fresh keystream. Uniforms carry 53 random bits; Gaussians come from Box-Muller in
float64; :meth:`ChaChaStream.gaussian` applies the floating-point hardening of Opacus's
``secure_mode`` (sum of four draws of std sigma, halved; see docs/privacy.md).
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Iterator

import numpy as np
from nacl.bindings import randombytes_buf_deterministic
from numpy.typing import NDArray

from cohort.errors import BadInputError

#: Key size in bytes of round keys, stream keys and draw subkeys (ChaCha20's key size).
KEY_SIZE = 32
#: BLAKE2b personalisations (16 bytes at most), one per derivation step; never reused.
SEED_PERSON = b"cohort/v1/dp-key"
STREAM_PERSON = b"cohort/v1/dp-str"
DRAW_PERSON = b"cohort/v1/dp-drw"
#: Stream purposes used by DP-SGD.
NOISE = b"noise"
SAMPLING = b"sampling"

_U53 = 2.0**-53
_MAX_SEED = 2**256


def _lp(part: bytes) -> bytes:
    return struct.pack(">Q", len(part)) + part


def _kdf(key: bytes, person: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=KEY_SIZE, key=key, person=person).digest()


def random_key() -> bytes:
    """A fresh 256-bit round key from the operating system (the private default)."""
    return os.urandom(KEY_SIZE)


def seeded_key(seed: int, *, owner: str, domain: str, round: int) -> bytes:
    """Round key derived from a local ``seed``: reproducible, so **not private** (anyone who
    knows the seed regenerates the noise and can subtract it). Tests and demos only.
    ``domain`` separates unrelated uses of one seed."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < _MAX_SEED:
        raise BadInputError(f"noise seed must be an integer in [0, 2^256), got {seed!r}")
    if not isinstance(round, int) or isinstance(round, bool) or not 0 <= round < 2**64:
        raise BadInputError(f"round must be an integer in [0, 2^64), got {round!r}")
    data = _lp(owner.encode("utf-8")) + _lp(domain.encode("utf-8")) + struct.pack(">Q", round)
    return _kdf(seed.to_bytes(KEY_SIZE, "big"), SEED_PERSON, data)


class ChaChaStream:
    """One purpose's random stream under a 256-bit key; every draw uses a fresh subkey."""

    KEY_SIZE = KEY_SIZE

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise BadInputError(f"stream key must be {KEY_SIZE} bytes")
        self._key = key
        self._draws = 0

    @classmethod
    def derive(cls, round_key: bytes, purpose: bytes) -> ChaChaStream:
        """The stream for ``purpose`` (e.g. :data:`NOISE`) under ``round_key``."""
        if not isinstance(round_key, bytes) or len(round_key) != KEY_SIZE:
            raise BadInputError(f"round key must be {KEY_SIZE} bytes")
        return cls(_kdf(round_key, STREAM_PERSON, _lp(purpose)))

    @property
    def draws(self) -> int:
        """Number of draws (subkeys) used so far."""
        return self._draws

    def random_bytes(self, size: int) -> bytes:
        """``size`` bytes of ChaCha20 keystream under the next draw subkey."""
        if not isinstance(size, int) or size < 0:
            raise BadInputError(f"size must be an integer >= 0, got {size!r}")
        subkey = _kdf(self._key, DRAW_PERSON, struct.pack(">Q", self._draws))
        self._draws += 1
        return bytes(randombytes_buf_deterministic(size, subkey))

    def _bits53(self, size: int) -> NDArray[np.uint64]:
        words = np.frombuffer(self.random_bytes(8 * size), dtype="<u8")
        return words >> np.uint64(11)

    def uniform(self, size: int) -> NDArray[np.float64]:
        """``size`` doubles uniform on [0, 1): k / 2^53 for a uniform 53-bit integer k."""
        return self._bits53(size).astype(np.float64) * _U53

    def standard_normal(self, size: int) -> NDArray[np.float64]:
        """``size`` independent N(0, 1) doubles by Box-Muller (one draw for all of them)."""
        pairs = (size + 1) // 2
        normals: NDArray[np.float64] = _box_muller(
            self._bits53(2 * pairs).astype(np.float64)[None, :]
        )
        return normals[0, :size]

    def gaussian(self, size: int, *, std: float) -> NDArray[np.float64]:
        """``size`` N(0, std^2) doubles hardened against floating-point attacks.

        As Opacus's ``secure_mode`` (``_generate_noise``, after Holohan and Braghin 2021,
        section 5.1, n = 2): four independent N(0, std^2) draws summed and halved, which is
        again N(0, std^2) but no longer has the gaps in its low-order bits that let an
        observer tell which value was added (Mironov 2012's attack class).
        """
        row: NDArray[np.float64] = self.gaussian_rows(1, size, std=std)[0]
        return row

    def gaussian_rows(self, rows: int, size: int, *, std: float) -> NDArray[np.float64]:
        """``[rows, size]``: row i is exactly what the i-th of ``rows`` successive
        :meth:`gaussian` calls would return (one draw, one subkey, per row), computed in one
        pass. DP-SGD draws a round's per-step noise vectors this way."""
        if not (math.isfinite(std) and std >= 0):
            raise BadInputError(f"std must be finite and >= 0, got {std!r}")
        if not isinstance(rows, int) or rows < 0:
            raise BadInputError(f"rows must be an integer >= 0, got {rows!r}")
        if std == 0 or size == 0 or rows == 0:
            return np.zeros((rows, size), dtype=np.float64)
        pairs = (4 * size + 1) // 2
        raw = b"".join(self.random_bytes(16 * pairs) for _ in range(rows))
        words = np.frombuffer(raw, dtype="<u8").reshape(rows, 2 * pairs) >> np.uint64(11)
        draws = _box_muller(words.astype(np.float64)).reshape(rows, 4, size)
        draws *= std
        total: NDArray[np.float64] = draws.sum(axis=1)
        total /= 2.0
        return total


def _box_muller(k: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row by row: 53-bit integers ``k`` (as doubles, an even count per row) to as many
    N(0, 1) doubles; the first half of each row gives the radii, the second the angles.
    Works in place in ``k`` (the same operations, in the same order, as with temporaries)."""
    pairs = k.shape[1] // 2
    u1 = k[:, :pairs]
    u1 += 1.0
    u1 *= _U53  # (0, 1]: log never sees 0
    radius = np.log(u1, out=u1)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    angle = k[:, pairs:]
    angle *= 2.0 * math.pi * _U53
    out = np.empty(k.shape, dtype=np.float64)
    np.multiply(radius, np.cos(angle, out=out[:, :pairs]), out=out[:, :pairs])
    np.multiply(radius, np.sin(angle, out=out[:, pairs:]), out=out[:, pairs:])
    return out


class PoissonSampler:
    """Poisson batches: each of ``num_examples`` joins each batch independently with
    probability ``sample_rate``; exactly ``steps`` batches per pass (iteration).

    Each pass draws fresh uniforms from ``stream``, so several epochs see different batches.
    Batches may be empty (a zero-length index array); the trainer must still take the step.
    """

    def __init__(
        self, *, num_examples: int, sample_rate: float, steps: int, stream: ChaChaStream
    ) -> None:
        if not isinstance(num_examples, int) or num_examples < 1:
            raise BadInputError(f"num_examples must be an integer >= 1, got {num_examples!r}")
        if not (isinstance(sample_rate, float | int) and 0 < sample_rate <= 1):
            raise BadInputError(
                f"sample_rate must be in (0, 1] (Poisson inclusion probability), "
                f"got {sample_rate!r}"
            )
        if not isinstance(steps, int) or steps < 1:
            raise BadInputError(f"steps must be an integer >= 1 (batches per pass), got {steps!r}")
        self.num_examples = num_examples
        self.sample_rate = float(sample_rate)
        self.steps = steps
        self._stream = stream

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[NDArray[np.int64]]:
        for _ in range(self.steps):
            chosen = self._stream.uniform(self.num_examples) < self.sample_rate
            yield np.flatnonzero(chosen).astype(np.int64)
