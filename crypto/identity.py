"""Party identities: an Ed25519 signing key and an X25519 box key per party.

Every party (data owner, committee member, coordinator) holds one :class:`Identity` in its
key store and publishes its :class:`PublicIdentity`. Data owners sign envelopes and seal
payloads to committee members; members verify signatures and unseal. Secret keys never
leave an :class:`Identity`: not in ``repr``, logs or exception messages.

Keys and signatures are PyNaCl (libsodium); so is :meth:`Identity.box_to` (nacl ``Box``).
Sealing (:func:`seal_to`, :meth:`Identity.unseal`) is RFC 9180 HPKE in base mode from
``cryptography``: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, ``info`` =
:data:`SEAL_INFO`, no AAD, one message per encapsulation. A seal is
``enc (32, the ephemeral X25519 public key) || AES-256-GCM ciphertext || tag (16)``:
:data:`SEAL_OVERHEAD` bytes longer than the plaintext.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import BadInputError, VerificationError
from cohort.files import PRIVATE, write_atomic

KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
MAX_PARTY_ID_BYTES = 128
KEY_STORE_FORMAT = "cohort-identity/v1"

# Sealing: RFC 9180 HPKE base mode. Changing any of these changes every seal: bump
# SEAL_INFO and the wire versions of cohort.crypto.envelope and cohort.crypto.upload.
SEAL_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
SEAL_INFO = b"cohort/seal/v2"  # HPKE info: names the construction; v1 was nacl SealedBox
SEAL_ENC_SIZE = 32  # the encapsulated key: an ephemeral X25519 public key
SEAL_TAG_SIZE = 16  # AES-256-GCM tag
SEAL_OVERHEAD = SEAL_ENC_SIZE + SEAL_TAG_SIZE


def check_party_id(party_id: object, field: str = "party_id") -> str:
    """Return ``party_id`` if it is non-empty printable text of at most 128 UTF-8 bytes."""
    if not isinstance(party_id, str):
        raise BadInputError(f"{field} must be a string, got {type(party_id).__name__}")
    if not party_id or not party_id.isprintable():
        raise BadInputError(f"{field} must be non-empty printable text")
    if len(party_id.encode("utf-8")) > MAX_PARTY_ID_BYTES:
        raise BadInputError(f"{field} is longer than {MAX_PARTY_ID_BYTES} UTF-8 bytes")
    return party_id


def _key_from_hex(value: object, field: str, *, where: str) -> bytes:
    if not isinstance(value, str):
        raise BadInputError(f"{where}: {field} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BadInputError(f"{where}: {field} is not valid hex") from None
    if len(raw) != KEY_SIZE:
        raise BadInputError(f"{where}: {field} has {len(raw)} bytes, expected {KEY_SIZE}")
    return raw


@dataclass(frozen=True)
class PublicIdentity:
    """What a party publishes: its id, Ed25519 verify key and X25519 public key."""

    party_id: str
    sign_key: bytes
    box_key: bytes

    def __post_init__(self) -> None:
        check_party_id(self.party_id)
        for field in ("sign_key", "box_key"):
            value = getattr(self, field)
            if not isinstance(value, bytes) or len(value) != KEY_SIZE:
                raise BadInputError(f"public identity: {field} must be {KEY_SIZE} bytes")

    def to_dict(self) -> dict[str, str]:
        return {
            "party_id": self.party_id,
            "sign_key": self.sign_key.hex(),
            "box_key": self.box_key.hex(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, str]) -> PublicIdentity:
        """Parse :meth:`to_dict` output; :class:`BadInputError` names the bad field."""
        if not isinstance(d, Mapping):
            raise BadInputError("public identity: expected a mapping")
        for field in ("party_id", "sign_key", "box_key"):
            if field not in d:
                raise BadInputError(f"public identity: missing field {field!r}")
        party_id = check_party_id(d["party_id"], "public identity: party_id")
        where = f"public identity {party_id!r}"
        return cls(
            party_id=party_id,
            sign_key=_key_from_hex(d["sign_key"], "sign_key", where=where),
            box_key=_key_from_hex(d["box_key"], "box_key", where=where),
        )

    def fingerprint(self) -> str:
        """16 hex digits binding the id and both keys; safe to log and compare by eye."""
        digest = tagged_hash(
            Tag.IDENTITY_FINGERPRINT, self.party_id.encode("utf-8"), self.sign_key, self.box_key
        )
        return digest[:8].hex()


class Identity:
    """A party's secret keys. Run by every party on its own machine; never shared.

    ``repr`` and ``str`` show the party id and public fingerprint only.
    """

    __slots__ = ("_box", "_public", "_seal_key", "_signing", "party_id")

    def __init__(self, party_id: str, signing_key: SigningKey, box_key: PrivateKey) -> None:
        self.party_id = check_party_id(party_id)
        self._signing = signing_key
        self._box = box_key
        # The same X25519 secret as cryptography's key type, for unsealing (secret).
        self._seal_key = x25519.X25519PrivateKey.from_private_bytes(bytes(box_key.encode()))
        self._public = PublicIdentity(
            party_id=self.party_id,
            sign_key=bytes(signing_key.verify_key.encode()),
            box_key=bytes(box_key.public_key.encode()),
        )

    @classmethod
    def generate(cls, party_id: str, *, seed: bytes | None = None) -> Identity:
        """Fresh random keys, or keys derived from a 32-byte ``seed`` (tests, ``--seed``).

        A seed yields two independent keys through domain-separated hashes, so the signing
        and box keys are never the same scalar.
        """
        if seed is None:
            return cls(party_id, SigningKey.generate(), PrivateKey.generate())
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise BadInputError(f"identity seed must be {SEED_SIZE} bytes")
        sign_seed = tagged_hash(Tag.IDENTITY_SIGN_SEED, seed)
        box_secret = tagged_hash(Tag.IDENTITY_BOX_SEED, seed)
        return cls(party_id, SigningKey(sign_seed), PrivateKey(box_secret))

    @property
    def public(self) -> PublicIdentity:
        return self._public

    def __repr__(self) -> str:
        return f"Identity(party_id={self.party_id!r}, fingerprint={self._public.fingerprint()})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Identity], tuple[str, SigningKey, PrivateKey]]:
        # Copy and pickle rebuild from the nacl keys (cryptography's key is not picklable).
        return (type(self), (self.party_id, self._signing, self._box))

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature over ``message``."""
        return bytes(self._signing.sign(message).signature)

    def box_to(self, recipient: PublicIdentity, plaintext: bytes) -> bytes:
        """Authenticated encryption to ``recipient`` (nacl Box: the recipient knows the sender)."""
        try:
            return bytes(Box(self._box, PublicKey(recipient.box_key)).encrypt(plaintext))
        except CryptoError:
            raise BadInputError(f"box key of {recipient.party_id} is not usable") from None

    def unbox_from(self, sender: PublicIdentity, ciphertext: bytes) -> bytes:
        """Open a :meth:`box_to` ciphertext from ``sender``; VerificationError if it fails."""
        try:
            return bytes(Box(self._box, PublicKey(sender.box_key)).decrypt(ciphertext))
        except (CryptoError, TypeError):
            raise VerificationError(
                f"box from {sender.party_id} does not open for {self.party_id}"
            ) from None

    def unseal(self, ciphertext: bytes) -> bytes:
        """Open a :func:`seal_to` ciphertext (HPKE base mode, :data:`SEAL_INFO`).

        VerificationError if it does not open: sealed to another key or with another
        ``info``, tampered, truncated, shorter than :data:`SEAL_OVERHEAD`, or not bytes.
        """
        if not isinstance(ciphertext, bytes) or len(ciphertext) < SEAL_OVERHEAD:
            raise VerificationError(f"sealed box does not open for {self.party_id}")
        try:
            return SEAL_SUITE.decrypt(ciphertext, self._seal_key, info=SEAL_INFO)
        except (InvalidTag, ValueError, TypeError):
            raise VerificationError(f"sealed box does not open for {self.party_id}") from None

    def save(self, path: Path) -> None:
        """Write the key store JSON atomically, readable by the owner only (mode 0600)."""
        path = Path(path)
        record = {
            "format": KEY_STORE_FORMAT,
            **self._public.to_dict(),
            "sign_seed": bytes(self._signing.encode()).hex(),
            "box_secret": bytes(self._box.encode()).hex(),
        }
        write_atomic(path, json.dumps(record, indent=1).encode("utf-8"), mode=PRIVATE)

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key store written by :meth:`save`; BadInputError naming ``path`` otherwise.

        Refuses a file that other users can read or write, as ssh does.
        """
        path = Path(path)
        where = f"key store {path}"
        try:
            mode = path.stat().st_mode
            raw = path.read_bytes()
        except OSError as exc:
            raise BadInputError(f"{where}: cannot read ({exc.strerror})") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise BadInputError(
                f"{where}: mode {stat.S_IMODE(mode):04o} gives other users access; chmod 600"
            )
        try:
            record: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadInputError(f"{where}: not valid JSON") from None
        if not isinstance(record, dict):
            raise BadInputError(f"{where}: expected a JSON object")
        if record.get("format") != KEY_STORE_FORMAT:
            raise BadInputError(f"{where}: format must be {KEY_STORE_FORMAT!r}")
        for field in ("party_id", "sign_key", "box_key", "sign_seed", "box_secret"):
            if field not in record:
                raise BadInputError(f"{where}: missing field {field!r}")
        try:
            party_id = check_party_id(record["party_id"])
        except BadInputError as exc:
            raise BadInputError(f"{where}: {exc}") from None
        identity = cls(
            party_id,
            SigningKey(_key_from_hex(record["sign_seed"], "sign_seed", where=where)),
            PrivateKey(_key_from_hex(record["box_secret"], "box_secret", where=where)),
        )
        stored = PublicIdentity(
            party_id=party_id,
            sign_key=_key_from_hex(record["sign_key"], "sign_key", where=where),
            box_key=_key_from_hex(record["box_key"], "box_key", where=where),
        )
        if stored != identity.public:
            raise BadInputError(f"{where}: public keys do not match the secret keys")
        return identity


def verify_signature(signer: PublicIdentity, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature by ``signer``; VerificationError if it does not verify."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise VerificationError(f"signature from {signer.party_id} is not {SIGNATURE_SIZE} bytes")
    try:
        VerifyKey(signer.sign_key).verify(message, signature)
    except CryptoError:
        raise VerificationError(f"signature does not verify for {signer.party_id}") from None


def seal_to(recipient: PublicIdentity, plaintext: bytes) -> bytes:
    """Anonymous encryption to ``recipient``'s box key; run by data owners and by members
    relaying a copy. RFC 9180 HPKE base mode (see the module docstring): a fresh ephemeral
    key per call, :data:`SEAL_OVERHEAD` bytes longer than ``plaintext``.

    BadInputError if the box key is not usable (a low-order point such as all zeros: the
    X25519 shared secret would be all zeros) or ``plaintext`` is not bytes.
    """
    if not isinstance(plaintext, bytes):
        raise BadInputError("seal: plaintext must be bytes")
    try:
        public_key = x25519.X25519PublicKey.from_public_bytes(recipient.box_key)
        return SEAL_SUITE.encrypt(plaintext, public_key, info=SEAL_INFO)
    except ValueError:
        raise BadInputError(f"box key of {recipient.party_id} is not usable") from None
