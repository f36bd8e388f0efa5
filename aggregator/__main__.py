"""Run one committee member: ``python -m cohort.aggregator --keystore DIR [--port-file FILE]``.

Creates the member's key store in DIR on first start (identity + Ethereum key, mode 0600)
and loads it afterwards, serves the Committee gRPC service, writes the bound port to
``--port-file`` atomically once serving, and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from cohort.aggregator.member import CommitteeMember, MemberKeys
from cohort.aggregator.service import serve
from cohort.errors import CohortError
from cohort.logs import configure, fields, get_logger

log = get_logger("cohort.aggregator")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cohort.aggregator", description="Run one Cohort committee member."
    )
    parser.add_argument("--keystore", type=Path, required=True, help="key store directory")
    parser.add_argument("--member-id", help="member id (default: the key store folder name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument("--port-file", type=Path, help="write the bound port here when ready")
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(args.log_level)
    keystore: Path = args.keystore
    member_id: str = args.member_id or keystore.resolve().name
    try:
        keys = MemberKeys.load_or_create(keystore, member_id=member_id)
        member = CommitteeMember(keys)
        server, port = serve(member, host=args.host, port=args.port)
    except CohortError as exc:
        print(f"cohort.aggregator: {exc}", file=sys.stderr)
        return 2

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
    if args.port_file is not None:
        args.port_file.unlink(missing_ok=True)
    log.info(
        "member stopped",
        extra=fields(member=member_id, stop_ms=round((time.monotonic() - started) * 1000)),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
