"""TLS for committee channels: a study CA, member server certificates, pinned channels.

Run by whoever sets a study up (``cohort certs``: :func:`make_ca`, :func:`issue_server_cert`),
by each committee member (:func:`server_credentials`) and by every caller of a member
(:func:`open_channel`). Keys are ECDSA P-256: gRPC's BoringSSL refuses Ed25519 server
certificates (``NO_COMMON_SIGNATURE_ALGORITHMS``, checked on grpcio 1.85).

A channel trusts only the study CA and checks the member id in the certificate's SAN. The
manifest also pins each member's leaf certificate by :func:`cert_fingerprint`. gRPC's Python
client does not expose the peer certificate, so :func:`open_channel` checks the pin in a
pre-flight handshake made with :mod:`ssl` before it creates the gRPC channel. That check runs
once, at channel creation; later (re)connections are still verified by gRPC against the CA and
the name, not against the pin. Key material never appears in ``repr`` or in error messages.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cohort.errors import BadInputError, ProtocolAbort, VerificationError
from cohort.files import PRIVATE, PUBLIC, write_atomic

FINGERPRINT_SIZE = 32
VALID_DAYS = 365
MAX_VALID_DAYS = 825
PREFLIGHT_TIMEOUT_S = 10.0
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class TlsUnavailable(ProtocolAbort):
    """The pre-flight could not reach the endpoint or complete a TLS handshake with it.

    Defined here because crypto imports nothing above it; callers map it to their own
    unavailability error (``cohort.aggregator.client.MemberUnavailable``).
    """


def check_cert_name(name: object, what: str = "certificate name") -> str:
    """Return ``name`` if it is a DNS-style name usable in a SAN (a member id such as "m1")."""
    if not isinstance(name, str) or len(name) > 253 or not _NAME.fullmatch(name):
        raise BadInputError(
            f"{what} must be a DNS-style name (letters, digits, '-', '.'): {name!r}"
        )
    if _ip(name) is not None:
        raise BadInputError(f"{what} must be a DNS-style name, not an IP address: {name!r}")
    return name


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _load_cert(cert_pem: object) -> x509.Certificate:
    if not isinstance(cert_pem, bytes):
        raise BadInputError("certificate must be PEM bytes")
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise BadInputError("certificate is not a PEM X.509 certificate") from None


def _spki(cert_or_key: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    public = cert_or_key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True, repr=False)
class CertKey:
    """A PEM certificate and its unencrypted PEM P-256 private key; checked to match.

    ``repr`` shows the subject and fingerprint only, never the key.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        cert = _load_cert(self.cert_pem)
        if not isinstance(self.key_pem, bytes):
            raise BadInputError("private key must be PEM bytes")
        try:
            key = serialization.load_pem_private_key(self.key_pem, password=None)
        except (ValueError, TypeError):
            raise BadInputError("private key is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise BadInputError("private key must be ECDSA P-256")
        if _spki(key) != _spki(cert):
            raise BadInputError("private key does not match the certificate")

    def _private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # unreachable: __post_init__
            raise BadInputError("private key must be ECDSA P-256")
        return key

    def __repr__(self) -> str:
        subject = _load_cert(self.cert_pem).subject.rfc4514_string()
        return f"CertKey(subject={subject!r}, fingerprint={cert_fingerprint_hex(self.cert_pem)})"

    __str__ = __repr__


def _build(
    subject: str, public_key: ec.EllipticCurvePublicKey, *, issuer: CertKey | None, days: int
) -> x509.CertificateBuilder:
    """Common fields; a CA certificate when ``issuer`` is None, else a leaf under it."""
    if not isinstance(days, int) or not 1 <= days <= MAX_VALID_DAYS:
        raise BadInputError(f"valid_days must be an integer in 1..{MAX_VALID_DAYS}: {days!r}")
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, is_ca = name, issuer is None
    if issuer is not None:
        ca = _load_cert(issuer.cert_pem)
        issuer_name, not_after = ca.subject, min(not_after, ca.not_valid_after_utc)
    usage = x509.KeyUsage(
        digital_signature=not is_ca, key_cert_sign=is_ca, crl_sign=is_ca,
        content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())  # 159 bits from os.urandom
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
        .add_extension(usage, critical=True)
    )


def make_ca(common_name: str, *, valid_days: int = VALID_DAYS) -> CertKey:
    """A fresh self-signed study CA (CA:TRUE, path length 0, may sign certificates only)."""
    if not isinstance(common_name, str) or not common_name or not common_name.isprintable():
        raise BadInputError("CA common name must be non-empty printable text")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _build(common_name, key.public_key(), issuer=None, days=valid_days)
    return _pair(builder.sign(key, hashes.SHA256()), key)


def issue_server_cert(
    ca: CertKey, name: str, hosts: Sequence[str], *, valid_days: int = VALID_DAYS
) -> CertKey:
    """A server certificate for member ``name``, signed by ``ca``.

    SAN: DNS ``name`` (what clients check, see :class:`ChannelTls`) plus each of ``hosts`` as
    an IP address or DNS name. Never valid beyond the CA.
    """
    check_cert_name(name, "member name")
    try:
        is_ca = _load_cert(ca.cert_pem).extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        is_ca = None
    if is_ca is None or not is_ca.value.ca:
        raise BadInputError("issuer certificate is not a CA (BasicConstraints CA:TRUE)")
    if isinstance(hosts, str):
        raise BadInputError("hosts must be a sequence of host names or addresses, not one string")
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for host in hosts:
        ip = _ip(host) if isinstance(host, str) else None
        general = x509.IPAddress(ip) if ip is not None else x509.DNSName(check_cert_name(host))
        if general not in sans:
            sans.append(general)
    key, ca_key = ec.generate_private_key(ec.SECP256R1()), ca._private_key()
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        _build(name, key.public_key(), issuer=ca, days=valid_days)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pair(cert, key)


def _pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertKey:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertKey(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def cert_fingerprint(cert_pem: bytes) -> bytes:
    """SHA-256 of the DER certificate (32 bytes): the standard X.509 fingerprint, the same
    as ``openssl x509 -noout -fingerprint -sha256``, so it carries no Cohort domain tag."""
    der = _load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


def cert_fingerprint_hex(cert_pem: bytes) -> str:
    """:func:`cert_fingerprint` as 64 lowercase hex digits (manifest and display form)."""
    return cert_fingerprint(cert_pem).hex()


def fingerprint_from_hex(text: str) -> bytes:
    """Parse a fingerprint written as hex, with or without ``:`` separators (openssl's form)."""
    try:
        raw = bytes.fromhex(text.replace(":", "")) if isinstance(text, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != FINGERPRINT_SIZE:
        raise BadInputError(f"certificate fingerprint must be {FINGERPRINT_SIZE} bytes of hex")
    return raw


def write_cert_key(cert: CertKey, *, cert_path: Path, key_path: Path) -> None:
    """Write the certificate (0644) and its key (0600, never readable by others) atomically."""
    write_atomic(Path(key_path), cert.key_pem, mode=PRIVATE)
    write_atomic(Path(cert_path), cert.cert_pem, mode=PUBLIC)


def server_credentials(cert: CertKey) -> grpc.ServerCredentials:
    """gRPC server credentials presenting ``cert``. Run by a committee member.

    Clients are not asked for certificates: callers authenticate by Ed25519 signatures.
    """
    return grpc.ssl_server_credentials([(cert.key_pem, cert.cert_pem)])


@dataclass(frozen=True)
class ChannelTls:
    """How a caller checks one member: the study CA, the member id in its SAN, and the
    member's leaf fingerprint from the manifest (``None``: CA and name only, no pin)."""

    ca_pem: bytes
    server_name: str
    fingerprint: bytes | None

    def __post_init__(self) -> None:
        _load_cert(self.ca_pem)
        if not self.ca_pem.isascii():
            raise BadInputError("ca_pem must be ASCII PEM text")
        check_cert_name(self.server_name, "server_name")
        fp = self.fingerprint
        if fp is not None and (not isinstance(fp, bytes) or len(fp) != FINGERPRINT_SIZE):
            raise BadInputError(f"fingerprint must be {FINGERPRINT_SIZE} bytes or None")


def _host_port(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"endpoint must be host:port, got {endpoint!r}")
    return host, int(port)


def check_pin(endpoint: str, tls: ChannelTls, *, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Pre-flight: one TLS handshake to ``endpoint`` trusting only ``tls.ca_pem`` and
    checking ``tls.server_name``; then compare the leaf's SHA-256 with ``tls.fingerprint``.

    Raises VerificationError (chain, name or pin fails), TlsUnavailable (no TCP connection
    or no TLS handshake within ``timeout_s``) or BadInputError (malformed endpoint).
    """
    host, port = _host_port(endpoint)
    if not timeout_s > 0:
        raise BadInputError(f"pre-flight timeout must be > 0 seconds, got {timeout_s!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=tls.ca_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=tls.server_name) as conn,
        ):
            der = conn.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError as exc:
        raise VerificationError(
            f"TLS endpoint {endpoint}: certificate does not verify as {tls.server_name!r} "
            f"under the study CA ({exc.verify_message})"
        ) from None
    except OSError as exc:  # ssl.SSLError, refused, unresolvable, timed out
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc) or type(exc).__name__
        raise TlsUnavailable(f"TLS endpoint {endpoint}: no TLS connection ({reason})") from None
    if der is None:
        raise VerificationError(f"TLS endpoint {endpoint}: presented no certificate")
    got = hashlib.sha256(der).digest()
    if tls.fingerprint is not None and not hmac.compare_digest(got, tls.fingerprint):
        raise VerificationError(
            f"TLS endpoint {endpoint}: certificate fingerprint {got.hex()} differs from the "
            f"manifest's {tls.fingerprint.hex()} for {tls.server_name!r}"
        )


def open_channel(
    endpoint: str,
    tls: ChannelTls | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    preflight_timeout_s: float = PREFLIGHT_TIMEOUT_S,
) -> grpc.Channel:
    """A gRPC channel to ``endpoint``. Run by every caller of a committee member.

    ``tls=None`` gives a plaintext channel: only for tests and explicitly insecure local
    runs. Otherwise the channel trusts only ``tls.ca_pem`` and expects ``tls.server_name``;
    with a fingerprint, :func:`check_pin` runs first and no channel is made if it fails.
    """
    if tls is None:
        return grpc.insecure_channel(endpoint, options=list(options))
    if tls.fingerprint is not None:
        check_pin(endpoint, tls, timeout_s=preflight_timeout_s)
    merged = [(k, v) for k, v in options if k != "grpc.ssl_target_name_override"]
    merged.append(("grpc.ssl_target_name_override", tls.server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls.ca_pem)
    return grpc.secure_channel(endpoint, credentials, options=merged)
