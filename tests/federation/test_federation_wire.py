"""Wire schemas: typed round trips, and a clear error for every malformed field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from cohort.errors import BadInputError
from cohort.federation import wire
from cohort.federation.coordinator import choose_client_set


def _instruction(**overrides: object) -> wire.TrainInstruction:
    base: dict[str, object] = {"study_id": "ab" * 32, "round": 1, "weight_unit": 400}
    base.update(overrides)
    return wire.TrainInstruction(**base)  # type: ignore[arg-type]


def test_train_instruction_round_trips() -> None:
    instruction = _instruction()
    decoded = wire.TrainInstruction.from_record(instruction.to_record())
    assert decoded == instruction


def test_train_instruction_carries_work_not_terms() -> None:
    """Mode, committee, thresholds, DP terms and model come from the approved manifest."""
    names = {f.name for f in dataclasses.fields(wire.TrainInstruction)}
    # reveal_weight: the weight of the previous round's S (a sum of example counts), only
    # beside that round's reveal; owners refuse one outside (0, |S|] (cohort.federation.reveal)
    assert names == {"study_id", "round", "weight_unit", "reveal_weight"}
    for schema in (wire.KeygenRequest, wire.InstallKeyRequest, wire.DecryptRequest):
        fields = {f.name for f in dataclasses.fields(schema)}
        assert not fields & {"secure", "quorum", "min_clients", "model", "epsilon", "party_ids"}


def test_missing_field_is_named() -> None:
    record = _instruction().to_record()
    del record["cohort"]["weight_unit"]
    with pytest.raises(BadInputError, match="train: missing field 'weight_unit'"):
        wire.TrainInstruction.from_record(record)


def test_wrong_type_is_named() -> None:
    record = _instruction().to_record()
    record["cohort"]["round"] = "one"  # type: ignore[assignment]
    with pytest.raises(BadInputError, match="field 'round' must be int"):
        wire.TrainInstruction.from_record(record)


def test_message_without_cohort_record_is_rejected() -> None:
    with pytest.raises(BadInputError, match="no 'cohort' record"):
        wire.TrainReceipt.from_record(RecordDict({"other": ConfigRecord({"a": 1})}))


def test_decryption_digest_binds_round_and_both_hashes() -> None:
    base = {"study_id": "ab" * 32, "round": 1, "aggregate_hash": b"a" * 32, "plain_hash": b"p" * 32}
    digest = wire.decryption_digest(**base)  # type: ignore[arg-type]
    for key, value in (("round", 2), ("aggregate_hash", b"b" * 32), ("plain_hash", b"q" * 32)):
        assert wire.decryption_digest(**{**base, key: value}) != digest  # type: ignore[arg-type]
    one = np.arange(4, dtype=np.float64)
    assert wire.plaintext_hash(one) == wire.plaintext_hash(one.copy())
    assert wire.plaintext_hash(one) != wire.plaintext_hash(one + 1e-12)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=300))
def test_vectors_round_trip(values: list[float]) -> None:
    vector = np.asarray(values, dtype=np.float32)
    content = wire.put_vector(RecordDict(), vector)
    np.testing.assert_array_equal(wire.get_vector(content, message="t", length=len(values)), vector)


def test_nan_vector_names_the_index() -> None:
    content = wire.put_vector(RecordDict(), np.array([0.0, 1.0, np.nan], dtype=np.float32))
    with pytest.raises(BadInputError, match="index 2 is not finite"):
        wire.get_vector(content, message="train")


def test_wrong_length_vector_is_rejected() -> None:
    content = wire.put_vector(RecordDict(), np.zeros(4, dtype=np.float32))
    with pytest.raises(BadInputError, match="expected 5 values, got 4"):
        wire.get_vector(content, message="train", length=5)


def test_client_set_takes_the_largest_set_a_quorum_holds() -> None:
    delivered = {
        "h1": {"m1", "m2", "m3"},
        "h2": {"m1", "m2"},
        "h3": {"m2", "m3"},
        "h4": {"m3"},
    }
    clients, holders = choose_client_set(delivered, ["m1", "m2", "m3"], 2)
    assert clients == ["h1", "h2"]
    assert holders == ["m1", "m2"]


def test_client_set_is_empty_when_no_quorum_holds_anything() -> None:
    clients, _ = choose_client_set({"h1": {"m1"}, "h2": {"m2"}}, ["m1", "m2", "m3"], 2)
    assert clients == []


_DIGESTS = st.binary(min_size=32, max_size=32)


@given(
    round=st.integers(min_value=0, max_value=2**63 - 1),
    client_ids=st.lists(st.text(min_size=1, max_size=12), max_size=5).map(tuple),
    aggregate=st.binary(max_size=64),
    aggregate_hash=_DIGESTS,
    signatures=st.lists(st.binary(min_size=64, max_size=64), max_size=3).map(tuple),
    return_vector=st.booleans(),
)
def test_a_reveal_embeds_beside_the_train_instruction_and_reads_back_unchanged(
    round: int,
    client_ids: tuple[str, ...],
    aggregate: bytes,
    aggregate_hash: bytes,
    signatures: tuple[bytes, ...],
    return_vector: bool,
) -> None:
    request = wire.DecryptRequest(
        study_id="ab" * 32,
        round=round,
        client_ids=client_ids,
        aggregate=aggregate,
        aggregate_hash=aggregate_hash,
        member_ids=tuple(f"member-{i}" for i in range(len(signatures))),
        member_signatures=signatures,
        return_vector=return_vector,
    )
    instruction = wire.TrainInstruction(
        study_id="cd" * 32, round=round + 1, weight_unit=7, reveal_weight=1.5
    )
    content = wire.embed(instruction.to_record(), request)
    assert len(content.config_records) == 1  # one config record: no extra Flower object
    assert wire.TrainInstruction.from_record(content) == instruction
    assert wire.embedded(content, wire.DecryptRequest) == request
    assert wire.embedded(instruction.to_record(), wire.DecryptRequest) is None
    # ... and as a stored record (a coordinator's saved reveal): JSON and back, unchanged
    stored = json.loads(json.dumps(request.to_json()))
    assert wire.DecryptRequest.from_json(stored) == request


def test_a_malformed_reveal_is_named_with_its_prefix() -> None:
    request = wire.DecryptRequest(
        study_id="ab" * 32,
        round=1,
        client_ids=("h1", "h2"),
        aggregate=b"",
        aggregate_hash=b"h" * 32,
        member_ids=(),
        member_signatures=(),
    )
    content = wire.embed(_instruction().to_record(), request)
    content.config_records["cohort"]["reveal.round"] = "one"
    with pytest.raises(BadInputError, match=r"field 'reveal\.round' must be int"):
        wire.embedded(content, wire.DecryptRequest)
    del content["cohort"]["reveal.round"]
    with pytest.raises(BadInputError, match=r"missing field 'reveal\.round'"):
        wire.embedded(content, wire.DecryptRequest)
