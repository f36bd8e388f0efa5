"""A committee member's key store: its Identity (Ed25519 + X25519) and Ethereum key.

Run by the committee member (``python -m cohort.aggregator`` creates it on first start in
``<workdir>/keys``) and by whoever approves a study on its behalf (the approval is signed
with the member's identity). Files are mode 0600; secrets never appear in ``repr``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from cohort.crypto.identity import Identity
from cohort.errors import BadInputError
from cohort.files import PRIVATE, write_atomic

IDENTITY_FILE = "identity.json"
ETH_KEY_FILE = "eth_key.json"
_KEYSTORE_VERSION = 1


@dataclass(frozen=True, repr=False)
class MemberKeys:
    """A member's secret keys: its Identity and its Ethereum attestation key."""

    identity: Identity
    eth_private_key: bytes

    def __post_init__(self) -> None:
        if len(self.eth_private_key) != 32:
            raise BadInputError("member key store: Ethereum private key must be 32 bytes")

    def __repr__(self) -> str:
        return f"MemberKeys(member_id={self.identity.party_id!r}, eth_address={self.eth_address})"

    @property
    def eth_address(self) -> str:
        return str(Account.from_key(self.eth_private_key).address)

    @classmethod
    def generate(cls, member_id: str) -> MemberKeys:
        """Fresh keys for a new member. Run once by the member when its key store is made."""
        return cls(Identity.generate(member_id), bytes(Account.create().key))

    def save(self, directory: Path) -> None:
        """Write ``identity.json`` and ``eth_key.json`` (mode 0600) into ``directory``."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.identity.save(directory / IDENTITY_FILE)
        doc = {
            "version": _KEYSTORE_VERSION,
            "member_id": self.identity.party_id,
            "eth_private_key": self.eth_private_key.hex(),
        }
        write_atomic(directory / ETH_KEY_FILE, json.dumps(doc).encode("utf-8"), mode=PRIVATE)

    @classmethod
    def load(cls, directory: Path) -> MemberKeys:
        """Read a key store written by :meth:`save`; BadInputError names the bad file."""
        identity = Identity.load(directory / IDENTITY_FILE)
        path = directory / ETH_KEY_FILE
        try:
            mode = path.stat().st_mode
            doc = json.loads(path.read_text(encoding="utf-8"))
            key = bytes.fromhex(doc["eth_private_key"])
            stored_id = doc["member_id"]
        except (OSError, ValueError, KeyError, TypeError):
            raise BadInputError(f"member key store {path}: unreadable Ethereum key") from None
        if os.name == "posix" and mode & 0o077:
            raise BadInputError(f"member key store {path}: other users have access; chmod 600")
        if stored_id != identity.party_id:
            raise BadInputError(f"member key store {path}: member id differs from {IDENTITY_FILE}")
        return cls(identity, key)

    @classmethod
    def load_or_create(cls, directory: Path, *, member_id: str) -> MemberKeys:
        """Load the key store in ``directory``, creating it for ``member_id`` if absent."""
        if (directory / IDENTITY_FILE).exists():
            keys = cls.load(directory)
            if keys.identity.party_id != member_id:
                raise BadInputError(
                    f"member key store {directory}: holds member {keys.identity.party_id!r},"
                    f" not {member_id!r}"
                )
            return keys
        keys = cls.generate(member_id)
        keys.save(directory)
        return keys


def public_identity_record(
    keys: MemberKeys, *, endpoint: str = "", tls_fingerprint: bytes = b""
) -> dict[str, Any]:
    """The committee entry a sponsor copies into a manifest (``--export-identity``):
    ``member_id``, ``sign_key``, ``box_key`` (hex), ``eth_address``, and ``endpoint`` and
    ``tls_fingerprint`` (hex) when known ("" otherwise). The same fields as
    :class:`cohort.federation.manifest.CommitteeEntry`."""
    public = keys.identity.public
    return {
        "member_id": public.party_id,
        "sign_key": public.sign_key.hex(),
        "box_key": public.box_key.hex(),
        "eth_address": keys.eth_address,
        "endpoint": endpoint,
        "tls_fingerprint": tls_fingerprint.hex(),
    }
