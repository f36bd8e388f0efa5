"""The warm node's SuperNode loop (cohort.federation.supernode_loop): its sleeps, the byte it
writes for each task, and the runner's wait for that byte. Flower's own loop module is
changed only in a fresh interpreter, so that nothing leaks into the other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from cohort.federation.supernode_loop import (
    ACTIVE_POLL_S,
    LOCAL_WAIT_S,
    _NodeClock,
    _TellingState,
    wait_for_task,
)


def test_the_node_polls_fast_only_while_a_study_is_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = _NodeClock(idle_s=0.25)
    clock.sleep(3)  # Flower's idle poll, nothing received yet
    clock.sleep(0.5)  # Flower's wait on its own memory for a reply
    clock.active()  # a message came in, or a reply went out
    clock.sleep(3)
    monkeypatch.setattr(time, "monotonic", lambda: 1e12)  # long after
    clock.sleep(3)
    assert slept == [0.25, LOCAL_WAIT_S, ACTIVE_POLL_S, 0.25]
    assert clock.perf_counter is time.perf_counter  # everything else: time's


class _State:
    def __init__(self, task_id: int | None) -> None:
        self.task_id = task_id
        self.node_id = 7

    def create_task(self, **kwargs: Any) -> int | None:
        return self.task_id


def test_each_created_task_is_announced_and_the_runner_wakes_for_it() -> None:
    read, write = os.pipe()
    try:
        os.set_blocking(write, False)
        assert wait_for_task(read, timeout_s=0.01) is True  # nothing yet: ask anyway
        assert _TellingState(_State(None), write).create_task(run_id=1) is None
        assert _TellingState(_State(5), write).node_id == 7  # the rest is the node's state
        assert _TellingState(_State(5), write).create_task(run_id=1) == 5
        assert _TellingState(_State(6), write).create_task(run_id=1) == 6
        assert os.read(read, 10) == b"tt"  # one byte per task, none for a failed one
        for _ in range(70_000):  # more than a pipe holds: never blocks, never raises
            _TellingState(_State(8), write).create_task(run_id=1)
        assert wait_for_task(read, timeout_s=1.0) is True
    finally:
        os.close(write)
    while wait_for_task(read, timeout_s=1.0):  # the rest, then the node's end is closed
        pass
    os.close(read)


def test_tuning_replaces_flowers_sleep_and_wraps_its_receive_and_send() -> None:
    code = """
        import json, os
        from flwr.supernode import start_client_internal as loop
        before = (loop.time, loop._pull_and_store_message, loop._push_messages)
        from cohort.federation.supernode_loop import tune_supernode_loop
        read, write = os.pipe()
        tune_supernode_loop(idle_s=0.25, wake_fd=write)
        print(json.dumps({
            "replaced": [a is not b for a, b in zip(before, (
                loop.time, loop._pull_and_store_message, loop._push_messages
            ))],
            "idle": loop.time.idle_s,
            "nonblocking": not os.get_blocking(write),
        }))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"replaced": [True, True, True], "idle": 0.25, "nonblocking": True}
