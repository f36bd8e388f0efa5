"""Atomic file writes: all or nothing, with the mode set before any byte lands.

Key stores, privacy ledgers and study outputs are written through :func:`write_atomic` so a
crash never leaves half a file, and a secret file is never readable by others, not even for
the instant between creation and ``chmod``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644


def write_atomic(path: Path, data: bytes, *, mode: int = PUBLIC) -> None:
    """Write ``data`` to ``path`` via a synced temporary file in the same directory and a
    rename; ``mode`` applies to the file (use :data:`PRIVATE` for key material)."""
    private = mode & 0o077 == 0
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
