"""``cohort deploy local`` stops every process it started: at the end, on failure, on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from cohort.errors import ConfigError, ProtocolAbort
from cohort.federation import deploy_local as dl


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): it has exited, only its parent has not reaped it
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_stop_all_stops_each_process_and_its_children(tmp_path: Path) -> None:
    procs = dl.Processes(logs=tmp_path / "logs", record=tmp_path / "p.json", env=dict(os.environ))
    parent = procs.start("tree", ["sh", "-c", "sleep 300 & wait"])
    dl.wait_for(
        "the child",
        lambda: (
            subprocess.run(["pgrep", "-s", str(parent.pid), "sleep"], check=False).returncode == 0
        ),
    )
    other = procs.start("plain", ["sleep", "300"])
    record = json.loads((tmp_path / "p.json").read_text())
    assert set(record) == {"tree", "plain"}
    assert record["plain"]["pid"] == other.pid
    procs.stop_all()
    assert parent.poll() is not None
    assert other.poll() is not None
    # the whole session went: no sleep left from the tree
    survivors = subprocess.run(
        ["pgrep", "-s", str(parent.pid)], capture_output=True, text=True, check=False
    )
    assert [int(pid) for pid in survivors.stdout.split() if _alive(int(pid))] == []


def test_a_failed_start_stops_what_was_already_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        dl.anvil_binary()
    except ConfigError as exc:
        pytest.skip(str(exc))

    def fail(*args: object, **kwargs: object) -> None:
        raise ProtocolAbort("keys-sponsor failed: injected")

    monkeypatch.setattr(dl, "run_commands", fail)
    out = tmp_path / "deploy"
    with pytest.raises(ProtocolAbort, match="injected"):
        dl.deploy_local(dl.LocalPlan(rounds=1), out)
    record = json.loads((out / "processes.json").read_text())
    assert "chain" in record  # anvil had started before the failure ...
    assert not _alive(record["chain"]["pid"])  # ... and was stopped


def test_sigterm_becomes_an_interrupt_that_runs_the_cleanup() -> None:
    before = signal.getsignal(signal.SIGTERM)

    def terminated() -> None:
        with dl._interruptible():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
            pytest.fail("SIGTERM did not interrupt")

    with pytest.raises(KeyboardInterrupt):
        terminated()
    assert signal.getsignal(signal.SIGTERM) == before  # the previous handler is back


def test_an_out_folder_of_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a Cohort deployment"):
        dl.prepare_out(tmp_path)
    again = tmp_path / "deploy"
    dl.prepare_out(again)
    (again / "left-over").write_text("x")
    dl.prepare_out(again)  # an earlier deployment's folder is cleared
    assert not (again / "left-over").exists()
