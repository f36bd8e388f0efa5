"""A study's TLS material on disk: one CA, one server certificate per committee member.

Run by whoever sets the study up (``cohort certs``), once, before the manifest is signed:
the CA certificate and ``fingerprints.json`` go into the manifest; each member receives its
own ``<member>.pem`` and ``<member>-key.pem``; ``ca-key.pem`` stays offline with the setter.
Members load theirs with :func:`load_cert_key`. See docs/tls.md.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cohort.crypto.tls import (
    CertKey,
    cert_fingerprint,
    cert_fingerprint_hex,
    check_cert_name,
    issue_server_cert,
    make_ca,
    write_cert_key,
)
from cohort.errors import BadInputError
from cohort.files import PUBLIC, write_atomic

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
FINGERPRINTS = "fingerprints.json"
CA_COMMON_NAME = "Cohort study CA"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def member_files(member: str) -> tuple[str, str]:
    """File names of ``member``'s certificate and key inside the output folder."""
    return f"{member}.pem", f"{member}-key.pem"


def write_study_certs(
    out: Path,
    *,
    members: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write a fresh CA and one server certificate per member into ``out``.

    Files: ``ca.pem``, ``ca-key.pem`` (0600), ``<member>.pem``, ``<member>-key.pem`` (0600),
    ``fingerprints.json`` ({member: hex SHA-256 of the DER certificate}). Each certificate's
    SAN holds the member id plus every one of ``hosts``. Refuses to replace any existing
    file unless ``overwrite``; returns the fingerprints it wrote.
    """
    out = Path(out)
    if isinstance(members, str) or not members:
        raise BadInputError("members: give at least one committee member id")
    for member in members:
        check_cert_name(member, "member id")
        if member == "ca":
            raise BadInputError("member id 'ca' would collide with the CA's files")
    if len(set(members)) != len(members):
        raise BadInputError("members: duplicate member id")
    targets = [CA_CERT, CA_KEY, FINGERPRINTS, *(f for m in members for f in member_files(m))]
    existing = [name for name in targets if (out / name).exists()]
    if existing and not overwrite:
        raise BadInputError(
            f"{out / existing[0]} already exists; pass overwrite (--overwrite) to replace the "
            "study CA and every member certificate"
        )
    ca = make_ca(CA_COMMON_NAME)
    issued = {member: issue_server_cert(ca, member, hosts) for member in members}
    write_cert_key(ca, cert_path=out / CA_CERT, key_path=out / CA_KEY)
    for member, cert in issued.items():
        cert_name, key_name = member_files(member)
        write_cert_key(cert, cert_path=out / cert_name, key_path=out / key_name)
    fingerprints = {member: cert_fingerprint_hex(c.cert_pem) for member, c in issued.items()}
    record = json.dumps(fingerprints, indent=1, sort_keys=True) + "\n"
    write_atomic(out / FINGERPRINTS, record.encode("utf-8"), mode=PUBLIC)
    return fingerprints


def load_cert_key(cert_path: Path, key_path: Path) -> CertKey:
    """Read a member's certificate and key; BadInputError naming the file otherwise.

    Refuses a key file that other users can read or write, as ssh does.
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    try:
        cert_pem = cert_path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"certificate {cert_path}: cannot read ({exc.strerror})") from None
    try:
        cert_fingerprint(cert_pem)
    except BadInputError as exc:
        raise BadInputError(f"certificate {cert_path}: {exc}") from None
    try:
        mode = key_path.stat().st_mode
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"key file {key_path}: cannot read ({exc.strerror})") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BadInputError(
            f"key file {key_path}: mode {stat.S_IMODE(mode):04o} gives other users access; "
            "chmod 600"
        )
    try:
        return CertKey(cert_pem, key_pem)
    except BadInputError as exc:
        raise BadInputError(f"key file {key_path}: {exc}") from None
