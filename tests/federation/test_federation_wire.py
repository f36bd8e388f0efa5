"""Wire schemas: typed round trips, and a clear error for every malformed field."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from cohort.errors import BadInputError
from cohort.federation import wire
from cohort.federation.coordinator import choose_client_set


def _instruction(**overrides: object) -> wire.TrainInstruction:
    base: dict[str, object] = {
        "study_id": "s",
        "round": 1,
        "total_rounds": 5,
        "weight_unit": 400,
        "secure": "ckks",
        "seed": 3,
        "model": "mlp",
        "epsilon": 3.0,
        "delta": 1e-5,
        "local_epochs": 1,
        "batch_size": 32,
        "max_grad_norm": 1.0,
        "lr": 0.5,
        "quorum": 2,
        "min_clients": 2,
        "member_ids": ("m1", "m2"),
        "member_sign_keys": (b"a" * 32, b"b" * 32),
        "member_box_keys": (b"c" * 32, b"d" * 32),
        "member_endpoints": ("127.0.0.1:1", "127.0.0.1:2"),
    }
    base.update(overrides)
    return wire.TrainInstruction(**base)  # type: ignore[arg-type]


def test_train_instruction_round_trips() -> None:
    instruction = _instruction()
    decoded = wire.TrainInstruction.from_record(instruction.to_record())
    assert decoded == instruction
    assert [m.member_id for m in decoded.committee()] == ["m1", "m2"]


def test_missing_field_is_named() -> None:
    record = _instruction().to_record()
    del record["cohort"]["quorum"]
    with pytest.raises(BadInputError, match="train: missing field 'quorum'"):
        wire.TrainInstruction.from_record(record)


def test_wrong_type_is_named() -> None:
    record = _instruction().to_record()
    record["cohort"]["round"] = "one"  # type: ignore[assignment]
    with pytest.raises(BadInputError, match="field 'round' must be int"):
        wire.TrainInstruction.from_record(record)


def test_message_without_cohort_record_is_rejected() -> None:
    with pytest.raises(BadInputError, match="no 'cohort' record"):
        wire.TrainReceipt.from_record(RecordDict({"other": ConfigRecord({"a": 1})}))


def test_uneven_committee_lists_are_rejected() -> None:
    with pytest.raises(BadInputError, match="committee lists have different lengths"):
        _instruction(member_endpoints=("127.0.0.1:1",)).committee()


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
