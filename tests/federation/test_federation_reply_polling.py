"""How the coordinator's Grid proxy pulls replies (:class:`RecordingGrid`), on a fake clock.

A study's rounds repeat, so each exchange's pulls follow the earlier exchanges of the same
message type: no pull before most of the soonest first reply, then one every ``POLL_S``
while replies are due, backing off to ``POLL_MAX_S`` once they are long overdue. The fake
Grid answers each pull with the replies due by the fake clock; the test reads the schedule
of pulls, not wall-clock time.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cohort.federation import transcript
from cohort.federation.transcript import FIRST_PULL_SHARE, POLL_MAX_S, POLL_S, RecordingGrid


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Meta:
    message_type: str
    reply_to_message_id: str = ""
    created_at: float = 0.0


@dataclass
class Reply:
    metadata: Meta


@dataclass
class FakeGrid:
    """Replies to message i ``delays[i]`` seconds after the push; records each pull's time."""

    clock: FakeClock
    delays: list[float]
    created_late: float = 0.0  # the owners' clocks run this far ahead
    pulls: list[float] = field(default_factory=list)
    _due: dict[str, float] = field(default_factory=dict)

    def push_messages(self, messages: list[Any]) -> list[str]:
        ids = [f"m{len(self._due) + i}" for i in range(len(messages))]
        for mid, delay in zip(ids, self.delays, strict=True):
            self._due[mid] = self.clock.now + delay
        self._type = messages[0].metadata.message_type
        return ids

    def pull_messages(self, ids: set[str]) -> list[Reply]:
        self.pulls.append(self.clock.now)
        return [
            Reply(Meta(self._type, mid, self._due[mid] + self.created_late))
            for mid in sorted(ids)
            if self._due[mid] <= self.clock.now
        ]


def _messages(kind: str, n: int) -> list[Any]:
    return [Reply(Meta(kind)) for _ in range(n)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(transcript, "time", fake)
    return fake


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_a_repeated_exchange_waits_for_its_replies_then_pulls_every_poll(
    clock: FakeClock, tmp_path: Path
) -> None:
    grid = FakeGrid(clock, delays=[2.5, 2.6, 2.8])  # the first round warms up: slow
    proxy = RecordingGrid(grid, tmp_path / "transcript.jsonl")  # type: ignore[arg-type]
    assert len(proxy._exchange(_messages("train", 3), timeout=60)) == 3
    gaps = _gaps(grid.pulls)
    assert gaps[0] == pytest.approx(0.05)
    assert max(gaps) == pytest.approx(POLL_MAX_S)

    # the warm-up set no timing: the second exchange is pulled from the start too
    grid.delays = [0.40, 0.45, 0.60]
    grid.pulls.clear()
    start = clock.now
    assert len(proxy._exchange(_messages("train", 3), timeout=60)) == 3
    assert grid.pulls[0] == start

    grid.pulls.clear()
    start = clock.now
    assert len(proxy._exchange(_messages("train", 3), timeout=60)) == 3
    offsets = [p - start for p in grid.pulls]
    assert offsets[0] == pytest.approx(0.40 * FIRST_PULL_SHARE)  # no pull before that
    gaps = _gaps(offsets)
    assert gaps
    assert all(g == pytest.approx(POLL_S) for g in gaps)
    assert offsets[-1] - 0.60 < POLL_S + 1e-9  # the last reply was pulled within a poll

    # a slow round does not make the next one wait longer: the soonest first reply counts
    grid.delays = [1.5, 1.6, 1.7]
    proxy._exchange(_messages("train", 3), timeout=60)
    grid.delays = [0.40, 0.45, 0.60]
    grid.pulls.clear()
    start = clock.now
    proxy._exchange(_messages("train", 3), timeout=60)
    assert grid.pulls[0] - start == pytest.approx(0.40 * FIRST_PULL_SHARE)

    # another message type has its own history: pulled from the start
    grid.pulls.clear()
    start = clock.now
    proxy._exchange(_messages("query.decrypt", 3), timeout=60)
    assert grid.pulls[0] == start


def test_overdue_replies_back_off_and_a_timeout_changes_no_timing(
    clock: FakeClock, tmp_path: Path
) -> None:
    grid = FakeGrid(clock, delays=[0.2, 0.2])
    proxy = RecordingGrid(grid, tmp_path / "transcript.jsonl")  # type: ignore[arg-type]
    proxy._exchange(_messages("train", 2), timeout=60)  # warm-up
    proxy._exchange(_messages("train", 2), timeout=60)

    grid.delays = [0.2, 5.0]  # one owner is very late
    grid.pulls.clear()
    start = clock.now
    assert len(proxy._exchange(_messages("train", 2), timeout=60)) == 2
    gaps = _gaps(grid.pulls)
    late = [g for p, g in zip(grid.pulls, gaps, strict=False) if p - start > 2 * 0.2 + POLL_MAX_S]
    assert late
    assert all(g == pytest.approx(POLL_MAX_S) for g in late)  # not every POLL_S
    assert len(grid.pulls) < 5.0 / POLL_MAX_S + 0.4 / POLL_S + 3

    grid.delays = [0.05, 99.0]  # never answers within the timeout
    proxy._exchange(_messages("train", 2), timeout=1.0)
    grid.delays = [0.3, 0.3]
    grid.pulls.clear()
    start = clock.now
    proxy._exchange(_messages("train", 2), timeout=60)
    # the timed-out exchange (first reply at 0.05 s) left the timing as it was (0.2 s)
    assert grid.pulls[0] - start == pytest.approx(0.2 * FIRST_PULL_SHARE)


def test_an_owner_clock_running_ahead_cannot_delay_the_pulls(
    clock: FakeClock, tmp_path: Path
) -> None:
    """The timing takes when a pull found a reply if that is sooner than the reply's own
    creation time, so a node whose clock is an hour fast does not make the next exchange
    wait an hour."""
    grid = FakeGrid(clock, delays=[0.3], created_late=3600.0)
    proxy = RecordingGrid(grid, tmp_path / "transcript.jsonl")  # type: ignore[arg-type]
    proxy._exchange(_messages("train", 1), timeout=60)  # warm-up
    proxy._exchange(_messages("train", 1), timeout=60)
    grid.pulls.clear()
    start = clock.now
    proxy._exchange(_messages("train", 1), timeout=60)
    assert grid.pulls[0] - start < 0.3 + POLL_MAX_S
