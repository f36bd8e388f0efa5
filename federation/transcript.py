"""What the coordinator actually received, written down for auditors and tests.

:class:`RecordingGrid` wraps Flower's ``Grid``: every reply the coordinator gets is described
(sender, message type, each record's kind, keys and byte sizes; never the values) in a JSON
Lines transcript; a vector carried inside a config record (:mod:`cohort.federation.wire`) is
listed with the arrays, under the names its ArrayRecord would have. The claim "the
coordinator never receives an individual update" can then be checked from the transcript of
a real run instead of being taken on trust.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from cohort.federation import wire


def describe(message: Message) -> dict[str, Any]:
    """Shape of one inbound message: record kinds, keys and sizes, no values."""
    entry: dict[str, Any] = {
        "src_node_id": message.metadata.src_node_id,
        "message_type": message.metadata.message_type,
        "group_id": message.metadata.group_id,
    }
    if message.has_error():
        entry["error"] = message.error.reason
        return entry
    content = message.content
    arrays = {}
    for name, array_record in content.array_records.items():
        arrays[name] = {key: int(array.numpy().size) for key, array in array_record.items()}
    inline = wire.describe_vector(content)  # a vector inside the config record: an array
    if inline is not None:
        record, array, values = inline
        arrays.setdefault(record, {})[array] = values
    configs = {}
    for name, config_record in content.config_records.items():
        configs[name] = {
            key: _size(value)
            for key, value in config_record.items()
            if inline is None or key not in wire.VECTOR_KEYS
        }
    metrics = {name: sorted(rec.keys()) for name, rec in content.metric_records.items()}
    entry.update({"arrays": arrays, "configs": configs, "metrics": metrics})
    return entry


def _size(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, list):
        return sum(_size(v) for v in value)
    return 8


#: Pause between pulls while replies are due (each pull is one request to the SuperLink).
POLL_S = 0.02
#: Longest pause between pulls: for a message type not seen yet, or replies long overdue.
POLL_MAX_S = 0.1
#: The first pull waits this share of the previous same-type exchange's first reply.
FIRST_PULL_SHARE = 0.7


@dataclass(frozen=True)
class _Timing:
    """How soon one message type's exchanges had their first reply (the soonest of any
    exchange but the type's first, which warms up) and when the latest had its last, in
    seconds after the messages were pushed: when each owner created its reply (its own
    clock; a timing aid only) or when a pull found it, whichever is sooner."""

    first: float
    last: float


class RecordingGrid:
    """A Grid proxy that appends a description of every received message to ``path``.

    It also collects replies promptly. Flower's deployed Grid sleeps 3 s between pulls, so a
    reply that arrives just after a pull waits up to 3 s. Here the pulls follow the earlier
    exchanges of the same message type (a study's rounds repeat): the first pull waits
    :data:`FIRST_PULL_SHARE` of the soonest first reply any of them had (a type's first
    exchange, which warms up, does not count; a slow round never delays the next), then one
    every :data:`POLL_S` until twice the latest exchange's last reply, then backing off to
    :data:`POLL_MAX_S`; without such a timing, pulls go from 50 ms doubling to
    :data:`POLL_MAX_S`. Each pull is one request to
    the SuperLink. The transcript is appended to, so a resumed coordinator keeps the earlier
    rounds' entries.
    """

    def __init__(self, grid: Grid, path: Path) -> None:
        self._grid = grid
        self._path = path
        self._lock = threading.Lock()
        self._timing: dict[str, _Timing] = {}
        self._seen: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = self._exchange(list(messages), timeout)
        with self._lock, self._path.open("a") as fh:
            for reply in replies:
                fh.write(json.dumps(describe(reply)) + "\n")
        return replies

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        kinds = {m.metadata.message_type for m in messages}
        kind = kinds.pop() if len(kinds) == 1 else None
        before = self._timing.get(kind) if kind is not None else None
        pending = set(self._grid.push_messages(messages))
        sent = time.monotonic()
        sent_wall = time.time()
        deadline = None if timeout is None else sent + timeout
        replies: list[Message] = []
        arrived: list[float] = []
        if before is not None:
            time.sleep(_bounded(before.first * FIRST_PULL_SHARE, deadline))
        delay = POLL_S if before is not None else 0.05
        while pending:
            got = list(self._grid.pull_messages(pending))
            if got:
                # when the owner created it (its clock), or when a pull found it, if sooner
                pulled = time.monotonic() - sent
                arrived.extend(min(pulled, _created(m) - sent_wall) for m in got)
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            now = time.monotonic()
            if not pending or (deadline is not None and now >= deadline):
                break
            time.sleep(_bounded(delay, deadline))
            if before is None or now - sent > 2 * before.last:
                delay = min(delay * 2, POLL_MAX_S)
        if kind is not None and arrived and not pending:
            first, last = max(0.0, min(arrived)), max(arrived)
            if kind not in self._seen:
                self._seen.add(kind)  # a type's first exchange warms up: it sets no timing
            elif before is None or first < before.first:
                self._timing[kind] = _Timing(first=first, last=last)
            else:
                self._timing[kind] = _Timing(first=before.first, last=last)
        return replies


def _created(message: Message) -> float:
    created = message.metadata.created_at
    return created if isinstance(created, float) and math.isfinite(created) else math.inf


def _bounded(seconds: float, deadline: float | None) -> float:
    if deadline is None:
        return max(0.0, seconds)
    return max(0.0, min(seconds, deadline - time.monotonic()))


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
