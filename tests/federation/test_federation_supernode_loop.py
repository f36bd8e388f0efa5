"""The warm node's SuperNode loop (cohort.federation.supernode_loop): its sleeps, the byte it
writes for each whole message, and the runner's wait for that byte. Flower's own loop module is
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
    _receiving,
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


def test_a_message_is_announced_once_it_is_whole_and_the_runner_wakes_for_it() -> None:
    """Flower's receive returns once the message, its task and all its objects are stored
    and confirmed: the byte follows it, never precedes it, and nothing received, nothing."""
    read, write = os.pipe()
    try:
        os.set_blocking(write, False)
        assert wait_for_task(read, timeout_s=0.01) is True  # nothing yet: ask anyway
        seen_during_receive: list[bytes] = []

        def receive(run_id: int | None) -> Any:
            def pull(**kwargs: Any) -> int | None:
                os.set_blocking(read, False)
                try:
                    seen_during_receive.append(os.read(read, 10))
                except BlockingIOError:
                    seen_during_receive.append(b"")
                assert kwargs == {"state": "the node's state"}  # passed on untouched
                return run_id

            return _receiving(pull, _NodeClock(idle_s=0.25), write)

        assert receive(None)(state="the node's state") is None  # nothing came in
        assert receive(5)(state="the node's state") == 5
        assert receive(6)(state="the node's state") == 6
        # while run 6 is received, the only byte there is run 5's: none for nothing, and
        # none for a message before its receive returned
        assert seen_during_receive == [b"", b"", b"t"]
        assert os.read(read, 10) == b"t"  # run 6's
        os.set_blocking(read, True)
        flood = receive(8)
        for _ in range(70_000):  # more than a pipe holds: never blocks, never raises
            flood(state="the node's state")
        assert wait_for_task(read, timeout_s=1.0) is True
    finally:
        os.close(write)
    while wait_for_task(read, timeout_s=1.0):  # the rest, then the node's end is closed
        pass
    os.close(read)


def test_receiving_a_message_starts_the_fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock = _NodeClock(idle_s=0.25)
    _receiving(lambda **_: None, clock, None)()
    clock.sleep(3)
    _receiving(lambda **_: 4, clock, None)()
    clock.sleep(3)
    assert slept == [0.25, ACTIVE_POLL_S]


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
