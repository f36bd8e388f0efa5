"""What Cohort changes in Flower inside its own deployed processes: object-transfer retries
and concurrency (cohort.federation.flower_waits) and the warm runner's once-per-FAB install
(cohort.federation.client_app). Each runs in a fresh interpreter: the changes are to Flower's
module state, which must not leak into the other tests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fabkit import fab

from cohort.federation.flower_waits import OBJECTS_IN_FLIGHT, PULL_FIRST_S, PULL_MAX_S


def _run(code: str, *, env: dict[str, str] | None = None) -> object:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_object_pulls_poll_within_a_tenth_of_a_second_under_flowers_deadline() -> None:
    got = _run(
        """
        import json
        from flwr.supercore.constant import PULL_MAX_TIME
        from flwr.supercore.inflatable import inflatable_utils as u
        from cohort.federation.flower_waits import tune_object_transfers
        before = dict(u.pull_objects.__kwdefaults__)
        tune_object_transfers()
        tune_object_transfers()  # idempotent
        print(json.dumps({
            "before": before,
            "max_time": PULL_MAX_TIME,
            "pull": u.pull_objects.__kwdefaults__,
            "inflate": {
                k: v for k, v in u.pull_and_inflate_object_from_tree.__kwdefaults__.items()
                if k != "return_type"
            },
            "push": u.push_objects.__kwdefaults__["max_concurrent_pushes"],
            "push_iter": u.push_object_contents_from_iterable.__kwdefaults__[
                "max_concurrent_pushes"
            ],
            "workers": u.get_num_workers(OBJECTS),
        }))
        """.replace("OBJECTS", str(OBJECTS_IN_FLIGHT))
    )
    assert isinstance(got, dict)
    assert got["before"]["initial_backoff"] == 1  # Flower 1.42's: a second, then doubling
    wanted = {
        "initial_backoff": PULL_FIRST_S,
        "backoff_cap": PULL_MAX_S,
        "max_tries_per_object": None,
        "max_time": got["max_time"],  # Flower's own deadline is kept
        "max_concurrent_pulls": OBJECTS_IN_FLIGHT,
    }
    assert got["pull"] == got["inflate"] == wanted
    assert got["push"] == got["push_iter"] == got["workers"] == OBJECTS_IN_FLIGHT


def test_the_warm_runner_extracts_and_verifies_each_fab_once(tmp_path: Path) -> None:
    got = _run(
        """
        import json
        from pathlib import Path
        from flwr.supernode.runtime import run_clientapp as task
        calls = []

        def flowers_install(fab, install_dir=None, skip_prompt=False):
            calls.append(fab)
            folder = Path(HOME) / "apps" / f"app-{len(calls)}"
            folder.mkdir(parents=True)
            return folder

        task.install_from_fab = flowers_install
        from cohort.federation.client_app import _install_each_fab_once
        _install_each_fab_once()
        first = task.install_from_fab(ONE, skip_prompt=True)
        again = task.install_from_fab(ONE, skip_prompt=True)
        other = task.install_from_fab(TWO, skip_prompt=True)
        print(json.dumps({
            "calls": len(calls), "same": first == again, "other": other != first,
        }))
        """.replace("HOME", repr(str(tmp_path)))
        .replace("ONE", repr(fab({"pyproject.toml": "[project]\nname = 'one'\n"})))
        .replace("TWO", repr(fab({"pyproject.toml": "[project]\nname = 'two'\n"}))),
        env={**_env(), "FLWR_HOME": str(tmp_path)},
    )
    # Flower's install (extract, verify every file's hash) ran once per distinct FAB bytes
    assert got == {"calls": 2, "same": True, "other": True}


def test_a_fab_that_carries_code_is_refused_before_it_is_installed() -> None:
    """Cohort's FAB holds Flower's pyproject.toml, its .info/ and a note (federation/FAB.md);
    a bundle with modules in it (a ``cohort/`` package that a fresh ClientApp process would
    import ahead of the installed one, or any other file) is refused, naming the file."""
    from flwr.cli.build import build_fab_from_disk

    from cohort.errors import VerificationError
    from cohort.federation.client_app import check_fab_carries_no_code

    check_fab_carries_no_code(build_fab_from_disk(Path(__file__).resolve().parents[2]))
    check_fab_carries_no_code(fab({"pyproject.toml": "", ".info/CONTENT": "", "a/b.md": ""}))
    for name in ("cohort/__init__.py", "federation/client_app.py", "lib.so", "run.sh"):
        with pytest.raises(VerificationError, match=f"carries '{name}'.*not code sent"):
            check_fab_carries_no_code(fab({"pyproject.toml": "", name: "print('hi')"}))
    with pytest.raises(VerificationError, match="not a zip archive"):
        check_fab_carries_no_code(b"fab one")


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
