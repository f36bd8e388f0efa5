"""RFC 9180 HPKE base-mode sealing with a GIVEN ephemeral key, for reproducible test vectors.

:func:`cohort.crypto.identity.seal_to` draws a fresh ephemeral key per seal, so its output
cannot be checked in. The vector generators seal with :func:`deterministic_seal` instead:
the same construction (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode,
``info = SEAL_INFO``, empty AAD, sequence number 0), written here from the RFC's
definitions (sections 4, 4.1, 5.1, 5.2 and 7.1.3) on top of the X25519, HMAC-SHA256 and
AES-GCM primitives, with the ephemeral key derived from a fixed seed by the RFC's
``DeriveKeyPair``. Each seal is opened with ``cryptography``'s own ``Suite.decrypt``
before it is returned, so every vector seal proves this code against the library (and the
library's seals against the RFC).

Test code only: a fixed ephemeral key makes every seal to a recipient linkable and, with
the seed, readable.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import SEAL_INFO, SEAL_SUITE, Identity, PublicIdentity

KEM_ID = 0x0020  # DHKEM(X25519, HKDF-SHA256)
KDF_ID = 0x0001  # HKDF-SHA256
AEAD_ID = 0x0002  # AES-256-GCM
MODE_BASE = 0x00
N_SECRET = 32  # KEM shared secret
N_SK = 32  # X25519 private key
N_K = 32  # AES-256 key
N_N = 12  # AES-GCM nonce
HASH_LEN = 32  # SHA-256

KEM_SUITE_ID = b"KEM" + KEM_ID.to_bytes(2, "big")
HPKE_SUITE_ID = (
    b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
)


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 Extract with HMAC-SHA256 (an empty salt is HashLen zero bytes to HMAC)."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 Expand with HMAC-SHA256."""
    if length > 255 * HASH_LEN:
        raise ValueError("HKDF-Expand: length too large")
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 section 4: Extract(salt, "HPKE-v1" || suite_id || label || ikm)."""
    return hkdf_extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180 section 4: Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)."""
    labeled_info = _i2osp(length, 2) + b"HPKE-v1" + suite_id + label + info
    return hkdf_expand(prk, labeled_info, length)


def derive_key_pair(ikm: bytes) -> x25519.X25519PrivateKey:
    """RFC 9180 section 7.1.3, DeriveKeyPair for X25519."""
    dkp_prk = labeled_extract(KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    secret = labeled_expand(KEM_SUITE_ID, dkp_prk, b"sk", b"", N_SK)
    return x25519.X25519PrivateKey.from_private_bytes(secret)


def _raw(public_key: x25519.X25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encap(pk_r: bytes, sk_e: x25519.X25519PrivateKey) -> tuple[bytes, bytes]:
    """RFC 9180 section 4.1, DHKEM Encap with the given ephemeral key: (shared_secret, enc)."""
    dh = sk_e.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    enc = _raw(sk_e.public_key())
    kem_context = enc + pk_r
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared_secret = labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, N_SECRET)
    return shared_secret, enc


def key_schedule_base(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, KeySchedule in base mode (empty psk, psk_id): (key, base_nonce)."""
    psk_id_hash = labeled_extract(HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE_ID, b"", b"info_hash", info)
    context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE_ID, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE_ID, secret, b"key", context, N_K)
    base_nonce = labeled_expand(HPKE_SUITE_ID, secret, b"base_nonce", context, N_N)
    return key, base_nonce


def hpke_seal_base(
    pk_r: bytes, plaintext: bytes, *, info: bytes, sk_e: x25519.X25519PrivateKey
) -> bytes:
    """Single-shot base-mode seal (RFC 9180 sections 5.2 and 6.1), empty AAD: enc || ct.

    The first message of a context uses sequence number 0, so its nonce is base_nonce.
    """
    shared_secret, enc = encap(pk_r, sk_e)
    key, base_nonce = key_schedule_base(shared_secret, info)
    return enc + AESGCM(key).encrypt(base_nonce, plaintext, b"")


def box_secret(seed: bytes) -> bytes:
    """The raw X25519 secret of ``Identity.generate(..., seed=seed)``, derived as it does."""
    return tagged_hash(Tag.IDENTITY_BOX_SEED, seed)


def deterministic_seal(
    recipient: PublicIdentity,
    plaintext: bytes,
    ephemeral_seed: int,
    *,
    recipient_secret: bytes,
    info: bytes = SEAL_INFO,
) -> bytes:
    """What :func:`~cohort.crypto.identity.seal_to` makes (with ``info``, :data:`SEAL_INFO`
    unless given), but with the ephemeral key ``DeriveKeyPair(bytes([ephemeral_seed]) * 32)``.

    Before returning, checks that ``recipient_secret`` (raw X25519) is ``recipient``'s box
    key and that ``cryptography``'s ``Suite.decrypt`` opens the seal to ``plaintext``;
    RuntimeError otherwise.
    """
    sk_e = derive_key_pair(bytes([ephemeral_seed]) * 32)
    sealed = hpke_seal_base(recipient.box_key, plaintext, info=info, sk_e=sk_e)
    private_key = x25519.X25519PrivateKey.from_private_bytes(recipient_secret)
    if _raw(private_key.public_key()) != recipient.box_key:
        raise RuntimeError(f"the secret given is not {recipient.party_id}'s box key")
    if SEAL_SUITE.decrypt(sealed, private_key, info=info) != plaintext:
        raise RuntimeError("cryptography's HPKE opened a vector seal to other bytes")
    return sealed


def seal_for_seeded(
    ids: Mapping[str, Identity],
    seeds: Mapping[str, int],
    recipient: str,
    plaintext: bytes,
    ephemeral_seed: int,
    *,
    info: bytes = SEAL_INFO,
) -> bytes:
    """:func:`deterministic_seal` to ``ids[recipient]``, an identity a generator made with
    ``Identity.generate(recipient, seed=bytes([seeds[recipient]]) * 32)``."""
    return deterministic_seal(
        ids[recipient].public,
        plaintext,
        ephemeral_seed,
        recipient_secret=box_secret(bytes([seeds[recipient]]) * 32),
        info=info,
    )
