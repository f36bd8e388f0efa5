"""Run one committee member: ``python -m cohort.aggregator --workdir DIR --tls-cert C --tls-key K``.

The work directory holds everything the member keeps::

    DIR/keys/          key store: identity.json + eth-keystore.json (encrypted, from
                       cohort keys new --role member), or eth_key.json (plain, made on first
                       start when there is no key store); mode 0600
    DIR/studies/<id>/  the operator's approvals (``cohort study approve MANIFEST --workdir DIR``)
    DIR/state.sqlite   configured studies, control counters, nonces, rounds, results, uploads

At start the member prints its public identity (member id, Ed25519 and X25519 keys, Ethereum
address, TLS fingerprint). ``--export-identity FILE`` writes the committee entry a sponsor
puts into a manifest and exits. Without ``--tls-cert/--tls-key`` the member refuses to start
unless ``--insecure`` is given (plaintext gRPC, logged as a warning). A port already in use
is refused with one line. Writes the bound port to ``--port-file`` once serving and stops
cleanly on SIGTERM or SIGINT. An encrypted attestation key is unlocked at start with the
password from ``--password-file`` or ``COHORT_KEYSTORE_PASSWORD``; ``--export-identity`` needs
no password.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from cohort.aggregator.keys import (
    IDENTITY_FILE,
    MemberIdentity,
    MemberKeys,
    eth_key_encrypted,
    load_member_identity,
    public_identity_record,
)
from cohort.aggregator.member import KEYS_DIR, CommitteeMember
from cohort.aggregator.mpc_member import warm_norm_checks
from cohort.aggregator.service import serve
from cohort.crypto.eth_keystore import PASSWORD_ENV, read_password
from cohort.crypto.tls import CertKey, cert_fingerprint
from cohort.errors import BadInputError, CohortError
from cohort.federation.certs import load_cert_key
from cohort.files import PUBLIC, write_atomic
from cohort.logs import configure, fields, get_logger
from cohort.memory import keep_freed_memory

log = get_logger("cohort.aggregator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cohort.aggregator", description="Run one Cohort committee member."
    )
    parser.add_argument(
        "--workdir", type=Path, required=True, help="member work directory (keys, studies, state)"
    )
    parser.add_argument("--keystore", type=Path, help="key store directory (default DIR/keys)")
    parser.add_argument("--member-id", help="member id (default: the work directory's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
    parser.add_argument("--tls-cert", type=Path, help="server certificate (PEM) from the study CA")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM, mode 0600)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext gRPC without --tls-cert/--tls-key (tests, trusted loopback only)",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the password of an encrypted Ethereum key (default: ${PASSWORD_ENV})",
    )
    parser.add_argument(
        "--export-identity",
        type=Path,
        metavar="FILE",
        help="write this member's manifest committee entry (JSON) to FILE and exit",
    )
    parser.add_argument(
        "--endpoint", default="", help="host:port callers use (for --export-identity)"
    )
    parser.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when the parent process goes away (used by LocalCommittee)",
    )
    parser.add_argument("--log-level", default=None, help="log level (default: COHORT_LOG_LEVEL)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds to finish calls on stop")
    return parser


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _watch_parent(stop: threading.Event) -> None:
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:
            log.warning("parent process gone; shutting down")
            stop.set()


def _keys(args: argparse.Namespace, workdir: Path) -> MemberKeys | MemberIdentity:
    """The member's keys; only its identity and address for ``--export-identity``."""
    keystore: Path = args.keystore or workdir / KEYS_DIR
    if (keystore / IDENTITY_FILE).exists():
        keys: MemberKeys | MemberIdentity
        if args.export_identity is not None:
            keys = load_member_identity(keystore)
        elif eth_key_encrypted(keystore):
            keys = MemberKeys.load(keystore, password=read_password(args.password_file))
        else:
            keys = MemberKeys.load(keystore)
        if args.member_id and keys.identity.party_id != args.member_id:
            raise BadInputError(
                f"member key store {keystore}: holds member {keys.identity.party_id!r}, "
                f"not {args.member_id!r}"
            )
        return keys
    return MemberKeys.load_or_create(keystore, member_id=args.member_id or workdir.resolve().name)


def _tls(args: argparse.Namespace) -> CertKey | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise BadInputError("give both --tls-cert and --tls-key, or neither")
    if args.tls_cert is None:
        return None
    return load_cert_key(args.tls_cert, args.tls_key)


def _print_identity(keys: MemberKeys | MemberIdentity, fingerprint: bytes, address: str) -> None:
    public = keys.identity.public
    lines = [
        f"cohort committee member {public.party_id}",
        f"  sign key (Ed25519): {public.sign_key.hex()}",
        f"  box key (X25519):   {public.box_key.hex()}",
        f"  eth address:        {keys.eth_address}",
        f"  tls fingerprint:    {fingerprint.hex() if fingerprint else 'none (plaintext)'}",
        f"  listening on:       {address}",
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level)
    keep_freed_memory()  # uploads' megabyte buffers reuse mapped pages (cohort.memory)
    workdir: Path = args.workdir
    try:
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = _keys(args, workdir)
        cert = _tls(args)
        fingerprint = cert_fingerprint(cert.cert_pem) if cert else b""
        if args.export_identity is not None:
            endpoint = args.endpoint or (f"{args.host}:{args.port}" if args.port else "")
            record = public_identity_record(keys, endpoint=endpoint, tls_fingerprint=fingerprint)
            text = json.dumps(record, indent=1, sort_keys=True) + "\n"
            write_atomic(args.export_identity, text.encode("utf-8"), mode=PUBLIC)
            print(
                f"wrote the committee entry of {keys.identity.party_id} to {args.export_identity}"
            )
            return 0
        if cert is None and not args.insecure:
            raise BadInputError(
                "no TLS certificate: pass --tls-cert and --tls-key (from the study CA), or "
                "--insecure to serve plaintext gRPC on a trusted network"
            )
        if not isinstance(keys, MemberKeys):  # only --export-identity loads less
            raise BadInputError("member key store: the attestation key was not unlocked")
        member = CommitteeMember(
            keys, workdir=workdir, tls_fingerprint=fingerprint, on_mpc_study=warm_norm_checks
        )
        try:
            server, port = serve(member, host=args.host, port=args.port, tls=cert)
        except BaseException:
            member.close()
            raise
    except CohortError as exc:
        print(f"cohort.aggregator: {exc}", file=sys.stderr)
        return 2

    member_id = keys.identity.party_id
    if cert is None:
        print(
            "cohort.aggregator: WARNING: --insecure: serving PLAINTEXT gRPC; control calls, "
            "uploads and results travel unencrypted on the network",
            file=sys.stderr,
            flush=True,
        )
        log.warning("serving without TLS (--insecure)", extra=fields(member=member_id, port=port))
    _print_identity(keys, fingerprint, f"{args.host}:{port}")

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(stop,), daemon=True).start()
    if args.port_file is not None:
        _write_atomically(args.port_file, f"{port}\n")
    log.info(
        "member ready",
        extra=fields(member=member_id, host=args.host, port=port, eth_address=keys.eth_address),
    )
    while not stop.wait(0.5):
        pass
    started = time.monotonic()
    server.stop(grace=args.grace).wait()
    member.close()
    if args.port_file is not None:
        args.port_file.unlink(missing_ok=True)
    log.info(
        "member stopped",
        extra=fields(member=member_id, stop_ms=round((time.monotonic() - started) * 1000)),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
