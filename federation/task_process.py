"""One ClientApp task in a fresh interpreter: ``[hospital] clientapp = "subprocess"``.

``cohort node start`` runs ``python -m cohort.federation.task_process ADDRESS THREADS PARENT``
once per task its SuperNode creates (:func:`~cohort.federation.client_app.serve_tasks` with
``fresh_interpreter``), in place of Flower's SuperExec and its ``flwr-clientapp``. The
task's token arrives on standard input, so it is not shown in the process table to other
users of the machine. Nothing is inherited from the runner but the environment: each task
imports torch, Opacus and TenSEAL itself, which takes seconds.

Before Flower's own ``run_clientapp`` runs, the process installs what the warm runner's forks
inherit:

* the check that refuses a run's app bundle (FAB) carrying anything but Flower's
  ``pyproject.toml``, ``.info/`` and Markdown notes, before it is installed;
* each FAB extracted once per node;
* the tuned object transfers.

Flower's ``flwr-clientapp`` would install a FAB unchecked and put its folder first on the
import path, which would let a coordinator run its own code on the hospital's node.
"""

from __future__ import annotations

import sys


def run_fresh_task(runtime_api_address: str, token: str, *, threads: int, parent_pid: int) -> None:
    """The checks and tuning a warm fork inherits, then the task ``token`` names
    (:func:`~cohort.federation.client_app.run_task`); ends with ``SystemExit`` as Flower does."""
    from cohort.federation.client_app import _install_each_fab_once, run_task
    from cohort.federation.flower_waits import tune_object_transfers

    tune_object_transfers()
    _install_each_fab_once()
    run_task(runtime_api_address, token, parent_pid=parent_pid, threads=threads)


def main(argv: list[str] | None = None) -> None:
    """``ADDRESS THREADS PARENT``, the token on standard input."""
    from cohort.logs import configure

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[1].isdigit() or not args[2].isdigit():
        raise SystemExit("usage: python -m cohort.federation.task_process ADDRESS THREADS PARENT")
    token = sys.stdin.read().strip()
    if not token:
        raise SystemExit("task_process: no task token on standard input")
    configure()  # at the runner's level (COHORT_LOG_LEVEL)
    run_fresh_task(args[0], token, threads=int(args[1]), parent_pid=int(args[2]))


if __name__ == "__main__":
    main()
