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


def _request() -> wire.DecryptRequest:
    return wire.DecryptRequest(
        study_id=STUDY,
        round=1,
        client_ids=("h1", "h2", "h3"),
        aggregate=b"agg",
        aggregate_hash=b"h" * 32,
        member_ids=("m1", "m2"),
        member_signatures=(b"s" * 64, b"t" * 64),
    )


def _run(answers: dict[str, np.ndarray | None]) -> tuple[Table, Any]:
    table = _coordinator(answers)
    party_of = {1: "h1", 2: "h2", 3: "h3"}
    return table, table.decrypt(1, ["h1", "h2", "h3"], _request(), party_of)


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


# ---------------------------------- decryptions that came back beside the next round's training


def _answered(**vectors: np.ndarray) -> dict[str, tuple[bytes, np.ndarray | None]]:
    """Checked reveals in train replies: h2 (first in round 1's rotation) sent the sum."""
    return {p: (wire.plaintext_hash(v), v if p == "h2" else None) for p, v in vectors.items()}


def _run_answered(
    answered: dict[str, tuple[bytes, np.ndarray | None]], answers: dict[str, np.ndarray | None]
) -> tuple[Table, Any]:
    table = _coordinator(answers)
    party_of = {1: "h1", 2: "h2", 3: "h3"}
    return table, table.decrypt(1, ["h1", "h2", "h3"], _request(), party_of, answered)


def test_revealed_decryptions_that_agree_need_no_decryption_message() -> None:
    table, (total, agreed, wrong) = _run_answered(
        _answered(h1=TRUE, h2=TRUE, h3=TRUE), {"h1": TRUE, "h2": TRUE, "h3": TRUE}
    )
    np.testing.assert_array_equal(total, TRUE)
    assert agreed == ["h2", "h3", "h1"]
    assert wrong == []
    assert table.asked == []


def test_a_revealed_lie_with_the_sum_is_outvoted_and_the_sum_fetched_from_an_agreeing_owner() -> (
    None
):
    """The owner that sent the sum lied; the two that sent hashes agree on another: one of
    them is asked for its sum by a decryption message, and the liar is named."""
    table, (total, agreed, wrong) = _run_answered(
        _answered(h1=TRUE, h2=LIE, h3=TRUE), {"h1": TRUE, "h2": LIE, "h3": TRUE}
    )
    np.testing.assert_array_equal(total, TRUE)
    assert sorted(agreed) == ["h1", "h3"]
    assert wrong == ["h2"]
    assert table.batches == [["h3"]]
    assert table.checks == []


def test_missing_reveals_are_completed_by_decryption_messages_one_owner_at_a_time() -> None:
    table, (total, agreed, wrong) = _run_answered(
        _answered(h3=TRUE), {"h1": TRUE, "h2": None, "h3": TRUE}
    )
    np.testing.assert_array_equal(total, TRUE)
    assert sorted(agreed) == ["h1", "h3"]
    assert wrong == []
    assert table.batches == [["h2"], ["h1"]]  # h2 (down) first in the rotation, then h1
    with pytest.raises(ProtocolAbort, match="no two data owners"):
        _run_answered(_answered(h2=LIE), {"h1": TRUE + 2, "h2": LIE, "h3": TRUE})


def test_a_played_round_saved_to_reveal_reads_back_as_it_was() -> None:
    """What a restarted coordinator reads of a round whose sum is still to be revealed: the
    same decryption request (ciphertext, quorum signatures), client set, weight and record."""
    from cohort.errors import BadInputError
    from cohort.federation.coordinator import Pending, RoundRecord
    from cohort.federation.modes import Aggregated
    from cohort.federation.modes.ckks.coordinator import CkksReveal

    table = _coordinator({})
    party_of = {1: "h1", 2: "h2", 3: "h3"}
    reveal = CkksReveal(table, 1, ["h1", "h2", "h3"], _request(), party_of)
    record = RoundRecord(1, 0.0, 0.0, "ab", ["h1", "h2", "h3"], [], [], {}, True, 1.5, 0.8)
    done = Aggregated(None, ["h1", "h2", "h3"], b"h" * 32, finalized=True, reveal=reveal)
    saved = json.loads(json.dumps(Pending(record, done, reveal, 2.5, 3).to_json()))
    back = Pending.from_json(saved, table, {7: "h1", 8: "h2", 9: "h3"})  # enrolled anew
    assert isinstance(back.reveal, CkksReveal)
    assert back.reveal.request == _request()
    assert back.reveal.party_of == {7: "h1", 8: "h2", 9: "h3"}
    assert (back.round, back.weight, back.released) == (1, 2.5, 3)
    assert back.record == record
    assert back.done.client_set == ["h1", "h2", "h3"]
    assert back.done.aggregate_hash == b"h" * 32
    saved["reveal"]["request"]["aggregate_hash"] = "not hex"
    with pytest.raises(BadInputError, match="malformed"):
        Pending.from_json(saved, table, party_of)
