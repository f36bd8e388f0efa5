"""The key files of a real deployment, one layout per role (``cohort keys new --role ROLE``).

Run once by each party on its own machine. Every file is mode 0600 and every directory
holding keys 0700. Ethereum keys are encrypted under the party's password (scrypt,
:mod:`cohort.crypto.eth_keystore`); their addresses are read without it. The Ed25519/X25519
identities and the SuperNode key are protected by their file modes (the processes that use
them run unattended, as ssh host keys do).

owner (a hospital; ``DIR`` is its work directory, the one ``cohort study approve --workdir``
and the SuperNode's ``workdir`` take)::

    DIR/keystore/identity.json        Ed25519 + X25519 identity (the KeyStore layout)
    DIR/keystore/eth-keystore.json    the payout account, encrypted
    DIR/keystore/supernode-auth       Flower SuperNode authentication key: NIST P-384, OpenSSH
                                      private key format, unencrypted (what
                                      flower-supernode --auth-supernode-private-key reads)
    DIR/keystore/supernode-auth.pub   its OpenSSH public key (flwr supernode register FILE)
    DIR/owner-entry.json              the public roster entry for the manifest (no secret)

member (``DIR`` is its work directory, ``cohort member --workdir DIR``)::

    DIR/keys/identity.json            Ed25519 + X25519 identity (MemberKeys)
    DIR/keys/eth-keystore.json        the attestation key, encrypted

sponsor::

    DIR/sponsor.json                  the identity whose Ed25519 key signs manifests
    DIR/coordinator.json              the identity whose key signs control calls
    DIR/eth-keystore.json             the account that deploys the contract and funds the bounty

Parties made in-process by ``cohort simulate`` and the tests keep the plain layouts
(``KeyStore`` and ``MemberKeys`` create raw Ethereum key files and no SuperNode key), so a
simulated party does not pay scrypt's 0.6 s; both classes read either form.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account

from cohort.aggregator.keys import ETH_KEYSTORE_FILE as MEMBER_ETH_KEYSTORE_FILE
from cohort.aggregator.keys import IDENTITY_FILE as MEMBER_IDENTITY_FILE
from cohort.aggregator.keys import MemberKeys, load_member_identity, public_identity_record
from cohort.aggregator.member import KEYS_DIR
from cohort.crypto.eth_keystore import (
    PASSWORD_ENV,
    eth_keystore_address,
    read_password,
    unlock_eth_keystore,
    write_eth_keystore,
)
from cohort.crypto.identity import Identity, check_party_id
from cohort.errors import BadInputError
from cohort.federation.keystore import ETH_KEYSTORE_FILE, ETH_RAW_FILE, KeyStore
from cohort.federation.manifest import OwnerEntry
from cohort.files import PRIVATE, write_atomic

__all__ = [
    "COORDINATOR_FILE",
    "ETH_KEYSTORE_FILE",
    "OWNER_ENTRY_FILE",
    "OWNER_KEYSTORE_DIR",
    "PASSWORD_ENV",
    "SPONSOR_FILE",
    "SUPERNODE_KEY_FILE",
    "SUPERNODE_PUBLIC_KEY_FILE",
    "KeyRole",
    "SponsorKeys",
    "SponsorPublic",
    "create_member_keys",
    "create_owner_keys",
    "create_sponsor_keys",
    "detect_roles",
    "eth_keystore_path",
    "load_owner_entry",
    "member_entry",
    "owner_entry_dict",
    "read_password",
    "supernode_key_paths",
    "supernode_public_key",
    "unlock_eth_keystore",
]

OWNER_KEYSTORE_DIR = "keystore"
OWNER_IDENTITY_FILE = "identity.json"
OWNER_ENTRY_FILE = "owner-entry.json"
SUPERNODE_KEY_FILE = "supernode-auth"
SUPERNODE_PUBLIC_KEY_FILE = "supernode-auth.pub"
SPONSOR_FILE = "sponsor.json"
COORDINATOR_FILE = "coordinator.json"
#: Party ids of the sponsor's two identities (a manifest records only their keys).
SPONSOR_ID = "sponsor"
COORDINATOR_ID = "coordinator"
PRIVATE_DIR = 0o700
#: The curve of the SuperNode authentication key (Flower accepts NIST curves; P-384 as in
#: Flower's own examples).
SUPERNODE_CURVE = ec.SECP384R1


class KeyRole(enum.StrEnum):
    """Whose keys a directory holds."""

    OWNER = "owner"
    MEMBER = "member"
    SPONSOR = "sponsor"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            raise BadInputError(
                f"{path} already exists: a party keeps one set of keys (see: cohort keys show)"
            )


def _key_files(directory: Path, role: KeyRole) -> list[Path]:
    if role is KeyRole.OWNER:
        store = directory / OWNER_KEYSTORE_DIR
        return [
            store / OWNER_IDENTITY_FILE,
            store / ETH_KEYSTORE_FILE,
            store / SUPERNODE_KEY_FILE,
            store / SUPERNODE_PUBLIC_KEY_FILE,
            directory / OWNER_ENTRY_FILE,
        ]
    if role is KeyRole.MEMBER:
        keys = directory / KEYS_DIR
        return [keys / MEMBER_IDENTITY_FILE, keys / MEMBER_ETH_KEYSTORE_FILE]
    return [directory / SPONSOR_FILE, directory / COORDINATOR_FILE, directory / ETH_KEYSTORE_FILE]


def eth_keystore_path(directory: Path, role: KeyRole) -> Path:
    """Where ``role``'s encrypted Ethereum keystore lies under ``directory``."""
    if role is KeyRole.OWNER:
        return directory / OWNER_KEYSTORE_DIR / ETH_KEYSTORE_FILE
    if role is KeyRole.MEMBER:
        return directory / KEYS_DIR / MEMBER_ETH_KEYSTORE_FILE
    return directory / ETH_KEYSTORE_FILE


def detect_roles(directory: Path) -> list[KeyRole]:
    """The roles whose identity files ``directory`` holds (usually one, or none)."""
    found = []
    if (directory / OWNER_KEYSTORE_DIR / OWNER_IDENTITY_FILE).is_file():
        found.append(KeyRole.OWNER)
    if (directory / KEYS_DIR / MEMBER_IDENTITY_FILE).is_file():
        found.append(KeyRole.MEMBER)
    if (directory / SPONSOR_FILE).is_file():
        found.append(KeyRole.SPONSOR)
    return found


# --------------------------------------------------------------------------- owner


def owner_entry_dict(entry: OwnerEntry) -> dict[str, str]:
    """The roster entry as JSON-ready text: exactly the fields of :class:`OwnerEntry`."""
    return {
        "party_id": entry.party_id,
        "sign_key": entry.sign_key.hex(),
        "box_key": entry.box_key.hex(),
        "payout_address": entry.payout_address,
    }


def _owner_party_id(directory: Path) -> str:
    path = directory / OWNER_KEYSTORE_DIR / OWNER_IDENTITY_FILE
    if not path.is_file():
        raise BadInputError(
            f"no owner keys in {directory}: run cohort keys new --role owner --dir {directory} "
            "--party-id ID"
        )
    return Identity.load(path).party_id


def load_owner_entry(directory: Path) -> OwnerEntry:
    """A hospital's roster entry, read from its key store under ``directory``; no password.

    Never creates a key (a key store without its payout key is refused).
    """
    store = KeyStore(directory / OWNER_KEYSTORE_DIR, _owner_party_id(directory))
    if not any((store.root / name).is_file() for name in (ETH_KEYSTORE_FILE, ETH_RAW_FILE)):
        raise BadInputError(f"key store {store.root}: no payout key ({ETH_KEYSTORE_FILE})")
    public = store.identity().public
    return OwnerEntry(
        party_id=public.party_id,
        sign_key=public.sign_key,
        box_key=public.box_key,
        payout_address=store.payout_address(),
    )


def supernode_key_paths(directory: Path) -> tuple[Path, Path]:
    """(private key, public key) of a hospital's SuperNode authentication key pair."""
    store = directory / OWNER_KEYSTORE_DIR
    return store / SUPERNODE_KEY_FILE, store / SUPERNODE_PUBLIC_KEY_FILE


def supernode_public_key(directory: Path) -> str:
    """The SuperNode's OpenSSH public key line (``ecdsa-sha2-nistp384 AAAA...``), checked."""
    path = supernode_key_paths(directory)[1]
    try:
        text = path.read_text(encoding="ascii").strip()
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except OSError as exc:
        raise BadInputError(f"supernode key {path}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError, UnsupportedAlgorithm):
        raise BadInputError(f"supernode key {path}: not an OpenSSH public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, SUPERNODE_CURVE):
        raise BadInputError(f"supernode key {path}: not a NIST P-384 EC key")
    return text


def _supernode_key_pair() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(SUPERNODE_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def create_owner_keys(directory: Path, *, party_id: str, password: str) -> OwnerEntry:
    """A hospital's keys under ``directory`` (see the module doc); its public roster entry.

    Refuses (BadInputError) if any of the files exists: a site keeps one identity.
    """
    check_party_id(party_id, "--party-id")
    _refuse_existing(_key_files(directory, KeyRole.OWNER))
    _private_dir(directory)
    store = directory / OWNER_KEYSTORE_DIR
    _private_dir(store)
    private, public = _supernode_key_pair()
    write_atomic(store / SUPERNODE_KEY_FILE, private, mode=PRIVATE)
    write_atomic(store / SUPERNODE_PUBLIC_KEY_FILE, public, mode=PRIVATE)
    write_eth_keystore(store / ETH_KEYSTORE_FILE, bytes(Account.create().key), password)
    Identity.generate(party_id).save(store / OWNER_IDENTITY_FILE)
    entry = load_owner_entry(directory)
    text = json.dumps(owner_entry_dict(entry), indent=1) + "\n"
    write_atomic(directory / OWNER_ENTRY_FILE, text.encode("utf-8"), mode=PRIVATE)
    return entry


# --------------------------------------------------------------------------- member


def member_entry(directory: Path) -> dict[str, Any]:
    """A member's committee entry (endpoint and TLS pin empty: ``cohort member
    --export-identity`` fills them), read from ``directory/keys`` without a password."""
    keys = directory / KEYS_DIR
    if not (keys / MEMBER_IDENTITY_FILE).is_file():
        raise BadInputError(
            f"no member keys in {keys}: run cohort keys new --role member --dir {directory}"
        )
    return public_identity_record(load_member_identity(keys))


def create_member_keys(directory: Path, *, member_id: str, password: str) -> dict[str, Any]:
    """A committee member's keys in ``directory/keys``; its committee entry."""
    check_party_id(member_id, "--party-id")
    _refuse_existing(_key_files(directory, KeyRole.MEMBER))
    _private_dir(directory)
    _private_dir(directory / KEYS_DIR)
    MemberKeys.generate(member_id).save(directory / KEYS_DIR, password=password)
    return member_entry(directory)


# --------------------------------------------------------------------------- sponsor


@dataclass(frozen=True)
class SponsorPublic:
    """What the sponsor publishes: the manifest's ``sponsor_key``, ``coordinator_key`` and
    ``sponsor_address``."""

    sponsor_key: bytes
    coordinator_key: bytes
    sponsor_address: str

    def to_dict(self) -> dict[str, str]:
        return {
            "sponsor_key": self.sponsor_key.hex(),
            "coordinator_key": self.coordinator_key.hex(),
            "sponsor_address": self.sponsor_address,
        }


class SponsorKeys(NamedTuple):
    """The sponsor's two identities: ``sponsor, coordinator = SponsorKeys.load(directory)``.

    The sponsor identity signs manifests (``SignedManifest.sign``); the coordinator identity
    signs control calls (the manifest's ``coordinator_key``). The Ethereum account is apart,
    encrypted: ``unlock_eth_keystore(eth_keystore_path(directory, KeyRole.SPONSOR), password)``.
    """

    sponsor: Identity
    coordinator: Identity

    @classmethod
    def load(cls, directory: Path) -> SponsorKeys:
        """Read ``sponsor.json`` and ``coordinator.json``; BadInputError names a bad file."""
        if not (directory / SPONSOR_FILE).is_file():
            raise BadInputError(
                f"no sponsor keys in {directory}: run cohort keys new --role sponsor "
                f"--dir {directory}"
            )
        return cls(
            Identity.load(directory / SPONSOR_FILE), Identity.load(directory / COORDINATOR_FILE)
        )

    @staticmethod
    def public(directory: Path) -> SponsorPublic:
        """The sponsor's public keys and account address; no password."""
        sponsor, coordinator = SponsorKeys.load(directory)
        return SponsorPublic(
            sponsor_key=sponsor.public.sign_key,
            coordinator_key=coordinator.public.sign_key,
            sponsor_address=eth_keystore_address(directory / ETH_KEYSTORE_FILE),
        )


def create_sponsor_keys(directory: Path, *, password: str) -> SponsorPublic:
    """The sponsor's keys in ``directory`` (see the module doc); its public keys."""
    _refuse_existing(_key_files(directory, KeyRole.SPONSOR))
    _private_dir(directory)
    write_eth_keystore(directory / ETH_KEYSTORE_FILE, bytes(Account.create().key), password)
    Identity.generate(COORDINATOR_ID).save(directory / COORDINATOR_FILE)
    Identity.generate(SPONSOR_ID).save(directory / SPONSOR_FILE)
    return SponsorKeys.public(directory)
