"""Work a ClientApp handler leaves for after its reply (cohort.federation.client_app):
a warm task fork runs it, niced, once Flower's run_clientapp has returned; nowhere else."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cohort.federation import client_app


def test_outside_a_warm_fork_the_work_is_dropped() -> None:
    ran: list[int] = []
    client_app.after_reply(lambda: ran.append(1))
    client_app._run_after_reply()
    assert ran == []
    assert client_app._after_reply == []


def test_the_work_runs_in_order_niced_and_a_failure_names_its_type_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    niced: list[int] = []
    ran: list[str] = []
    monkeypatch.setattr(client_app, "_in_warm_fork", True)
    monkeypatch.setattr(os, "nice", niced.append)

    def fails() -> None:
        raise ValueError("secret-looking detail")

    client_app.after_reply(lambda: ran.append("first"))
    client_app.after_reply(fails)
    client_app.after_reply(lambda: ran.append("last"))
    with caplog.at_level(logging.WARNING, logger="cohort"):
        client_app._run_after_reply()
    assert ran == ["first", "last"]
    assert niced == [client_app.AFTER_REPLY_NICE]
    assert client_app._after_reply == []
    (failed,) = [r for r in caplog.records if r.getMessage() == "after-reply work failed"]
    assert failed.__dict__["fields"] == {"error": "ValueError"}
    assert "secret-looking" not in caplog.text + json.dumps(failed.__dict__, default=str)


@pytest.mark.parametrize("exit_code", [0, 1])
def test_a_task_fork_runs_the_work_after_run_clientapp_returns_and_only_on_success(
    tmp_path: Path, exit_code: int
) -> None:
    """The real fork of the warm runner, with Flower's run_clientapp replaced by one that
    leaves work and exits as flwr_exit does."""
    marker = tmp_path / "ran.json"
    code = f"""
        import json, os, sys
        from pathlib import Path
        import flwr.supernode.runtime.run_clientapp as flower_task
        from cohort.federation import client_app

        order = []

        def run_clientapp(**kwargs):
            client_app.after_reply(lambda: Path({str(marker)!r}).write_text(
                json.dumps({{"order": order + ["work"], "nice": os.nice(0)}})))
            order.append("reply pushed")
            sys.exit({exit_code})

        flower_task.run_clientapp = run_clientapp
        pid = client_app._fork_task("127.0.0.1:1", "token")
        _, status = os.waitpid(pid, 0)
        print(json.dumps({{"exit": os.waitstatus_to_exitcode(status)}}))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"exit": exit_code}
    if exit_code:
        assert not marker.exists()
    else:
        ran = json.loads(marker.read_text())
        assert ran["order"] == ["reply pushed", "work"]
        assert ran["nice"] >= client_app.AFTER_REPLY_NICE
