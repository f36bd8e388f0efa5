"""``[hospital] clientapp = "subprocess"``: each task in a new interpreter, under Cohort's checks.

:mod:`cohort.federation.task_process` is what ``cohort node start`` runs per task in place of
Flower's ``flwr-clientapp``. These tests run it for real in a fresh interpreter, with Flower's
``run_clientapp`` replaced by one that installs the run's FAB as Flower's does. A bundle that
carries code is refused before Flower's install runs; a code-free one is installed; the token
arrives on standard input and never on a command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fabkit import fab

from cohort.federation import client_app


def _run_task_process(tmp_path: Path, bundle: bytes, token: str = "t0ken") -> dict[str, object]:
    """``task_process.main`` in a fresh interpreter; what the stand-in run_clientapp saw."""
    code = f"""
        import json, sys
        from pathlib import Path
        import flwr.supernode.runtime.run_clientapp as flower_task

        seen = {{"installed": 0}}

        def flowers_install(fab, install_dir=None, skip_prompt=False):
            seen["installed"] += 1
            folder = Path({str(tmp_path)!r}) / "apps" / "app"
            folder.mkdir(parents=True, exist_ok=True)
            return folder

        def run_clientapp(**kwargs):
            seen["token"] = kwargs["token"]
            seen["address"] = kwargs["runtime_api_address"]
            seen["parent"] = kwargs["parent_pid"]
            try:
                flower_task.install_from_fab({bundle!r}, skip_prompt=True)
                seen["refused"] = None
            except Exception as exc:
                seen["refused"] = type(exc).__name__ + ": " + str(exc)
            print(json.dumps(seen))
            sys.exit(0)

        flower_task.install_from_fab = flowers_install
        flower_task.run_clientapp = run_clientapp
        from cohort.federation import task_process
        task_process.main(["127.0.0.1:9", "1", "4242"])
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=token,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_fab_that_carries_code_is_refused_before_flower_installs_it(tmp_path: Path) -> None:
    seen = _run_task_process(tmp_path, fab({"pyproject.toml": "", "cohort/__init__.py": "1"}))
    assert seen["installed"] == 0
    assert isinstance(seen["refused"], str)
    assert seen["refused"].startswith("VerificationError")
    assert "carries 'cohort/__init__.py'" in seen["refused"]
    assert seen["token"] == "t0ken"
    assert seen["address"] == "127.0.0.1:9"
    assert seen["parent"] == 4242


def test_a_code_free_fab_is_installed_once_per_node(tmp_path: Path) -> None:
    bundle = fab({"pyproject.toml": "[project]\nname = 'x'\n", ".info/CONTENT": "", "FAB.md": ""})
    assert _run_task_process(tmp_path, bundle)["installed"] == 1
    assert _run_task_process(tmp_path, bundle)["installed"] == 0  # the node's marker: once


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["127.0.0.1:9", "1"], "t", "usage: python -m cohort.federation.task_process"),
        (["127.0.0.1:9", "one", "2"], "t", "usage: python -m cohort.federation.task_process"),
        (["127.0.0.1:9", "1", "2"], "  \n", "no task token on standard input"),
    ],
)
def test_a_bad_invocation_is_one_line(argv: list[str], stdin: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cohort.federation.task_process", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line, no traceback
    assert message in done.stderr


def test_the_runner_hands_the_token_over_stdin_not_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``_spawn_task`` starts: the interpreter, the module, address, threads, the
    runner's pid; the token on the child's standard input (other users of the machine see
    every command line in the process table)."""
    import logging

    from cohort.logs import ROOT

    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n'
        f'echo "$COHORT_LOG_LEVEL" > {tmp_path}/level\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    monkeypatch.setenv("COHORT_LOG_LEVEL", "ERROR")  # the runner's level came from a flag
    monkeypatch.setattr(logging.getLogger(ROOT), "level", logging.INFO)
    pid = client_app._spawn_task("127.0.0.1:7", "secret-task-token", threads=2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["-m", "cohort.federation.task_process", "127.0.0.1:7", "2", str(os.getpid())]
    assert (tmp_path / "stdin").read_text() == "secret-task-token"
    assert (tmp_path / "level").read_text().strip() == "INFO"  # the task logs as the runner
