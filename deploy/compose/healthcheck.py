#!/usr/bin/env python3
"""Docker Compose healthchecks for Cohort's services; exit 0 when healthy, 1 when not.

* ``https HOST:PORT/PATH --ca FILE``: an HTTPS GET (the SuperLink's ``/health``), the server
  certificate verified against the study CA and HOST;
* ``http HOST:PORT/PATH``: a plain HTTP GET (a SuperNode's loopback Runtime API ``/health``);
* ``tls HOST:PORT --ca FILE``: a TLS handshake offering HTTP/2 (a committee member's gRPC
  port), the certificate verified against the study CA and HOST;
* ``grpc HOST:PORT``: the standard gRPC health check without TLS (Flower's
  ``--health-server-address``).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

TIMEOUT_S = 5.0


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"want HOST:PORT, got {text!r}")
    return host, int(port)


def _target(text: str) -> tuple[str, int, str]:
    address, _, path = text.partition("/")
    host, port = _address(address)
    return host, port, "/" + path


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (the compose test parses every healthcheck with it)."""
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.splitlines()[0])
    checks = parser.add_subparsers(dest="check", required=True)
    https = checks.add_parser("https", help="HTTPS GET, certificate checked against --ca")
    https.add_argument("target", type=_target, metavar="HOST:PORT/PATH")
    https.add_argument("--ca", type=Path, required=True, help="the study CA (PEM)")
    http = checks.add_parser("http", help="plain HTTP GET (loopback only)")
    http.add_argument("target", type=_target, metavar="HOST:PORT/PATH")
    tls = checks.add_parser("tls", help="TLS handshake, certificate checked against --ca")
    tls.add_argument("address", type=_address, metavar="HOST:PORT")
    tls.add_argument("--ca", type=Path, required=True, help="the study CA (PEM)")
    grpc = checks.add_parser("grpc", help="gRPC health check without TLS")
    grpc.add_argument("address", type=_address, metavar="HOST:PORT")
    return parser


def _get(url: str, context: ssl.SSLContext | None) -> bool:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:  # noqa: S310
        return bool(response.status == 200)


def _handshake(host: str, port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname=host) as conn,
    ):
        return conn.version() is not None


def _grpc_serving(host: str, port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.check in ("https", "http"):
            host, port, path = args.target
            context = (
                ssl.create_default_context(cafile=str(args.ca)) if args.check == "https" else None
            )
            healthy = _get(f"{args.check}://{host}:{port}{path}", context)
        elif args.check == "tls":
            host, port = args.address
            healthy = _handshake(host, port, args.ca)
        else:
            host, port = args.address
            healthy = _grpc_serving(host, port)
    except Exception as exc:  # any failure is "unhealthy", with its reason for docker inspect
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("healthy" if healthy else "unhealthy")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
