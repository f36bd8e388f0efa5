"""A committee member's key store: its Identity (Ed25519 + X25519) and Ethereum key.

Run by the committee member (``cohort keys new --role member --dir DIR`` creates it in
``DIR/keys``; ``python -m cohort.aggregator`` creates a plain one on first start when there
is none) and by whoever approves a study on its behalf (the approval is signed with the
member's identity). Files are mode 0600; secrets never appear in ``repr``.

The attestation key is in one of two files:

* ``eth-keystore.json``: encrypted under the operator's password (scrypt; written by
  ``cohort keys new``, a real deployment). Serving unlocks it (:meth:`MemberKeys.load` with
  ``password``); reading the address (:func:`load_member_identity`) does not need it.
* ``eth_key.json``: the raw key, for members made in-process (``cohort simulate``, tests).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from cohort.crypto.eth_keystore import (
    PASSWORD_ENV,
    eth_keystore_address,
    unlock_eth_keystore,
    write_eth_keystore,
)
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError
from cohort.files import PRIVATE, write_atomic

IDENTITY_FILE = "identity.json"
ETH_KEY_FILE = "eth_key.json"
#: The encrypted attestation key (``cohort keys new --role member``).
ETH_KEYSTORE_FILE = "eth-keystore.json"
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

    def save(self, directory: Path, *, password: str | None = None) -> None:
        """Write ``identity.json`` and the Ethereum key (mode 0600) into ``directory``.

        With ``password`` the key goes to ``eth-keystore.json``, encrypted (scrypt, about
        0.6 s); without, to ``eth_key.json`` in the clear (synthetic members only).
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if password is not None:
            write_eth_keystore(directory / ETH_KEYSTORE_FILE, self.eth_private_key, password)
            self.identity.save(directory / IDENTITY_FILE)
            return
        self.identity.save(directory / IDENTITY_FILE)
        doc = {
            "version": _KEYSTORE_VERSION,
            "member_id": self.identity.party_id,
            "eth_private_key": self.eth_private_key.hex(),
        }
        write_atomic(directory / ETH_KEY_FILE, json.dumps(doc).encode("utf-8"), mode=PRIVATE)

    @classmethod
    def load(cls, directory: Path, *, password: str | None = None) -> MemberKeys:
        """Read a key store written by :meth:`save`; BadInputError names the bad file.

        An encrypted key (``eth-keystore.json``) needs ``password``; a wrong one is refused.
        """
        identity = Identity.load(directory / IDENTITY_FILE)
        if eth_key_encrypted(directory):
            if password is None:
                raise BadInputError(
                    f"member key store {directory}: the Ethereum key is encrypted; pass "
                    f"--password-file FILE or set {PASSWORD_ENV}"
                )
            return cls(identity, unlock_eth_keystore(directory / ETH_KEYSTORE_FILE, password))
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
    def load_or_create(
        cls, directory: Path, *, member_id: str, password: str | None = None
    ) -> MemberKeys:
        """Load the key store in ``directory``, creating a plain one for ``member_id`` if
        absent (``password`` unlocks an encrypted key; a new store is never encrypted)."""
        if (directory / IDENTITY_FILE).exists():
            keys = cls.load(directory, password=password)
            if keys.identity.party_id != member_id:
                raise BadInputError(
                    f"member key store {directory}: holds member {keys.identity.party_id!r},"
                    f" not {member_id!r}"
                )
            return keys
        keys = cls.generate(member_id)
        keys.save(directory)
        return keys


def eth_key_encrypted(directory: Path) -> bool:
    """Whether ``directory`` keeps the attestation key encrypted (``eth-keystore.json``).

    A key store holding both files is refused: which key attests would be ambiguous.
    """
    encrypted = (directory / ETH_KEYSTORE_FILE).exists()
    if encrypted and (directory / ETH_KEY_FILE).exists():
        raise BadInputError(
            f"member key store {directory}: holds both {ETH_KEYSTORE_FILE} and {ETH_KEY_FILE}; "
            "keep one"
        )
    return encrypted


@dataclass(frozen=True, repr=False)
class MemberIdentity:
    """A member's identity and attestation address: what needs no password to read."""

    identity: Identity
    eth_address: str

    def __repr__(self) -> str:
        return (
            f"MemberIdentity(member_id={self.identity.party_id!r}, eth_address={self.eth_address})"
        )


def load_member_identity(directory: Path) -> MemberIdentity:
    """The identity and attestation address in ``directory``, without unlocking the key.

    For ``--export-identity``, ``cohort keys show`` and ``cohort study approve --role member``.
    """
    if eth_key_encrypted(directory):
        identity = Identity.load(directory / IDENTITY_FILE)
        return MemberIdentity(identity, eth_keystore_address(directory / ETH_KEYSTORE_FILE))
    keys = MemberKeys.load(directory)
    return MemberIdentity(keys.identity, keys.eth_address)


def public_identity_record(
    keys: MemberKeys | MemberIdentity, *, endpoint: str = "", tls_fingerprint: bytes = b""
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
