"""A member's store keeps payloads in files beside its SQLite database: written before the
row that names them, dropped with their round, swept when orphaned, migrated from schema 2."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest

from cohort.aggregator.store import (
    DIRECT_MIN,
    DROPPED_DIR,
    PAYLOADS_DIR,
    STATE_FILE,
    Kept,
    MemberStore,
    RelayFields,
)
from cohort.errors import ConfigError

STUDY = "ab" * 32


def _files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / PAYLOADS_DIR).rglob("*") if p.is_file())


def test_payloads_live_in_private_files_and_go_with_their_round(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / STATE_FILE)
    try:
        store.open_round(STUDY, 1, None)
        relay = RelayFields(b"n" * 24, b"s" * 64)
        kept = store.add_upload(STUDY, 1, "hospital-a", b"A" * 1000, b"\x01" * 32, relay=relay)
        assert kept is Kept.KEPT
        assert store.add_upload(STUDY, 1, "hospital-b", b"B" * 10, b"\x02" * 32) is Kept.KEPT
        # A second payload from a sender is refused and leaves no file behind.
        again = store.add_upload(STUDY, 1, "hospital-a", b"X" * 7, b"\x03" * 32)
        assert again is Kept.DUPLICATE_SENDER
        files = list((tmp_path / PAYLOADS_DIR).rglob("*.bin"))
        assert len(files) == 2
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
        assert not list((tmp_path / PAYLOADS_DIR).rglob("*.tmp"))
        copy = store.relayable(STUDY, 1, "hospital-a")
        assert copy is not None
        assert copy.payload == b"A" * 1000
        assert store.relayable(STUDY, 1, "hospital-b") is None  # not relayable: no owner fields
        assert store.payloads(STUDY, 1, ["hospital-b", "hospital-a"]) == [b"B" * 10, b"A" * 1000]
        store.open_round(STUDY, 2, None)  # round 1 is abandoned: its files go
        assert _files(tmp_path) == []
        assert store.add_upload(STUDY, 2, "hospital-a", b"C" * 5, b"\x04" * 32) is Kept.KEPT
        store.finish_round(STUDY, 2, client_set=b"c", record="{}", aggregate=b"agg")
        assert _files(tmp_path) == ["aggregate-0000000002.bin"]  # the uploads are dropped
    finally:
        store.close()


def test_an_upload_is_kept_only_in_its_open_round_and_burns_its_nonce(tmp_path: Path) -> None:
    """The checks that must be atomic with keeping an upload: open round, nonce, sender."""
    store = MemberStore(tmp_path / STATE_FILE)
    try:
        assert store.add_upload(STUDY, 1, "a", b"A", b"\x01" * 32) is Kept.ROUND_CLOSED
        store.open_round(STUDY, 1, None)
        assert store.add_upload(STUDY, 2, "a", b"A", b"\x01" * 32) is Kept.ROUND_CLOSED
        assert store.add_upload(STUDY, 1, "a", b"A", b"\x01" * 32, nonce=b"n1") is Kept.KEPT
        assert store.nonce_seen(STUDY, b"n1")
        # the same nonce again, from another sender: refused, and nothing is kept for "b"
        assert store.add_upload(STUDY, 1, "b", b"B", b"\x02" * 32, nonce=b"n1") is (
            Kept.REPLAYED_NONCE
        )
        assert store.senders(STUDY, 1) == ("a",)
        # a second upload of "a" under a fresh nonce: refused, but its nonce stays burned
        duplicate = store.add_upload(STUDY, 1, "a", b"C", b"\x03" * 32, nonce=b"n2")
        assert duplicate is Kept.DUPLICATE_SENDER
        assert store.nonce_seen(STUDY, b"n2")
        store.open_round(STUDY, 2, None)  # round 1 abandoned: an upload for it is refused
        assert store.add_upload(STUDY, 1, "c", b"C", b"\x04" * 32, nonce=b"n3") is (
            Kept.ROUND_CLOSED
        )
        assert not store.nonce_seen(STUDY, b"n3")
        assert _files(tmp_path) == []
    finally:
        store.close()


def test_a_rounds_files_are_unlinked_off_the_callers_path(tmp_path: Path) -> None:
    """Finishing a round moves its files aside at once; they are unlinked in the background,
    and whatever is still there at close, or at the next open after a crash, goes too."""
    store = MemberStore(tmp_path / STATE_FILE)
    store.open_round(STUDY, 1, None)
    for sender in ("a", "b", "c"):
        store.add_upload(STUDY, 1, sender, sender.encode() * 1000, sender.encode() * 32)
    store.finish_round(STUDY, 1, client_set=b"c", record="{}", aggregate=b"agg")
    assert _files(tmp_path) == ["aggregate-0000000001.bin"]  # at once, before any unlink
    store.close()
    assert list((tmp_path / DROPPED_DIR).iterdir()) == []
    (tmp_path / DROPPED_DIR / "left-by-a-crash.bin").write_bytes(b"x")
    MemberStore(tmp_path / STATE_FILE).close()
    assert list((tmp_path / DROPPED_DIR).iterdir()) == []


def test_orphaned_and_half_written_files_are_swept_at_open(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / STATE_FILE)
    store.open_round(STUDY, 1, None)
    store.add_upload(STUDY, 1, "hospital-a", b"A" * 100, b"\x01" * 32)
    store.close()
    kept = _files(tmp_path)
    folder = next((tmp_path / PAYLOADS_DIR).iterdir())
    (folder / "0000000001-orphan.bin").write_bytes(b"x")  # renamed, row never committed
    (folder / "0000000001-half.bin.1234.tmp").write_bytes(b"x")  # crashed mid-write
    (tmp_path / PAYLOADS_DIR / "other-study").mkdir()
    (tmp_path / PAYLOADS_DIR / "other-study" / "0000000001-x.bin").write_bytes(b"x")
    again = MemberStore(tmp_path / STATE_FILE)
    try:
        assert _files(tmp_path) == kept
        assert again.payloads(STUDY, 1, ["hospital-a"]) == [b"A" * 100]
    finally:
        again.close()


def test_a_damaged_payload_file_is_named(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / STATE_FILE)
    try:
        store.open_round(STUDY, 1, None)
        store.add_upload(STUDY, 1, "hospital-a", b"A" * 100, b"\x01" * 32)
        (path,) = (tmp_path / PAYLOADS_DIR).rglob("*.bin")
        path.write_bytes(b"A" * 99)
        with pytest.raises(ConfigError, match="holds 99 bytes, the store 100"):
            store.payloads(STUDY, 1, ["hospital-a"])
        path.unlink()
        with pytest.raises(ConfigError, match="unreadable"):
            store.payloads(STUDY, 1, ["hospital-a"])
    finally:
        store.close()


def test_schema_2_state_is_migrated_with_its_payloads(tmp_path: Path) -> None:
    """A member upgraded mid-round keeps the uploads it had accepted."""
    path = tmp_path / STATE_FILE
    store = MemberStore(path)
    store.open_round(STUDY, 1, None)
    store.add_upload(STUDY, 1, "hospital-a", b"A" * 100, b"\x01" * 32)
    store.close()
    for f in (tmp_path / PAYLOADS_DIR).rglob("*.bin"):
        f.unlink()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(
        "DROP TABLE rounds;"
        "CREATE TABLE rounds (study_id TEXT NOT NULL, round INTEGER NOT NULL, "
        "state TEXT NOT NULL, deadline REAL, opened_at REAL NOT NULL, client_set BLOB, "
        "result TEXT, aggregate BLOB, PRIMARY KEY (study_id, round));"
        "INSERT INTO rounds VALUES ('"
        + STUDY
        + "', 0, 'aggregated', NULL, 0, x'01', '{}', x'beef');"
        "INSERT INTO rounds VALUES ('" + STUDY + "', 1, 'open', NULL, 0, NULL, NULL, NULL);"
        "DROP TABLE uploads;"
        "CREATE TABLE uploads (study_id TEXT NOT NULL, round INTEGER NOT NULL, "
        "sender TEXT NOT NULL, payload BLOB NOT NULL, payload_hash BLOB NOT NULL, "
        "nonce BLOB, signature BLOB, PRIMARY KEY (study_id, round, sender));"
        "UPDATE meta SET value = '2' WHERE key = 'schema';"
    )
    db.execute(
        "INSERT INTO uploads VALUES (?, 1, 'hospital-a', ?, ?, ?, ?)",
        (STUDY, b"A" * 100, b"\x01" * 32, b"n" * 24, b"s" * 64),
    )
    db.close()
    migrated = MemberStore(path)
    try:
        copy = migrated.relayable(STUDY, 1, "hospital-a")
        assert copy is not None
        assert copy.payload == b"A" * 100
        assert copy.fields == RelayFields(b"n" * 24, b"s" * 64)
        assert len(_files(tmp_path)) == 1
        old = migrated.result(STUDY, 0)  # schema 2's aggregate, still in its row
        assert old is not None
        assert old.aggregate == b"\xbe\xef"
        migrated.finish_round(STUDY, 1, client_set=b"c", record="{}", aggregate=b"new")
        new = migrated.result(STUDY, 1)
        assert new is not None
        assert new.aggregate == b"new"
    finally:
        migrated.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("3",)
    db.close()


def test_an_aggregate_is_kept_in_a_file_across_restarts(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / STATE_FILE)
    store.open_round(STUDY, 1, None)
    store.add_upload(STUDY, 1, "hospital-a", b"A" * 100, b"\x01" * 32)
    store.finish_round(STUDY, 1, client_set=b"c", record='{"r": 1}', aggregate=b"S" * 5000)
    assert _files(tmp_path) == ["aggregate-0000000001.bin"]  # the upload is gone
    with pytest.raises(RuntimeError, match="not open"):  # and the aggregate stays as it was
        store.finish_round(STUDY, 1, client_set=b"d", record="{}", aggregate=b"T")
    store.close()
    again = MemberStore(tmp_path / STATE_FILE)
    try:
        result = again.result(STUDY, 1)
        assert result is not None
        assert (result.record, result.aggregate) == ('{"r": 1}', b"S" * 5000)
        assert _files(tmp_path) == ["aggregate-0000000001.bin"]  # not swept: a row names it
    finally:
        again.close()


@pytest.mark.parametrize("where", ["work directory", "tmpfs"])
def test_a_large_payload_file_holds_exactly_its_bytes(tmp_path: Path, where: str) -> None:
    """A payload past DIRECT_MIN is written with O_DIRECT where the file system allows it
    (rounded up to whole pages, then truncated) and through the page cache where it does
    not (tmpfs refuses O_DIRECT): either way its file holds exactly the payload, mode 0600."""
    home = tmp_path
    if where == "tmpfs":
        shm = Path("/dev/shm")
        if not shm.is_dir() or not os.access(shm, os.W_OK):
            pytest.skip("no writable /dev/shm")
        home = Path(tempfile.mkdtemp(dir=shm))
    store = MemberStore(home / STATE_FILE)
    try:
        store.open_round(STUDY, 1, None)
        sizes = (DIRECT_MIN, DIRECT_MIN + 1, DIRECT_MIN + 4095, 3 * DIRECT_MIN + 17)
        payloads = {f"h{i}": os.urandom(size) for i, size in enumerate(sizes)}
        for sender, data in payloads.items():
            assert store.add_upload(STUDY, 1, sender, data, sender.encode() * 16) is Kept.KEPT
        assert store.payloads(STUDY, 1, list(payloads)) == list(payloads.values())
        files = list((home / PAYLOADS_DIR).rglob("*.bin"))
        assert sorted(f.stat().st_size for f in files) == sorted(sizes)
        assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    finally:
        store.close()
        if where == "tmpfs":
            shutil.rmtree(home)
