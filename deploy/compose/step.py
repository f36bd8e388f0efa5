#!/usr/bin/env python3
"""One set-up step of the Docker Compose study: run a command once, then hand files on.

Run by the one-shot services of ``docker-compose.yml`` (keys, certificates, the manifest,
SuperNode registration), each in its own role's container. ``docker compose up`` runs every
one-shot service again on each start, so a step must be safe to repeat:

* ``--password-file FILE``: create FILE with a fresh random password (mode 0600) if it does
  not exist yet; an existing one is kept (the key store it unlocks depends on it);
* ``--once PATH``: skip the command when PATH exists; after the command succeeds, create
  PATH if the command did not (a marker such as ``/state/registered/hospital-1``);
* ``--copy SRC:DEST``: after the command (or the skip), copy SRC to DEST atomically with
  SRC's mode bits; this is how a party hands its *public* files to the ``public`` volume
  and the study CA hands each server its certificate.

Usage: ``step.py [--password-file FILE] [--once PATH] [--copy SRC:DEST ...] -- PROGRAM ARG...``
Exit status: the command's, or 2 for a bad step line or a copy that fails.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: Bytes of randomness in a generated password (URL-safe base64 in the file).
PASSWORD_BYTES = 32


def _copy_spec(text: str) -> tuple[Path, Path]:
    source, sep, dest = text.partition(":")
    if not sep or not source or not dest:
        raise argparse.ArgumentTypeError(f"--copy wants SRC:DEST, got {text!r}")
    return Path(source), Path(dest)


def build_parser() -> argparse.ArgumentParser:
    """The step's command line (the compose test parses every service's step with it)."""
    parser = argparse.ArgumentParser(
        prog="step.py",
        description="Run a Compose set-up command once, then copy its hand-off files.",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="create FILE with a random password (0600) unless it exists",
    )
    parser.add_argument(
        "--once", type=Path, metavar="PATH", help="skip the command when PATH exists"
    )
    parser.add_argument(
        "--copy",
        type=_copy_spec,
        action="append",
        default=[],
        metavar="SRC:DEST",
        help="copy SRC to DEST (atomically, keeping SRC's mode) after the command",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARG...")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse a step line; the command after ``--`` is required."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command: give it after --")
    args.command = command
    return args


def _make_password(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
    print(f"step: created a random password in {path}", flush=True)


def _copy(source: Path, dest: Path) -> None:
    mode = stat.S_IMODE(source.stat().st_mode)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    for path in args.password_file:
        _make_password(path)
    once: Path | None = args.once
    if once is not None and once.exists():
        print(f"step: {once} exists, skipping: {' '.join(args.command)}", flush=True)
    else:
        code = subprocess.call(args.command)
        if code != 0:
            return code
        if once is not None and not once.exists():
            once.parent.mkdir(parents=True, exist_ok=True)
            once.touch()
    for source, dest in args.copy:
        try:
            _copy(source, dest)
        except OSError as exc:
            print(f"step: cannot copy {source} to {dest}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"step: copied {source} to {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
