"""``cohort deploy local`` stops every process it started: at the end, on failure, on SIGTERM."""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize("to_group", [True, False], ids=["group", "runner-only"])
def test_a_warm_node_stops_its_supernode_gracefully(tmp_path: Path, to_group: bool) -> None:
    """``cohort node start`` (clientapp warm): SuperNode child + runner; SIGTERM stops both.

    To the whole group (``cohort deploy local``, Ctrl-C) or to the runner alone (``docker
    stop``): the SuperNode gets one SIGTERM and exits through Flower's graceful path (which
    deactivates it at the SuperLink, so a restarted node is accepted).
    """
    import sys

    port = dl.free_ports(2)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n", encoding="utf-8")
    config = tmp_path / "hospital.toml"
    config.write_text(
        "[hospital]\n"
        'party-id = "h1"\nworkdir = "work"\ndata = "data.csv"\n'
        "[policy]\nepsilon-cap = 3.0\n[superlink]\n"
        f'address = "127.0.0.1:{port[0]}"\ninsecure = true\nnode-port = {port[1]}\n',
        encoding="utf-8",
    )
    cohort = str(Path(sys.executable).parent / "cohort")
    log = tmp_path / "node.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            [cohort, "node", "start", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: list[str] = []
    try:
        # the SuperNode's Runtime API is up although no SuperLink answers
        dl.wait_for("supernode", lambda: dl.port_open(port[1]), proc=node)
        children = Path(f"/proc/{node.pid}/task/{node.pid}/children").read_text().split()
        assert len(children) == 1
        if to_group:
            os.killpg(node.pid, signal.SIGTERM)
        else:
            node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=30) == 0
        assert not _alive(int(children[0]))
        assert not dl.port_open(port[1])
        assert "SuperNode terminated gracefully" in log.read_text(errors="replace")
    finally:
        for pid in [node.pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def test_the_superlink_keeps_its_state_in_memory_or_in_a_file(tmp_path: Path) -> None:
    """``--superlink-state``: Flower's in-memory state by default, SQLite on request (the
    MPC deployment test runs a whole study on it); anything else is refused by name."""
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

    assert dl.LocalPlan().superlink_state == "memory"
    assert dl.superlink_database("memory", tmp_path) == FLWR_IN_MEMORY_DB_NAME
    assert dl.superlink_database("file", tmp_path) == str(tmp_path / "state.db")
    with pytest.raises(ConfigError, match=r"--superlink-state must be one of memory, file"):
        dl.LocalPlan(superlink_state="disk")
