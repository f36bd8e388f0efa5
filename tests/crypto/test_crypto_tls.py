"""TLS for committee channels: certificates, pinned channels against a real gRPC server,
and the study's certificate files."""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from cohort.crypto.tls import (
    FINGERPRINT_SIZE,
    CertKey,
    ChannelTls,
    TlsUnavailable,
    cert_fingerprint,
    cert_fingerprint_hex,
    check_pin,
    fingerprint_from_hex,
    issue_server_cert,
    make_ca,
    open_channel,
    server_credentials,
    write_cert_key,
)
from cohort.errors import BadInputError, ProtocolAbort, VerificationError
from cohort.federation.certs import CA_CERT, CA_KEY, FINGERPRINTS, load_cert_key, write_study_certs

READY_S = 10.0
CA = make_ca("test CA")
M1 = issue_server_cert(CA, "m1", ["127.0.0.1", "localhost"])
OTHER_CA = make_ca("other CA")
M1_OTHER_CA = issue_server_cert(OTHER_CA, "m1", ["127.0.0.1"])
M1_FP = cert_fingerprint(M1.cert_pem)
ECHO = "/cohort.test.Echo/Echo"


@dataclass
class EchoServer:
    """A real gRPC server with one bytes-in, bytes-out method that records its calls."""

    endpoint: str
    server: grpc.Server
    calls: list[bytes] = field(default_factory=list)


def _start(cert: CertKey | None) -> EchoServer:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    holder: list[EchoServer] = []

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        holder[0].calls.append(request)
        return request

    handler = grpc.method_handlers_generic_handler(
        "cohort.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    if cert is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(cert))
    assert port != 0
    server.start()
    holder.append(EchoServer(f"127.0.0.1:{port}", server))
    return holder[0]


@pytest.fixture
def tls_server() -> Iterator[EchoServer]:
    running = _start(M1)
    yield running
    running.server.stop(None)


def _call(channel: grpc.Channel, payload: bytes = b"ping") -> bytes:
    grpc.channel_ready_future(channel).result(timeout=READY_S)
    reply: bytes = channel.unary_unary(ECHO)(payload, timeout=READY_S)
    return reply


def _call_fails(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(ECHO)(b"ping", timeout=READY_S)
    code: grpc.StatusCode = info.value.code()
    return code


# --- certificates ------------------------------------------------------------------------


def test_ca_is_a_bounded_p256_ca() -> None:
    cert = x509.load_pem_x509_certificate(CA.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= life <= datetime.timedelta(days=366)


def test_server_cert_has_member_name_and_hosts_in_san() -> None:
    cert = x509.load_pem_x509_certificate(M1.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["m1", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == x509.load_pem_x509_certificate(CA.cert_pem).subject
    assert (
        cert.not_valid_after_utc <= x509.load_pem_x509_certificate(CA.cert_pem).not_valid_after_utc
    )


def test_serials_are_random_and_distinct() -> None:
    serials = {
        x509.load_pem_x509_certificate(c.cert_pem).serial_number
        for c in (CA, M1, OTHER_CA, M1_OTHER_CA, issue_server_cert(CA, "m1", []))
    }
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


@pytest.mark.parametrize("name", ["", "m 1", "-m1", "m1-", "a..b", "127.0.0.1", "m1/x", "é"])
def test_bad_member_names_are_refused(name: str) -> None:
    with pytest.raises(BadInputError):
        issue_server_cert(CA, name, [])


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(BadInputError, match="not a CA"):
        issue_server_cert(M1, "m2", [])
    with pytest.raises(BadInputError, match="sequence"):
        issue_server_cert(CA, "m2", "127.0.0.1")
    with pytest.raises(BadInputError, match="valid_days"):
        make_ca("x", valid_days=10_000)
    with pytest.raises(BadInputError, match="does not match"):
        CertKey(M1.cert_pem, CA.key_pem)
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadInputError, match="P-256"):
        CertKey(M1.cert_pem, ed)
    with pytest.raises(BadInputError, match="fingerprint"):
        ChannelTls(CA.cert_pem, "m1", b"short")


def test_repr_never_shows_the_key() -> None:
    key_body = b"".join(M1.key_pem.splitlines()[1:-1]).decode()
    for text in (repr(M1), str(M1), repr(CA)):
        assert "PRIVATE" not in text
        assert key_body[:40] not in text
    assert cert_fingerprint_hex(M1.cert_pem) in repr(M1)


def test_fingerprint_is_sha256_of_der_and_stable() -> None:
    cert = x509.load_pem_x509_certificate(M1.cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert M1_FP == hashlib.sha256(der).digest() == cert.fingerprint(hashes.SHA256())
    assert len(M1_FP) == FINGERPRINT_SIZE
    assert cert_fingerprint(M1.cert_pem) == M1_FP
    assert cert_fingerprint_hex(M1.cert_pem) == M1_FP.hex()
    openssl_form = ":".join(f"{b:02X}" for b in M1_FP)
    assert fingerprint_from_hex(openssl_form) == fingerprint_from_hex(M1_FP.hex()) == M1_FP
    with pytest.raises(BadInputError):
        fingerprint_from_hex("abcd")
    assert cert_fingerprint(M1_OTHER_CA.cert_pem) != M1_FP


# --- channels ------------------------------------------------------------------------------


def test_pinned_channel_calls_the_member(tls_server: EchoServer) -> None:
    channel = open_channel(tls_server.endpoint, ChannelTls(CA.cert_pem, "m1", M1_FP))
    with channel:
        assert _call(channel, b"hello") == b"hello"
    assert tls_server.calls == [b"hello"]


def test_channel_without_pin_checks_ca_and_name(tls_server: EchoServer) -> None:
    with open_channel(tls_server.endpoint, ChannelTls(CA.cert_pem, "m1", None)) as channel:
        assert _call(channel) == b"ping"


def test_wrong_fingerprint_fails_before_any_call(tls_server: EchoServer) -> None:
    other = cert_fingerprint(M1_OTHER_CA.cert_pem)
    with pytest.raises(VerificationError, match=tls_server.endpoint) as info:
        open_channel(tls_server.endpoint, ChannelTls(CA.cert_pem, "m1", other))
    assert "fingerprint" in str(info.value)
    assert tls_server.calls == []


def test_certificate_from_another_ca_fails() -> None:
    running = _start(M1_OTHER_CA)
    try:
        pin = cert_fingerprint(M1_OTHER_CA.cert_pem)  # even the right pin is not enough
        with pytest.raises(VerificationError, match="does not verify"):
            open_channel(running.endpoint, ChannelTls(CA.cert_pem, "m1", pin))
        with open_channel(running.endpoint, ChannelTls(CA.cert_pem, "m1", None)) as channel:
            assert _call_fails(channel) == grpc.StatusCode.UNAVAILABLE
        assert running.calls == []
    finally:
        running.server.stop(None)


def test_wrong_server_name_fails(tls_server: EchoServer) -> None:
    with pytest.raises(VerificationError, match="'m2'"):
        open_channel(tls_server.endpoint, ChannelTls(CA.cert_pem, "m2", M1_FP))
    with open_channel(tls_server.endpoint, ChannelTls(CA.cert_pem, "m2", None)) as channel:
        assert _call_fails(channel) == grpc.StatusCode.UNAVAILABLE
    assert tls_server.calls == []


def test_insecure_client_against_tls_server_fails(tls_server: EchoServer) -> None:
    with open_channel(tls_server.endpoint, None) as channel:
        assert _call_fails(channel) == grpc.StatusCode.UNAVAILABLE
    assert tls_server.calls == []


def test_tls_client_against_plaintext_server_is_unavailable() -> None:
    running = _start(None)
    try:
        with pytest.raises(TlsUnavailable, match=running.endpoint):
            open_channel(running.endpoint, ChannelTls(CA.cert_pem, "m1", M1_FP))
        with open_channel(running.endpoint, None) as channel:  # the server itself works
            assert _call(channel) == b"ping"
    finally:
        running.server.stop(None)


def test_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(TlsUnavailable, match=endpoint) as info:
        check_pin(endpoint, ChannelTls(CA.cert_pem, "m1", M1_FP), timeout_s=5.0)
    assert isinstance(info.value, ProtocolAbort)
    for bad in ("no-port", "dns:///m1:443", "127.0.0.1:0", "127.0.0.1:http"):
        with pytest.raises(BadInputError, match="host:port"):
            check_pin(bad, ChannelTls(CA.cert_pem, "m1", M1_FP))


# --- study files ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_study_certs_files_and_modes(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    fingerprints = write_study_certs(out, members=["m1", "m2"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [CA_CERT, CA_KEY, FINGERPRINTS, "m1.pem", "m1-key.pem", "m2.pem", "m2-key.pem"]
    )
    for key in (CA_KEY, "m1-key.pem", "m2-key.pem"):
        assert _mode(out / key) == 0o600
    for cert in (CA_CERT, "m1.pem", "m2.pem"):
        assert _mode(out / cert) == 0o644
    assert json.loads((out / FINGERPRINTS).read_text()) == fingerprints
    for member in ("m1", "m2"):  # the fingerprint is stable across reloads
        loaded = load_cert_key(out / f"{member}.pem", out / f"{member}-key.pem")
        assert cert_fingerprint_hex(loaded.cert_pem) == fingerprints[member]
        assert cert_fingerprint_hex((out / f"{member}.pem").read_bytes()) == fingerprints[member]


def test_study_certs_refuse_overwrite(tmp_path: Path) -> None:
    first = write_study_certs(tmp_path, members=["m1"])
    ca_before = (tmp_path / CA_CERT).read_bytes()
    with pytest.raises(BadInputError, match="already exists"):
        write_study_certs(tmp_path, members=["m1"])
    assert (tmp_path / CA_CERT).read_bytes() == ca_before
    second = write_study_certs(tmp_path, members=["m1"], overwrite=True)
    assert second["m1"] != first["m1"]
    assert (tmp_path / CA_CERT).read_bytes() != ca_before
    with pytest.raises(BadInputError, match="duplicate"):
        write_study_certs(tmp_path / "x", members=["m1", "m1"])
    with pytest.raises(BadInputError, match="collide"):
        write_study_certs(tmp_path / "y", members=["ca"])


def test_study_certs_serve_a_pinned_channel(tmp_path: Path) -> None:
    fingerprints = write_study_certs(tmp_path, members=["m1", "m2"])
    running = _start(load_cert_key(tmp_path / "m2.pem", tmp_path / "m2-key.pem"))
    try:
        ca_pem = (tmp_path / CA_CERT).read_bytes()
        pin = fingerprint_from_hex(fingerprints["m2"])
        with open_channel(running.endpoint, ChannelTls(ca_pem, "m2", pin)) as channel:
            assert _call(channel) == b"ping"
        with pytest.raises(VerificationError):  # m1's pin does not fit m2's certificate
            open_channel(
                running.endpoint, ChannelTls(ca_pem, "m2", bytes.fromhex(fingerprints["m1"]))
            )
    finally:
        running.server.stop(None)


def test_load_cert_key_errors_name_the_file(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "m1.pem", tmp_path / "m1-key.pem"
    with pytest.raises(BadInputError, match=f"certificate {cert_path}: cannot read"):
        load_cert_key(cert_path, key_path)
    write_cert_key(M1, cert_path=cert_path, key_path=key_path)
    assert load_cert_key(cert_path, key_path) == M1
    key_path.chmod(0o644)
    with pytest.raises(BadInputError, match=f"key file {key_path}: mode 0644") as info:
        load_cert_key(cert_path, key_path)
    assert "\n" not in str(info.value)
    key_path.chmod(0o600)
    key_path.write_bytes(b"not a key")
    with pytest.raises(BadInputError, match=f"key file {key_path}: private key"):
        load_cert_key(cert_path, key_path)
    write_cert_key(CA, cert_path=tmp_path / "ca.pem", key_path=key_path)  # CA key, M1 cert
    with pytest.raises(BadInputError, match="does not match"):
        load_cert_key(cert_path, key_path)
    cert_path.write_bytes(b"garbage")
    with pytest.raises(BadInputError, match=f"certificate {cert_path}: certificate is not"):
        load_cert_key(cert_path, key_path)


# --- an operator's own CA (docs/tls.md: root -> intermediate -> member) ----------------------


def _own_ca_cert(
    subject: str, signer: ec.EllipticCurvePrivateKey, issuer: x509.Name | None
) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=False, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer if issuer else key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CertKey(cert.public_bytes(pem), key_pem)


def test_own_ca_with_an_intermediate_pins_the_leaf() -> None:
    root = _own_ca_cert("operator root", ec.generate_private_key(ec.SECP256R1()), None)
    root_key = serialization.load_pem_private_key(root.key_pem, password=None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root_name = x509.load_pem_x509_certificate(root.cert_pem).subject
    intermediate = _own_ca_cert("operator issuing CA", root_key, root_name)
    leaf = issue_server_cert(intermediate, "m1", ["127.0.0.1"])
    chain = CertKey(leaf.cert_pem + intermediate.cert_pem, leaf.key_pem)  # leaf first
    assert cert_fingerprint(chain.cert_pem) == cert_fingerprint(leaf.cert_pem)
    running = _start(chain)
    try:
        pin = cert_fingerprint(leaf.cert_pem)
        with open_channel(running.endpoint, ChannelTls(root.cert_pem, "m1", pin)) as channel:
            assert _call(channel) == b"ping"
        with pytest.raises(VerificationError, match="unable to get issuer"):  # trust the root
            open_channel(running.endpoint, ChannelTls(intermediate.cert_pem, "m1", pin))
    finally:
        running.server.stop(None)


def test_study_ca_cannot_sign_an_intermediate() -> None:
    ca_key = serialization.load_pem_private_key(CA.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_name = x509.load_pem_x509_certificate(CA.cert_pem).subject
    intermediate = _own_ca_cert("rogue issuing CA", ca_key, ca_name)
    leaf = issue_server_cert(intermediate, "m1", ["127.0.0.1"])
    running = _start(CertKey(leaf.cert_pem + intermediate.cert_pem, leaf.key_pem))
    try:
        pin = cert_fingerprint(leaf.cert_pem)
        with pytest.raises(VerificationError, match="path length"):
            open_channel(running.endpoint, ChannelTls(CA.cert_pem, "m1", pin))
    finally:
        running.server.stop(None)
