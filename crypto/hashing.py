"""Domain-separated hashing.

Every hash Cohort computes carries a tag from :class:`Tag`, so a digest made for one purpose
can never be replayed as a digest for another (an envelope hash is never a valid aggregate
hash). The construction is BLAKE2b-256 keyed by nothing, with the tag length-prefixed in front
of the length-prefixed parts::

    H(tag, p1, ..., pn) = BLAKE2b-256( u16(len tag) || tag || u64(len p1) || p1 || ... )

Length prefixes make the encoding injective: ``("ab", "c")`` and ``("a", "bc")`` differ.
"""

from __future__ import annotations

import enum
import hashlib
import re
import struct

import nacl.bindings as sodium
from typing_extensions import TypeIs

DIGEST_SIZE = 32
LARGE_INPUT = 1 << 16  # bytes: from here on libsodium's BLAKE2b (see tagged_hash)
_DIGEST_HEX = re.compile(f"[0-9a-f]{{{2 * DIGEST_SIZE}}}")


class Tag(bytes, enum.Enum):
    """Domain-separation tags. Never reuse one for a new purpose: add a new tag."""

    ENVELOPE = b"cohort/v1/envelope"
    PAYLOAD = b"cohort/v1/payload"
    AGGREGATE = b"cohort/v1/aggregate"
    AGGREGATE_RESULT = b"cohort/v1/aggregate-result"
    CLIENT_SET = b"cohort/v1/client-set"
    CKKS_CONTEXT = b"cohort/v1/ckks-context"
    KEY_DELIVERY = b"cohort/v1/key-delivery"
    STUDY_ID = b"cohort/v1/study-id"
    MODEL = b"cohort/v1/model"
    LEDGER = b"cohort/v1/ledger"
    NOISE_SEED = b"cohort/v1/noise-seed"
    DECRYPT_REQUEST = b"cohort/v1/decrypt-request"
    IDENTITY_SIGN_SEED = b"cohort/v1/identity-sign-seed"
    IDENTITY_BOX_SEED = b"cohort/v1/identity-box-seed"
    IDENTITY_FINGERPRINT = b"cohort/v1/identity-fingerprint"
    MANIFEST = b"cohort/v1/manifest"
    MANIFEST_SIGNATURE = b"cohort/v1/manifest-signature"
    APPROVAL = b"cohort/v1/approval"
    CONTROL = b"cohort/v1/control"
    DEALT_CONTEXT = b"cohort/v1/dealt-context"
    DECRYPTION = b"cohort/v1/decryption"
    PLAINTEXT = b"cohort/v1/plaintext"
    COMMITTEE_UPLOAD = b"cohort/v1/committee-upload"
    COMMITTEE_ADDRESS = b"cohort/v1/committee-address"
    UPLOAD_RECEIPT = b"cohort/v1/upload-receipt"
    UPLOAD_ORDER = b"cohort/v1/upload-order"
    FETCH = b"cohort/v1/fetch"
    AGGREGATE_FETCH = b"cohort/v1/aggregate-fetch"
    LEDGER_COMMITMENT = b"cohort/v1/ledger-commitment"
    SHARE_SEED = b"cohort/v1/share-seed"
    MPC_TERMS = b"cohort/v1/mpc-terms"
    MPC_PARTIAL = b"cohort/v1/mpc-partial"
    MPC_VALIDATION = b"cohort/v1/mpc-validation"


def tagged_hash(tag: Tag, *parts: bytes) -> bytes:
    """BLAKE2b-256 over ``tag`` and ``parts``, each length-prefixed (see module doc).

    Hashes of at least :data:`LARGE_INPUT` bytes (payloads and aggregates, megabytes each)
    run through libsodium's BLAKE2b, the same function (RFC 7693, unkeyed, 32-byte digest)
    in a vectorised implementation, about a quarter faster than ``hashlib``'s here; small
    ones through ``hashlib``, which costs less per call."""
    prefix = struct.pack(">H", len(tag.value)) + tag.value
    if sum(len(part) for part in parts) < LARGE_INPUT:
        h = hashlib.blake2b(prefix, digest_size=DIGEST_SIZE)
        for part in parts:
            h.update(struct.pack(">Q", len(part)))
            h.update(part)
        return h.digest()
    state = sodium.crypto_generichash_blake2b_init(digest_size=DIGEST_SIZE)
    sodium.crypto_generichash_blake2b_update(state, prefix)
    for part in parts:
        sodium.crypto_generichash_blake2b_update(state, struct.pack(">Q", len(part)))
        sodium.crypto_generichash_blake2b_update(state, part)
    return bytes(sodium.crypto_generichash_blake2b_final(state))


def client_set_hash(client_ids: list[str] | tuple[str, ...]) -> bytes:
    """Order-independent commitment to a set of client ids (sorted, then hashed)."""
    ordered = sorted(set(client_ids))
    if len(ordered) != len(client_ids):
        raise ValueError("client set has duplicate ids")
    return tagged_hash(Tag.CLIENT_SET, *(cid.encode("utf-8") for cid in ordered))


def is_digest_hex(value: object) -> TypeIs[str]:
    """Whether ``value`` is a digest in hex: exactly 64 lower-case hex digits, nothing else
    (no trailing newline). A study id is one (its manifest's hash); ids from the wire are
    checked with this before they are used, for example in a path."""
    return isinstance(value, str) and _DIGEST_HEX.fullmatch(value) is not None
