"""A data owner's accounting memo on disk: one JSON file per question, naming the question.

Used by :mod:`cohort.clients.accounting` (calibrations, PRV epsilons) and
:mod:`cohort.clients.rdp_orders` (per-step RDP vectors), in the folder a ClientApp sets with
:func:`cohort.clients.accounting.use_disk_memo`. Each file holds ``{"key": ..., "value":
...}``; :func:`get` answers only from a file whose key is the question asked, and each caller
checks the value's shape. A memo is a cache, not a record: an unreadable file is a miss, and
a file that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cohort.files import write_atomic

_folder: Path | None = None


def use(folder: Path | None) -> None:
    """Keep memo files in ``folder`` from now on (None: none are read or written)."""
    global _folder
    _folder = folder


def _path(key: str, prefix: str) -> Path | None:
    if _folder is None:
        return None
    return _folder / f"{prefix}{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def get(key: str, *, prefix: str = "") -> Any:
    """The value stored for ``key``; None without a folder, a file, or a file for ``key``."""
    path = _path(key, prefix)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("value") if isinstance(data, dict) and data.get("key") == key else None


def put(key: str, value: Any, *, prefix: str = "") -> None:
    """Store ``value`` for ``key`` (nothing without a folder or when it cannot be written)."""
    path = _path(key, prefix)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"key": key, "value": value}).encode("utf-8"))
    except OSError:
        pass  # a memo, not a record: computed again next time


__all__ = ["get", "put", "use"]
