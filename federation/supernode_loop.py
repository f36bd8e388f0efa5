"""Flower 1.42's SuperNode loop in a warm ``cohort node start``: when it asks, whom it tells.

Run in the SuperNode child of ``cohort node start`` (``[hospital] clientapp = "warm"``), whose
parent runs the ClientApp tasks (:func:`~cohort.federation.client_app.serve_tasks`). Flower's
loop (flwr/supernode/start_client_internal.py) pulls one message from the SuperLink, creates
a task for it, pulls the message's objects and waits for the ClientApp's reply:

* Idle poll. With no message waiting it sleeps a fixed 3 s (:data:`FLOWER_IDLE_S`) before
  asking again, so every message waits 1.5 s on average before the node sees it. Here it
  sleeps the configured ``[superlink] poll-interval`` (0.25 s by default), and
  :data:`ACTIVE_POLL_S` (50 ms) for :data:`ACTIVE_S` after it received a message or sent a
  reply: a study's next message (the next round's training after a reply) follows within
  a second or two, and an idle node keeps asking only at the poll-interval.
* Local waits. It checks its own memory for the ClientApp's reply, and for each reply
  object, every 0.5 s; here every :data:`LOCAL_WAIT_S` (5 ms).
* Tasks. The runner used to ask the node for a task every 50 ms, from its first second to
  its last (three idle hospitals' nodes and runners used 22% of a core on a 2-core machine,
  5% without it); here the node writes one byte to a pipe once it holds a whole message,
  and the runner asks when the byte arrives (:func:`wait_for_task`). Flower creates the
  task before it pulls the message's objects from the SuperLink; a byte written then had
  the ClientApp fork start while the objects were still on their way, and the fork asked
  its node for them every 10 to 100 ms, some fifteen requests per message on the
  hospital's own cores. The byte follows the objects and the node's receipt confirmation.

Nothing else changes: the same requests to the SuperLink, with the same TLS and node
authentication, the same objects, and the same checks.

At INFO the node logs ``message pulled`` (when the poll that found a message started, and
how long pulling it and its objects took) and ``reply pushed`` (once the reply and its
objects are at the SuperLink); with the ClientApp's ``message handled`` line they time each
hop of a message exchange (``bench/deploy.py``).
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable
from typing import Any

from cohort.logs import fields, get_logger

log = get_logger(__name__)

#: Flower 1.42's SuperNode's fixed idle sleep between requests to the SuperLink (seconds).
FLOWER_IDLE_S = 3.0
#: How often the SuperNode checks its own memory for a ClientApp's reply (Flower: 0.5 s);
#: a look at a dict in this process, no request.
LOCAL_WAIT_S = 0.005
#: The node's poll while a study is under way: after a message or a reply (seconds). Each
#: poll is a SuperLink request (TLS, node authentication, a state lookup), from every node;
#: a round's next message follows a reply within about half a second (bench/deploy.py), so
#: the node asks some ten times in that wait, and the message waits 25 ms on average.
ACTIVE_POLL_S = 0.05
#: How long after its last message or reply the node polls every :data:`ACTIVE_POLL_S`.
ACTIVE_S = 3.0
#: The runner asks its node for a task at least this often, byte or not (seconds).
TASK_FALLBACK_S = 0.5


class _NodeClock:
    """The loop's ``time`` module: Flower's sleeps shortened as the module doc says."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self._active_until = 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    def active(self) -> None:
        self._active_until = time.monotonic() + ACTIVE_S

    def sleep(self, seconds: float) -> None:
        if seconds < FLOWER_IDLE_S:  # waiting on this node's own memory for a reply
            time.sleep(min(seconds, LOCAL_WAIT_S))
        elif time.monotonic() < self._active_until:
            time.sleep(min(self.idle_s, ACTIVE_POLL_S))
        else:
            time.sleep(self.idle_s)


def _announce(wake_fd: int) -> None:
    """One byte on ``wake_fd``: a whole message is in, its task waits for the runner."""
    # A full pipe already holds a byte the runner has not read: nothing is lost.
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(wake_fd, b"t")


def _receiving(
    pull: Callable[..., Any], clock: _NodeClock, wake_fd: int | None
) -> Callable[..., Any]:
    """Flower's ``_pull_and_store_message``, then the byte and the fast polls.

    Flower's function returns the run id once the message, its task and all its objects are
    stored and their receipt confirmed (or an error reply stored in place of a task); None
    when nothing came in or the objects could not be pulled.
    """

    def pull_and_store(**kwargs: Any) -> Any:
        started = time.time()
        run_id = pull(**kwargs)
        if run_id is not None:
            clock.active()
            log.info(
                "message pulled",
                extra=fields(started=round(started, 3), seconds=round(time.time() - started, 3)),
            )
            if wake_fd is not None:
                _announce(wake_fd)
        return run_id

    return pull_and_store


def tune_supernode_loop(*, idle_s: float, wake_fd: int | None) -> None:
    """Shorten the loop's sleeps and, with ``wake_fd``, announce each whole message there.

    Swaps ``flwr.supernode.start_client_internal``'s ``time`` for a clock with the sleeps of
    the module doc, and wraps its ``_pull_and_store_message`` (which receives a message and
    creates its task) and ``_push_messages`` (which sends the reply). RuntimeError if the
    installed Flower's loop no longer has them.
    """
    from flwr.supernode import start_client_internal as loop

    pull: Callable[..., Any] | None = getattr(loop, "_pull_and_store_message", None)
    push: Callable[..., Any] | None = getattr(loop, "_push_messages", None)
    if getattr(loop, "time", None) is not time or pull is None or push is None:
        raise RuntimeError(
            "this flwr's SuperNode loop lacks time, _pull_and_store_message or _push_messages "
            "(Flower 1.42 expected)"
        )
    clock = _NodeClock(idle_s)
    if wake_fd is not None:
        os.set_blocking(wake_fd, False)

    def push_replies(**kwargs: Any) -> None:
        try:
            push(**kwargs)  # waits for the ClientApp's reply, then pushes it
            log.info("reply pushed")
        finally:
            clock.active()

    setattr(loop, "time", clock)  # noqa: B010 (module globals)
    setattr(loop, "_pull_and_store_message", _receiving(pull, clock, wake_fd))  # noqa: B010
    setattr(loop, "_push_messages", push_replies)  # noqa: B010


def wait_for_task(wake_fd: int, timeout_s: float = TASK_FALLBACK_S) -> bool:
    """Run by the warm runner: wait up to ``timeout_s`` for the node's byte, read them all.

    False once the node closed its end of the pipe (it stopped): then poll instead.
    """
    readable, _, _ = select.select([wake_fd], [], [], timeout_s)
    if not readable:
        return True
    try:
        return os.read(wake_fd, 4096) != b""
    except BlockingIOError:
        return True


__all__ = [
    "ACTIVE_POLL_S",
    "ACTIVE_S",
    "FLOWER_IDLE_S",
    "LOCAL_WAIT_S",
    "TASK_FALLBACK_S",
    "tune_supernode_loop",
    "wait_for_task",
]
