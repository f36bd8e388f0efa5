"""CSV schema checks, the demo split and the published normaliser."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.clients.data import (
    MIN_CLASS_EXAMPLES,
    MIN_HOSPITAL_EXAMPLES,
    Dataset,
    Normalizer,
    demo_normalizer,
    demo_split,
    load_csv,
)
from cohort.errors import BadInputError

DATA = Path(__file__).resolve().parents[1] / "data"


def test_good_csv_loads() -> None:
    ds = load_csv(DATA / "clients_good.csv")
    assert ds.feature_names == ("age", "bmi", "marker")
    assert ds.features.dtype == np.float32
    assert ds.features.shape == (4, 3)
    assert ds.labels.tolist() == [1, 0, 1, 0]
    assert ds.labels.dtype == np.int64
    assert ds.source == str(DATA / "clients_good.csv")


def test_feature_columns_pick_and_order() -> None:
    ds = load_csv(DATA / "clients_good.csv", feature_columns=["marker", "age"])
    assert ds.feature_names == ("marker", "age")
    assert ds.features[0].tolist() == pytest.approx([0.12, 54.0])


def test_other_label_column() -> None:
    ds = load_csv(DATA / "clients_bad_missing_label.csv", label_column="outcome")
    assert ds.labels.tolist() == [1, 0]


# (file, line, column or None, words in the reason)
BAD_CASES = [
    ("clients_bad_missing_label.csv", 1, "label", "label column not found"),
    ("clients_bad_duplicate_column.csv", 1, "bmi", "duplicate column name"),
    ("clients_bad_short_row.csv", 3, None, "expected 4 cells, got 3"),
    ("clients_bad_long_row.csv", 2, None, "expected 4 cells, got 5"),
    ("clients_bad_non_numeric.csv", 4, "bmi", "not a number"),
    ("clients_bad_nan.csv", 3, "marker", "NaN"),
    ("clients_bad_inf.csv", 5, "bmi", "infinite"),
    ("clients_bad_empty_cell.csv", 2, "bmi", "empty cell"),
    ("clients_bad_label_fraction.csv", 3, "label", "not an integer class"),
    ("clients_bad_label_text.csv", 2, "label", "not an integer class"),
    ("clients_bad_label_negative.csv", 3, "label", ">= 0"),
    ("clients_bad_empty.csv", 1, None, "empty file"),
]


@pytest.mark.parametrize(("name", "line", "column", "reason"), BAD_CASES)
def test_bad_csv_names_file_line_and_column(
    name: str, line: int, column: str | None, reason: str
) -> None:
    with pytest.raises(BadInputError) as info:
        load_csv(DATA / name)
    message = str(info.value)
    assert name in message
    assert f"line {line}" in message
    if column is not None:
        assert f"column {column!r}" in message
    assert reason in message


def test_bad_csv_messages_hold_no_cell_values() -> None:
    with pytest.raises(BadInputError) as info:
        load_csv(DATA / "clients_bad_non_numeric.csv")
    assert "high" not in str(info.value)


def test_label_out_of_range_with_num_classes() -> None:
    path = DATA / "clients_bad_label_out_of_range.csv"
    assert load_csv(path).labels.tolist() == [1, 3]  # without a class count: any index >= 0
    with pytest.raises(BadInputError, match=r"line 3, column 'label': label out of range.*0\.\.1"):
        load_csv(path, num_classes=2)


def test_no_rows_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"clients_bad_no_rows\.csv: no data rows"):
        load_csv(DATA / "clients_bad_no_rows.csv")
    missing = tmp_path / "absent.csv"
    with pytest.raises(BadInputError, match=r"absent\.csv: file not found"):
        load_csv(missing)


def test_unknown_feature_column() -> None:
    with pytest.raises(BadInputError, match="column 'weight': feature column not found"):
        load_csv(DATA / "clients_good.csv", feature_columns=["age", "weight"])
    with pytest.raises(BadInputError, match="label column and cannot be a feature"):
        load_csv(DATA / "clients_good.csv", feature_columns=["age", "label"])


def test_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("a,label\n1,0\n\n2,1\nx,0\n")
    with pytest.raises(BadInputError, match="line 5, column 'a'"):
        load_csv(path)


def test_dataset_rejects_bad_arrays() -> None:
    with pytest.raises(BadInputError, match="float32"):
        Dataset(np.zeros((2, 2)), np.zeros(2, dtype=np.int64), ("a", "b"), "t")
    with pytest.raises(BadInputError, match="NaN"):
        Dataset(
            np.array([[np.nan, 0]], dtype=np.float32), np.zeros(1, dtype=np.int64), ("a", "b"), "t"
        )


# --------------------------------------------------------------------------- demo split


def _demo_indices(datasets: list[Dataset], full: np.ndarray) -> list[set[int]]:
    """Map each example back to its row in the raw breast-cancer matrix (rows are unique)."""
    lookup = {row.tobytes(): i for i, row in enumerate(full)}
    assert len(lookup) == len(full)
    return [{lookup[row.tobytes()] for row in ds.features} for ds in datasets]


def test_demo_split_is_a_partition_with_held_out_test() -> None:
    from sklearn.datasets import load_breast_cancer

    full = np.asarray(load_breast_cancer().data, dtype=np.float32)
    hospitals, test = demo_split(num_hospitals=5, seed=3, standardize=False)
    sets = _demo_indices([*hospitals, test], full)
    union: set[int] = set()
    for i, a in enumerate(sets):
        for b in sets[i + 1 :]:
            assert not a & b
        union |= a
    assert union == set(range(len(full)))
    assert len(test) == pytest.approx(0.2 * len(full), abs=2)
    # stratified: class balance of the test split matches the whole set
    y = load_breast_cancer().target
    assert test.labels.mean() == pytest.approx(y.mean(), abs=0.01)
    for ds in hospitals:
        assert len(ds) >= MIN_HOSPITAL_EXAMPLES
        assert ds.class_counts(2).min() >= MIN_CLASS_EXAMPLES


@pytest.mark.parametrize("seed", range(8))
def test_demo_split_guarantees_hold_for_many_hospitals(seed: int) -> None:
    hospitals, test = demo_split(num_hospitals=12, seed=seed, alpha=0.1)
    assert sum(len(h) for h in hospitals) + len(test) == 569
    for ds in hospitals:
        assert len(ds) >= MIN_HOSPITAL_EXAMPLES
        assert ds.class_counts(2).min() >= MIN_CLASS_EXAMPLES


def test_demo_split_is_deterministic_and_seed_dependent() -> None:
    a, ta = demo_split(num_hospitals=4, seed=11)
    b, tb = demo_split(num_hospitals=4, seed=11)
    c, _ = demo_split(num_hospitals=4, seed=12)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.features, y.features)
        assert np.array_equal(x.labels, y.labels)
    assert np.array_equal(ta.features, tb.features)
    assert [len(x) for x in a] != [len(x) for x in c] or any(
        not np.array_equal(x.labels, z.labels) for x, z in zip(a, c, strict=True)
    )


def test_demo_split_label_skew_grows_as_alpha_shrinks() -> None:
    def skew(alpha: float) -> float:
        hospitals, _ = demo_split(num_hospitals=5, seed=0, alpha=alpha)
        return float(np.mean([abs(h.labels.mean() - 0.627) for h in hospitals]))

    assert skew(0.1) > skew(100.0)


def test_demo_split_rejects_bad_arguments() -> None:
    with pytest.raises(BadInputError, match="num_hospitals=30 is too many"):
        demo_split(num_hospitals=30, seed=0)
    with pytest.raises(BadInputError, match="alpha"):
        demo_split(num_hospitals=3, seed=0, alpha=0)
    with pytest.raises(BadInputError, match="test_fraction"):
        demo_split(num_hospitals=3, seed=0, test_fraction=1.0)


def test_demo_standardisation_uses_public_statistics_only() -> None:
    raw_h, raw_test = demo_split(num_hospitals=3, seed=5, standardize=False)
    std_h, std_test = demo_split(num_hospitals=3, seed=5)
    norm = demo_normalizer(seed=5)
    assert norm == Normalizer.fit(raw_test)
    # the normaliser does not depend on how the rest is split over hospitals
    assert norm == Normalizer.fit(demo_split(num_hospitals=7, seed=5, standardize=False)[1])
    assert np.allclose(std_test.features.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(norm.apply(raw_h[1]).features, std_h[1].features)


def test_normalizer_round_trips_through_json() -> None:
    norm = demo_normalizer(seed=0)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm


def test_normalizer_rejects_mismatch_and_bad_fields() -> None:
    norm = demo_normalizer(seed=0)
    with pytest.raises(BadInputError, match="do not match the study's normalizer"):
        norm.apply(load_csv(DATA / "clients_good.csv"))
    bad = norm.to_dict()
    bad["scale"] = ["x"]
    with pytest.raises(BadInputError, match="field 'scale'"):
        Normalizer.from_dict(bad)
    with pytest.raises(BadInputError, match="scale must be finite and > 0"):
        Normalizer(("a",), (0.0,), (0.0,))


def test_constant_feature_gets_unit_scale() -> None:
    ds = Dataset(np.array([[1, 5], [3, 5]], dtype=np.float32), np.array([0, 1]), ("a", "b"), "t")
    norm = Normalizer.fit(ds)
    assert norm.scale[1] == 1.0
    assert norm.apply(ds).features[:, 1].tolist() == [0.0, 0.0]


_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=3.4e38, max_value=3.41e38).map(lambda v: repr(v * 1.0)),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "-inf",
            "Infinity",
            "abc",
            "1e39",
            " 2.5 ",
            "1_0",
            "3.4028235677973362e+38",
            "3.4028235677973366e+38",
            "-3.4028235677973366e+38",
        ]
    ),
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(_CELLS, min_size=2, max_size=2), min_size=1, max_size=6))
def test_the_csv_reader_accepts_and_refuses_exactly_what_each_cells_check_does(
    tmp_path_factory: pytest.TempPathFactory, rows: list[list[str]]
) -> None:
    """The reader's one-pass check of a row agrees with the per-cell check: the same values,
    or the same error for the first bad cell (file order)."""
    from cohort.clients.data import _parse_feature

    path = tmp_path_factory.mktemp("csv") / "cells.csv"
    path.write_text("a,b,label\n" + "".join(f'"{x}","{y}",0\n' for x, y in rows))
    try:
        expected: np.ndarray | str = np.asarray(
            [
                [
                    _parse_feature(cell, where=f"{path}: line {line}, column {name!r}")
                    for cell, name in zip(row, ("a", "b"), strict=True)
                ]
                for line, row in enumerate(rows, start=2)
            ],
            dtype=np.float32,
        )
    except BadInputError as exc:
        expected = str(exc)
    try:
        got: np.ndarray | str = load_csv(path).features
    except BadInputError as exc:
        got = str(exc)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, expected)
