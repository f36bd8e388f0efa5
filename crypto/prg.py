"""Seed expansion for seeded Shamir shares: a 256-bit seed becomes a vector over ``F_p``.

Run by a data owner when it shares an update (the ``t - 1`` seeded members' shares are
expanded from fresh seeds) and by the committee member that receives a seed. The XOF is::

    domain     = tagged_hash(Tag.SHARE_SEED, study_id, u64 round, member_id, sender)
    stream key = BLAKE2b-256(key=seed, person=PRG_PERSON, u64(len domain) || domain || u64 p)
    keystream  = libsodium randombytes_buf_deterministic(n, stream key)      (ChaCha20)

The keystream is cut into little-endian draws of ``ceil(w / 8)`` bytes, each masked to its
low ``w = p.bit_length()`` bits; draws ``>= p`` are rejected (rejection sampling), so every
output is exactly uniform on ``[0, p)``. The acceptance rate is ``p / 2^w > 1/2``. ChaCha20's
keystream for one key is prefix-consistent, so a longer expansion starts with a shorter one
and the result does not depend on how many bytes a run happened to request. A stream key is
used for one expansion only: the domain names the study, round, member and sender, and a
seed is drawn fresh for each share.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
from nacl.bindings import randombytes_buf_deterministic
from numpy.typing import NDArray

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import BadInputError

#: Size in bytes of a share seed (ChaCha20's key size).
SEED_BYTES = 32
#: BLAKE2b personalisation of the stream-key derivation (16 bytes); never reused.
PRG_PERSON = b"cohort/v1/sh-prg"


def share_domain(study_id: str, round: int, member_id: str, sender: str) -> bytes:
    """The domain of the share ``sender`` deals to ``member_id`` in ``round`` of ``study_id``.
    Computed alike by the data owner (``sender``) and the receiving member."""
    if not isinstance(round, int) or isinstance(round, bool) or not 0 <= round < 2**64:
        raise BadInputError(f"round must be an integer in [0, 2^64), got {round!r}")
    return tagged_hash(
        Tag.SHARE_SEED,
        study_id.encode("utf-8"),
        struct.pack(">Q", round),
        member_id.encode("utf-8"),
        sender.encode("utf-8"),
    )


def stream_key(seed: bytes, *, domain: bytes, prime: int) -> bytes:
    """The ChaCha20 key of one expansion: ``seed`` keyed BLAKE2b over the domain and prime."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise BadInputError(f"share seed must be {SEED_BYTES} bytes")
    if not isinstance(domain, bytes):
        raise BadInputError("share domain must be bytes")
    data = struct.pack(">Q", len(domain)) + domain + struct.pack(">Q", prime)
    return hashlib.blake2b(data, digest_size=SEED_BYTES, key=seed, person=PRG_PERSON).digest()


def expand_field(seed: bytes, *, domain: bytes, count: int, prime: int) -> NDArray[np.int64]:
    """``count`` int64 values exactly uniform on ``[0, prime)``, determined by ``seed`` and
    ``domain`` (see the module doc for the construction)."""
    return _expand(seed, domain=domain, count=count, prime=prime).astype(np.int64)


def expand_field_u32(seed: bytes, *, domain: bytes, count: int, prime: int) -> NDArray[np.uint32]:
    """:func:`expand_field` as uint32 (``prime < 2^32``): half the memory traffic for a
    member that only adds the values up."""
    if not isinstance(prime, int) or prime >= 2**32:
        raise BadInputError(f"prime must be below 2^32 for uint32 values, got {prime!r}")
    out: NDArray[np.uint32] = _expand(seed, domain=domain, count=count, prime=prime).astype(
        np.uint32, copy=False
    )
    return out


def _expand(
    seed: bytes, *, domain: bytes, count: int, prime: int
) -> NDArray[np.uint32 | np.uint64]:
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise BadInputError(f"count must be an integer >= 0, got {count!r}")
    if not isinstance(prime, int) or isinstance(prime, bool) or not 2 <= prime < 2**62:
        raise BadInputError(f"prime must be an integer in [2, 2^62), got {prime!r}")
    key = stream_key(seed, domain=domain, prime=prime)
    width = prime.bit_length()
    size = (width + 7) // 8
    # The stream is read in order, draw by draw, so the result does not depend on how many
    # draws are made at once: a small margin first (p is close to 2^w in Cohort's fields),
    # then twice as many whenever too many were rejected.
    draws = count + count // 64 + 64
    mask = (np.uint32 if size <= 4 else np.uint64)(2**width - 1)
    while True:
        stream = randombytes_buf_deterministic(draws * size, key)
        candidates = _draws(stream, draws, size) & mask
        head = candidates[:count]
        if not np.any(head >= prime):  # the common case: nothing rejected among the first
            return head
        accepted = candidates[candidates < prime]
        if accepted.size >= count:
            out: NDArray[np.uint32 | np.uint64] = accepted[:count]
            return out
        draws *= 2


def _draws(stream: bytes, draws: int, size: int) -> NDArray[np.uint32 | np.uint64]:
    """The stream as ``draws`` little-endian integers of ``size`` bytes each, read through a
    strided 4- or 8-byte window per draw (the bytes past a draw are masked off by the caller)."""
    window = 4 if size <= 4 else 8
    buffer = stream + bytes(window - size)
    view: NDArray[np.uint32 | np.uint64] = np.ndarray(
        (draws,), dtype=f"<u{window}", buffer=buffer, strides=(size,)
    )
    return view
