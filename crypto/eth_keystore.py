"""An Ethereum account key encrypted at rest: the Web3 Secret Storage (v3) JSON, scrypt.

Run by every party of a real deployment that holds an Ethereum account: a hospital (its
payout account, to withdraw), a committee member (its attestation key, to serve) and the
sponsor (the account that deploys the study contract and funds the bounty). The file is the
one ``eth_account.Account.encrypt`` writes (AES-128-CTR under a scrypt-derived key, with a
MAC), so any Ethereum wallet can open it too.

* :func:`write_eth_keystore` encrypts a key under a password into a 0600 file;
* :func:`eth_keystore_address` reads the account's address **without** the password (the
  file carries it in clear), for rosters and ``cohort keys show``;
* :func:`unlock_eth_keystore` needs the password and checks the address it derives against
  the one in the file;
* :func:`read_password` takes the password from a file or ``COHORT_KEYSTORE_PASSWORD``,
  never from a command-line argument (other users can read those in ``ps``).

scrypt's cost (N = 2^18, r = 8, p = 1, eth_account's default) is about 0.6 s per
encryption and per unlock. Synthetic parties made in-process by ``cohort simulate`` and the
tests keep their raw key files instead (see ``federation/keyfiles.py``). The password, the
key and the derived key never appear in messages, ``repr`` or logs.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_utils.address import to_checksum_address

from cohort.errors import BadInputError, VerificationError
from cohort.files import PRIVATE, write_atomic

#: The environment variable a password is read from when no password file is given.
PASSWORD_ENV = "COHORT_KEYSTORE_PASSWORD"  # noqa: S105 (a variable name, not a password)
#: scrypt cost parameter N (eth_account's default and geth's "standard" setting).
SCRYPT_N = 2**18
KEY_SIZE = 32
_VERSION = 3


def read_password(password_file: Path | None) -> str:
    """The keystore password: the content of ``password_file``, else ``$COHORT_KEYSTORE_PASSWORD``.

    Trailing line breaks of the file are dropped; a file of several lines is refused. An
    empty password, a missing file and neither source given raise :class:`BadInputError`
    with one line that names the source (never the password).
    """
    if password_file is not None:
        where = f"password file {password_file}"
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInputError(f"{where}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise BadInputError(f"{where}: not UTF-8 text") from None
        password = text.rstrip("\r\n")
        if "\n" in password:
            raise BadInputError(f"{where}: holds more than one line; put the password alone")
        if not password:
            raise BadInputError(f"{where} is empty: a keystore needs a non-empty password")
        return password
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is None:
        raise BadInputError(
            f"no keystore password: pass --password-file FILE or set {PASSWORD_ENV}"
        )
    if not from_env:
        raise BadInputError(f"{PASSWORD_ENV} is empty: a keystore needs a non-empty password")
    return from_env


def write_eth_keystore(path: Path, private_key: bytes, password: str) -> str:
    """Encrypt ``private_key`` under ``password`` into ``path`` (mode 0600); its address."""
    if not isinstance(private_key, bytes) or len(private_key) != KEY_SIZE:
        raise BadInputError(f"eth keystore {path}: the private key must be {KEY_SIZE} bytes")
    if not isinstance(password, str) or not password:
        raise BadInputError(f"eth keystore {path}: a keystore needs a non-empty password")
    document = Account.encrypt(private_key, password, kdf="scrypt", iterations=SCRYPT_N)
    write_atomic(Path(path), json.dumps(document, indent=1).encode("utf-8"), mode=PRIVATE)
    return str(Account.from_key(private_key).address)


def _read(path: Path) -> dict[str, Any]:
    where = f"eth keystore {path}"
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
        document: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadInputError(f"{where}: not valid JSON") from None
    if not isinstance(document, dict) or document.get("version") != _VERSION:
        raise BadInputError(f"{where}: not a version-3 Ethereum keystore")
    crypto = document.get("crypto")
    if not isinstance(crypto, dict) or crypto.get("kdf") not in ("scrypt", "pbkdf2"):
        raise BadInputError(f"{where}: no 'crypto' section with a scrypt or pbkdf2 KDF")
    return document


def _address(document: dict[str, Any], where: str) -> str:
    value = document.get("address")
    if not isinstance(value, str):
        raise BadInputError(f"{where}: no 'address' field")
    try:
        return str(to_checksum_address(value if value.startswith("0x") else f"0x{value}"))
    except ValueError:
        raise BadInputError(f"{where}: 'address' is not an Ethereum address") from None


def eth_keystore_address(path: Path) -> str:
    """The account's checksummed address, read from ``path`` without the password."""
    path = Path(path)
    return _address(_read(path), f"eth keystore {path}")


def unlock_eth_keystore(path: Path, password: str) -> bytes:
    """The 32-byte private key in ``path``.

    A wrong password (or an altered ciphertext: the MAC cannot tell them apart) raises
    :class:`BadInputError`; a key whose address differs from the file's ``address`` field
    raises :class:`VerificationError` (the file was edited).
    """
    path = Path(path)
    where = f"eth keystore {path}"
    document = _read(path)
    address = _address(document, where)
    try:
        key = bytes(Account.decrypt(document, password))
    except ValueError:
        raise BadInputError(f"{where}: wrong password (or the file was altered)") from None
    except (KeyError, TypeError):
        raise BadInputError(f"{where}: malformed 'crypto' section") from None
    if len(key) != KEY_SIZE:
        raise BadInputError(f"{where}: the decrypted key is not {KEY_SIZE} bytes")
    if str(Account.from_key(key).address) != address:
        raise VerificationError(f"{where}: the key does not match the file's address field")
    return key
