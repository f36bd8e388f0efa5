"""The CKKS coordinator's decryption check in isolation: a lying decryptor is outvoted and named;
and what the coordinator records of each message exchange (``rounds[].exchanges``).

The Flower messages are replaced by a table of what each owner answers (a unit test of the
agreement rule; the end-to-end and adversarial suites run the real runtime).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from cohort.aggregator.quorum import QuorumDecision
from cohort.errors import ProtocolAbort
from cohort.federation import wire
from cohort.federation.coordinator import exchange_record
from cohort.federation.modes.ckks.coordinator import CkksCoordinator

STUDY = "ab" * 32
TRUE = np.arange(4, dtype=np.float64)
LIE = TRUE + 1.0


class Table(CkksCoordinator):
    """Answers decryption requests from ``answers`` (party -> vector or None); a party asked
    for its hash only answers with the hash."""

    answers: dict[str, np.ndarray | None]
    asked: list[str]
    batches: list[list[str]]
    checks: list[str]

    def _decrypt_some(
        self,
        parties: Sequence[str],
        node_of: Mapping[str, int],
        rnd: int,
        request: wire.DecryptRequest,
        *,
        hash_only: Sequence[str] = (),
    ) -> dict[str, tuple[bytes, np.ndarray | None]]:
        self.asked.extend(parties)
        self.batches.append(list(parties))
        self.checks.extend(hash_only)
        return {
            p: (wire.plaintext_hash(v), None if p in hash_only else v)
            for p in parties
            if (v := self.answers[p]) is not None
        }


def _coordinator(answers: dict[str, np.ndarray | None]) -> Table:
    host = cast(Any, type("H", (), {"manifest": type("M", (), {"study_id": STUDY})()})())
    table = Table(host, cast(Any, None))
    table.answers = answers
    table.asked = []
    table.batches = []
    table.checks = []
    return table


def _decision() -> QuorumDecision:
    return QuorumDecision(
        study_id=STUDY,
        round=1,
        client_ids=("h1", "h2", "h3"),
        aggregate=b"agg",
        aggregate_hash=b"h" * 32,
        agreeing=("m1", "m2"),
        faulty=(),
        missing=(),
        attestations=(),
        signatures={"m1": b"s" * 64, "m2": b"t" * 64},
    )


def _run(answers: dict[str, np.ndarray | None]) -> tuple[Table, Any]:
    table = _coordinator(answers)
    party_of = {1: "h1", 2: "h2", 3: "h3"}
    return table, table.decrypt(1, ["h1", "h2", "h3"], _decision(), party_of)


def test_two_agreeing_decryptions_are_enough() -> None:
    table, (total, agreed, wrong) = _run({"h1": TRUE, "h2": TRUE, "h3": TRUE})
    np.testing.assert_array_equal(total, TRUE)
    assert agreed == ["h2", "h3"]  # round 1 starts the rotation at the second owner
    assert wrong == []
    assert table.asked == ["h2", "h3"]
    assert table.batches == [["h2", "h3"]]  # one message round trip, not two
    assert table.checks == ["h3"]  # the second owner sends its signed hash, not the sum


def test_a_lying_decryptor_is_outvoted_and_named() -> None:
    table, (total, agreed, wrong) = _run({"h1": TRUE, "h2": LIE, "h3": TRUE})
    np.testing.assert_array_equal(total, TRUE)
    assert sorted(agreed) == ["h1", "h3"]
    assert wrong == ["h2"]
    assert table.asked == ["h2", "h3", "h1"]


def test_no_two_agreeing_decryptions_skip_the_round() -> None:
    with pytest.raises(ProtocolAbort, match="no two data owners"):
        _run({"h1": TRUE + 2, "h2": LIE, "h3": TRUE})


def test_when_the_first_owner_fails_the_sum_comes_from_the_third() -> None:
    table, (total, agreed, wrong) = _run({"h1": TRUE, "h2": None, "h3": TRUE})
    np.testing.assert_array_equal(total, TRUE)
    assert sorted(agreed) == ["h1", "h3"]  # h3 checked by hash, h1 sent the sum
    assert wrong == []
    assert table.checks == ["h3"]


def test_a_lying_checker_is_outvoted_by_the_third_owner() -> None:
    table, (total, agreed, wrong) = _run({"h1": TRUE, "h2": TRUE, "h3": LIE})
    np.testing.assert_array_equal(total, TRUE)
    assert sorted(agreed) == ["h1", "h2"]
    assert wrong == ["h3"]
    assert table.checks == ["h3"]  # h1 is asked for the sum


def test_a_lone_checker_is_asked_again_for_the_sum() -> None:
    table, (total, agreed, wrong) = _run({"h1": None, "h2": None, "h3": TRUE})
    np.testing.assert_array_equal(total, TRUE)
    assert agreed == ["h3"]
    assert wrong == []
    assert table.batches == [["h2", "h3"], ["h1"], ["h3"]]
    assert table.checks == ["h3"]  # only the first time


def test_the_coordinator_never_takes_a_sum_without_one_owner_sending_it() -> None:
    with pytest.raises(ProtocolAbort, match="no two data owners"):
        _run({"h1": None, "h2": None, "h3": None})


def _reply(node: int, answers: str, created: float, *, error: bool = False) -> Any:
    """What exchange_record reads of a Flower reply (its metadata and whether it is an error)."""
    metadata = SimpleNamespace(src_node_id=node, reply_to_message_id=answers, created_at=created)
    return SimpleNamespace(metadata=metadata, has_error=lambda: error)


def test_an_exchange_lists_each_replys_owner_message_and_time_but_no_error_or_bad_time() -> None:
    replies = [
        _reply(11, "m-1", 100.25049),
        _reply(12, "m-2", 100.5, error=True),  # counted in node_errors, not timed
        _reply(13, "m-3", float("nan")),  # an owner's clock is not trusted to be a time
        _reply(14, "m-4", float("inf")),
        _reply(15, "m-5", cast(float, "100.3")),
    ]
    got = exchange_record("train", 100.0004, 101.0, replies)
    assert got == {
        "type": "train",
        "sent_at": 100.0,
        "collected_at": 101.0,
        "replies": [{"node": "11", "message": "m-1", "replied_at": 100.25}],
    }
    json.dumps(got, allow_nan=False)  # summary.json stays strict JSON
