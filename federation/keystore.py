"""A data owner's key store: one directory, files readable by the owner only (0600).

Layout under ``<workdir>/keystore/``::

    identity.json            Ed25519 + X25519 keys (cohort.crypto.identity)
    eth.json                 the payout account's secp256k1 key
    ckks-<study>.bin         the study's CKKS secret context (shared among data owners only)
    committee-<study>.json   the committee roster pinned at first sight (trust on first use)

Secrets live in these files and nowhere else: not in logs, messages or exceptions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.errors import BadInputError, VerificationError
from cohort.files import PRIVATE, write_atomic


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PRIVATE)


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
        """The party's payout account (created on first use; its key never leaves here)."""
        path = self.root / "eth.json"
        if path.exists():
            try:
                key = bytes.fromhex(json.loads(path.read_text())["private_key"])
            except (KeyError, ValueError, json.JSONDecodeError):
                raise BadInputError(f"key store {path}: malformed payout key file") from None
        else:
            key = os.urandom(32)
            _write_private(path, json.dumps({"private_key": key.hex()}).encode())
        return str(Account.from_key(key).address)

    # ----------------------------------------------------------- CKKS secret context

    def ckks_path(self, study_id: str) -> Path:
        return self.root / f"ckks-{_safe(study_id)}.bin"

    def save_ckks(self, study_id: str, context: CkksSecretContext) -> None:
        _write_private(self.ckks_path(study_id), context.to_bytes())

    def load_ckks(self, study_id: str) -> CkksSecretContext:
        path = self.ckks_path(study_id)
        if not path.exists():
            raise BadInputError(f"no CKKS secret context for study {study_id!r} in {self.root}")
        return CkksSecretContext.from_bytes(path.read_bytes())

    # ----------------------------------------------------------- study terms (TOFU)

    def _terms_path(self, study_id: str) -> Path:
        return self.root / f"terms-{_safe(study_id)}.json"

    def pin_terms(
        self, study_id: str, committee: list[PublicIdentity], *, quorum: int, min_clients: int
    ) -> StudyTerms:
        """Pin the committee roster, quorum and minimum client set at first sight.

        A later round that announces different terms is refused: a coordinator that swaps
        member keys or lowers the quorum mid-study (to forge a decryption request) is caught
        here. Later issues anchor these terms on-chain instead of trusting the first message.
        """
        wanted = {
            "committee": sorted((m.to_dict() for m in committee), key=lambda d: d["party_id"]),
            "quorum": quorum,
            "min_clients": min_clients,
        }
        path = self._terms_path(study_id)
        if path.exists():
            if json.loads(path.read_text()) != wanted:
                raise VerificationError(
                    f"study {study_id!r}: committee, quorum or min_clients differ from the terms "
                    "pinned at this owner's first round"
                )
        else:
            _write_private(path, json.dumps(wanted, indent=1).encode())
        return self.pinned_terms(study_id)

    def pinned_terms(self, study_id: str) -> StudyTerms:
        path = self._terms_path(study_id)
        if not path.exists():
            raise VerificationError(f"no study terms pinned for study {study_id!r}")
        data = json.loads(path.read_text())
        return StudyTerms(
            committee={d["party_id"]: PublicIdentity.from_dict(d) for d in data["committee"]},
            quorum=int(data["quorum"]),
            min_clients=int(data["min_clients"]),
        )


@dataclass(frozen=True)
class StudyTerms:
    """What a data owner pinned at its first round of a study."""

    committee: dict[str, PublicIdentity]
    quorum: int
    min_clients: int
