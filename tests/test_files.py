"""Atomic writes: the mode is set before data lands, and a failed write leaves the old file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cohort.files import PRIVATE, write_atomic


def test_private_file_is_never_group_or_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.json"
    write_atomic(path, b"{}", mode=PRIVATE)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes() == b"{}"


def test_a_failed_write_keeps_the_previous_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ledger.json"
    write_atomic(path, b"old")

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]  # no temp file left
