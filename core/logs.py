"""Structured logging: one JSON object per line on stderr (or rich text for humans).

Every Cohort logger is a child of ``cohort``; call :func:`get_logger` with the module
name and pass context as keyword fields::

    log = get_logger(__name__)
    log.info("envelope rejected", extra={"fields": {"member": "m1", "reason": "replay"}})

Never put key material, plaintext updates or ciphertext bytes in a log field: log ids,
sizes, hashes and reasons.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

ROOT = "cohort"


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON line with its structured ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            payload["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(payload, default=str, sort_keys=False)


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``cohort`` root (``cohort.aggregator.member`` and so on)."""
    if not name.startswith(ROOT):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def configure(level: str | None = None, *, json_lines: bool | None = None) -> None:
    """Install one handler on the ``cohort`` root; idempotent.

    ``COHORT_LOG_LEVEL`` (default WARNING) and ``COHORT_LOG_JSON`` (default on) override.
    """
    root = logging.getLogger(ROOT)
    level_name = (level or os.environ.get("COHORT_LOG_LEVEL", "WARNING")).upper()
    root.setLevel(level_name)
    if json_lines is None:
        json_lines = os.environ.get("COHORT_LOG_JSON", "1") != "0"
    for handler in list(root.handlers):
        if getattr(handler, "_cohort", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._cohort = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False


def fields(**values: Any) -> dict[str, Any]:
    """Shorthand for ``extra={"fields": {...}}``."""
    return {"fields": values}


def monotonic_ms() -> float:
    return time.perf_counter() * 1000.0
