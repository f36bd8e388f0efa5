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
import threading
import time
from collections.abc import Iterable
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


POLL_FIRST_S = 0.05
POLL_MAX_S = 0.1


class RecordingGrid:
    """A Grid proxy that appends a description of every received message to ``path``.

    It also collects replies promptly: Flower's deployed Grid sleeps 3 s between pulls, so
    a reply that arrives just after a pull waits up to 3 s; here the pulls back off from
    50 ms to 0.1 s (each pull is one request to the SuperLink). The transcript is appended
    to, so a resumed coordinator keeps the earlier rounds' entries.
    """

    def __init__(self, grid: Grid, path: Path) -> None:
        self._grid = grid
        self._path = path
        self._lock = threading.Lock()
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
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        delay = POLL_FIRST_S
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)
        return replies


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
