"""A data owner's key store: one directory, files readable by the owner only (0600).

Layout under ``<workdir>/keystore/``::

    identity.json            Ed25519 + X25519 keys (cohort.crypto.identity)
    eth-keystore.json        the payout account's key, encrypted (scrypt; cohort keys new)
    eth.json                 or that key in the clear (synthetic owners of cohort simulate)
    supernode-auth[.pub]     the Flower SuperNode authentication key pair (cohort keys new)
    ckks-<study>.bin         the study's CKKS secret context (shared among data owners only)
    dealt-<study>.json       the dealer's own record of what it dealt (the key dealer only)
    decryptions-<study>.json which aggregate this owner decrypted in each round

Study terms are not kept here: they come from the approved manifest (federation.approval).

Secrets live in these files and nowhere else: not in logs, messages or exceptions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account

from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.eth_keystore import PASSWORD_ENV, eth_keystore_address, unlock_eth_keystore
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, VerificationError
from cohort.files import PRIVATE, write_atomic


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PRIVATE)


#: The payout account's encrypted key (written by ``cohort keys new --role owner``).
ETH_KEYSTORE_FILE = "eth-keystore.json"
#: The payout account's raw key (synthetic owners made in-process).
ETH_RAW_FILE = "eth.json"


#: CKKS secret contexts this process loaded, by file: (inode, size, mtime) and the context;
#: the most recent :data:`_LOADED_CKKS_MAX` (a simulation's process serves several owners).
_LOADED_CKKS: dict[str, tuple[tuple[int, int, int], CkksSecretContext]] = {}
_LOADED_CKKS_MAX = 8


def _safe(study_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in study_id)


@dataclass(frozen=True)
class KeyStore:
    """The key files of one party (a data owner) under ``root``."""

    root: Path
    party_id: str

    def identity(self) -> Identity:
        """Load the party's identity, creating it on first use."""
        path = self.root / "identity.json"
        if path.exists():
            identity = Identity.load(path)
            if identity.party_id != self.party_id:
                raise BadInputError(
                    f"key store {path}: holds identity {identity.party_id!r}, "
                    f"expected {self.party_id!r}"
                )
            return identity
        identity = Identity.generate(self.party_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity.save(path)
        return identity

    def payout_address(self) -> str:
        """The party's payout account; its key never leaves here.

        Read from the encrypted keystore without its password when there is one (a real
        hospital: ``cohort keys new``); otherwise from, or created on first use in, the
        plain ``eth.json`` (the synthetic owners of ``cohort simulate``).
        """
        encrypted = self.root / ETH_KEYSTORE_FILE
        if encrypted.exists():
            return eth_keystore_address(encrypted)
        return str(Account.from_key(self._raw_payout_key(create=True)).address)

    def unlock_payout_key(self, password: str | None) -> bytes:
        """The payout account's private key, to withdraw: the encrypted keystore needs
        ``password`` (a wrong one is refused); a plain ``eth.json`` does not."""
        encrypted = self.root / ETH_KEYSTORE_FILE
        if encrypted.exists():
            if password is None:
                raise BadInputError(
                    f"key store {self.root}: the payout key is encrypted; pass "
                    f"--password-file FILE or set {PASSWORD_ENV}"
                )
            return unlock_eth_keystore(encrypted, password)
        return self._raw_payout_key(create=False)

    def _raw_payout_key(self, *, create: bool) -> bytes:
        path = self.root / ETH_RAW_FILE
        if path.exists():
            try:
                return bytes.fromhex(json.loads(path.read_text())["private_key"])
            except (KeyError, ValueError, json.JSONDecodeError):
                raise BadInputError(f"key store {path}: malformed payout key file") from None
        if not create:
            raise BadInputError(f"key store {self.root}: no payout key (run cohort keys new)")
        key = os.urandom(32)
        _write_private(path, json.dumps({"private_key": key.hex()}).encode())
        return key

    # ----------------------------------------------------------- CKKS secret context

    def ckks_path(self, study_id: str) -> Path:
        return self.root / f"ckks-{_safe(study_id)}.bin"

    def install_ckks(self, study_id: str, context: CkksSecretContext) -> bool:
        """Store the study's CKKS secret context once; True if it was new.

        Installing the same context again is a no-op; a different one is refused
        (VerificationError): an installed key is never overwritten, so a second dealing by
        a coordinator cannot swap the key this owner encrypts under.
        """
        path = self.ckks_path(study_id)
        if path.exists():
            held = self.load_ckks(study_id).public().fingerprint()
            if held != context.public().fingerprint():
                raise VerificationError(
                    f"study {study_id[:16]}: a CKKS key is already installed; a second, "
                    "different dealing is refused"
                )
            return False
        _write_private(path, context.to_bytes())
        return True

    def load_ckks(self, study_id: str) -> CkksSecretContext:
        """The study's installed CKKS secret context.

        Loaded once per process and file (about 17 ms on a loaded 2-core host): a round
        decrypts the last sum and encrypts its own update under the same context, and a
        deployed owner's process lives for one message. The file is written once and never
        overwritten (:meth:`install_ckks`); a file replaced behind this process's back (its
        inode, size or mtime changed) is loaded again.
        """
        path = self.ckks_path(study_id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise BadInputError(
                f"no CKKS secret context for study {study_id[:16]} in {self.root}"
            ) from None
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        key = str(path.resolve())
        held = _LOADED_CKKS.get(key)
        if held is not None and held[0] == version:
            return held[1]
        context = CkksSecretContext.from_bytes(path.read_bytes())
        _LOADED_CKKS.pop(key, None)
        _LOADED_CKKS[key] = (version, context)
        while len(_LOADED_CKKS) > _LOADED_CKKS_MAX:
            del _LOADED_CKKS[next(iter(_LOADED_CKKS))]
        return context

    # ----------------------------------------------------------- durable records

    def _record_path(self, kind: str, study_id: str) -> Path:
        return self.root / f"{kind}-{_safe(study_id)}.json"

    def load_record(self, kind: str, study_id: str) -> dict[str, Any]:
        """A small JSON record of this party's own past actions ({} when none)."""
        path = self._record_path(kind, study_id)
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            raise BadInputError(f"key store {path}: unreadable record") from None
        if not isinstance(data, dict):
            raise BadInputError(f"key store {path}: expected a JSON object")
        return data

    def save_record(self, kind: str, study_id: str, data: dict[str, Any]) -> None:
        _write_private(self._record_path(kind, study_id), json.dumps(data, indent=1).encode())

    def record_decryption(
        self, study_id: str, round: int, *, client_set_hash: bytes, aggregate_hash: bytes
    ) -> None:
        """Durably note that this owner decrypts (round, S, aggregate) - before it does.

        At most one aggregate per round: asking again for the same one is allowed (it reveals
        nothing new), any other aggregate for that round is refused (VerificationError), so
        a coordinator cannot have S and S minus one owner both decrypted and subtract them.
        """
        log = self.load_record("decryptions", study_id)
        entry = {"client_set": client_set_hash.hex(), "aggregate": aggregate_hash.hex()}
        held = log.get(str(round))
        if held is not None and held != entry:
            raise VerificationError(
                f"decrypt round {round}: this owner already decrypted another aggregate for "
                "that round"
            )
        if held is None:
            log[str(round)] = entry
            self.save_record("decryptions", study_id, log)
