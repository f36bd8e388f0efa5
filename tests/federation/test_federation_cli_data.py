"""``cohort data normalizer``: the sponsor's published feature scaling, computed as
docs/privacy.md states (pooled reference rows, mean and population standard deviation per
feature), checked against numpy and against the demo's own normaliser; every bad input is
one line naming the file, line and column."""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from cohort.clients.data import Normalizer, demo_normalizer, demo_split, load_csv
from cohort.clients.reference import fit_reference_normalizer
from cohort.errors import BadInputError
from cohort.federation.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ("age", "bmi", "lactate")


def cohort(*args: str) -> Result:
    return runner.invoke(app, list(args))


def one_line_error(result: Result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def reference_files(tmp_path: Path, *, seed: int = 3) -> tuple[list[Path], np.ndarray]:
    """Three reference files with the study's columns (label last, as a hospital's CSV may
    not have it) and the float32 values they hold, for a numpy oracle."""
    rng = np.random.default_rng(seed)
    paths, blocks = [], []
    for i, n in enumerate((40, 7, 113)):
        x = (rng.normal(size=(n, 3)) * [12.0, 4.0, 0.8] + [61.0, 27.0, 1.9]).astype(np.float32)
        labels = rng.integers(0, 3, size=n)
        rows = [[*(repr(float(v)) for v in row), int(y)] for row, y in zip(x, labels, strict=True)]
        paths.append(write_csv(tmp_path / f"reference-{i}.csv", [*COLUMNS, "label"], rows))
        blocks.append(x)
    return paths, np.concatenate(blocks).astype(np.float64)


def test_the_normalizer_matches_numpy_on_the_pooled_rows(tmp_path: Path) -> None:
    paths, x = reference_files(tmp_path)
    out = tmp_path / "normalizer.json"
    result = cohort("data", "normalizer", *map(str, paths), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "160 rows of 3 file(s)" in result.stdout
    published = json.loads(out.read_text())
    assert set(published) == {"feature_names", "mean", "scale"}  # nothing else is revealed
    assert published["feature_names"] == list(COLUMNS)
    np.testing.assert_allclose(published["mean"], x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(published["scale"], x.std(axis=0, ddof=0), rtol=1e-12)
    # Not the mean of per-file statistics: the files have different sizes.
    per_file = np.mean([np.loadtxt(p, delimiter=",", skiprows=1)[:, :3].mean(0) for p in paths], 0)
    assert not np.allclose(published["mean"], per_file, rtol=1e-6)


def test_the_output_is_the_manifest_normalizer_a_hospital_applies(tmp_path: Path) -> None:
    paths, _ = reference_files(tmp_path)
    out = tmp_path / "normalizer.json"
    assert cohort("data", "normalizer", str(paths[0]), "--out", str(out)).exit_code == 0
    normalizer = Normalizer.from_dict(json.loads(out.read_text()))
    hospital = load_csv(paths[2])  # how federation/hospital.py reads a hospital's CSV
    scaled = normalizer.apply(hospital).features.astype(np.float64)
    expected = (hospital.features.astype(np.float64) - normalizer.mean) / normalizer.scale
    np.testing.assert_allclose(scaled, expected, rtol=1e-6, atol=1e-6)


def test_the_demo_held_out_split_gives_the_demo_normalizer(tmp_path: Path) -> None:
    """docs/privacy.md: in the demo the public data is the held-out split."""
    _, test = demo_split(num_hospitals=1, seed=7, standardize=False)
    rows = [
        [*(repr(float(v)) for v in row), int(y)]
        for row, y in zip(test.features, test.labels, strict=True)
    ]
    path = write_csv(tmp_path / "test.csv", [*test.feature_names, "label"], rows)
    fit = fit_reference_normalizer([path])
    assert fit.normalizer == demo_normalizer(seed=7)
    assert fit.rows == len(test)


def test_another_label_column_is_left_out_of_the_features(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "r.csv", ["outcome", "age", "bmi"], [[0, 50, 20], [1, 70, 30], [0, 60, 25]]
    )
    out = tmp_path / "n.json"
    result = cohort("data", "normalizer", str(path), "--out", str(out), "--label-column", "outcome")
    assert result.exit_code == 0, result.output
    published = json.loads(out.read_text())
    assert published["feature_names"] == ["age", "bmi"]
    np.testing.assert_allclose(published["mean"], [60.0, 25.0])
    np.testing.assert_allclose(published["scale"], np.std([[50, 20], [70, 30], [60, 25]], axis=0))


# --------------------------------------------------------------------------- bad input


GOOD = [*COLUMNS, "label"], [[60, 25, 1.5, 0], [70, 31, 2.5, 1], [55, 22, 1.1, 0]]


def _bad_cases(tmp: Path) -> dict[str, tuple[list[Path], str]]:
    good = write_csv(tmp / "good.csv", *GOOD)
    quote = tmp / "quote.csv"
    quote.write_text('age,bmi,lactate,label\n60,25,1.5,0\n"70,31,2.5,1\n')
    return {
        "malformed": ([quote], f"{quote}: line 3: malformed CSV"),
        "swapped columns": (
            [good, write_csv(tmp / "swapped.csv", ["bmi", "age", "lactate", "label"], GOOD[1])],
            f"{tmp / 'swapped.csv'}: header, column 'bmi': feature 1 is 'age' in {good}",
        ),
        "missing column": (
            [good, write_csv(tmp / "short.csv", ["age", "bmi", "label"], [[1, 2, 0], [3, 4, 1]])],
            f"{tmp / 'short.csv'}: header, column 'lactate': missing",
        ),
        "extra column": (
            [
                good,
                write_csv(tmp / "wide.csv", ["age", "bmi", "lactate", "crp", "label"], [[1] * 5]),
            ],
            f"{tmp / 'wide.csv'}: header, column 'crp': not in {good}",
        ),
        "constant column": (
            [write_csv(tmp / "flat.csv", [*COLUMNS, "label"], [[60, 25, 2, 0], [70, 25, 2, 1]])],
            f"{tmp / 'flat.csv'}: column 'bmi': constant over all 2 rows",
        ),
        "constant across files": (
            [
                write_csv(tmp / "f1.csv", ["age", "bmi", "label"], [[60, 25, 0]]),
                write_csv(tmp / "f2.csv", ["age", "bmi", "label"], [[70, 25, 1]]),
            ],
            "2 files: column 'bmi': constant over all 2 rows",
        ),
        "no rows": (
            [write_csv(tmp / "empty.csv", [*COLUMNS, "label"], [])],
            f"{tmp / 'empty.csv'}: no data rows after the header",
        ),
        "wrong cell count": (
            [write_csv(tmp / "nan.csv", [*COLUMNS, "label"], [[60, 25, 1], [61, "n/a", 2, 1]])],
            f"{tmp / 'nan.csv'}: line 2: expected 4 cells, got 3",
        ),
        "bad cell": (
            [write_csv(tmp / "cell.csv", [*COLUMNS, "label"], [[60, 25, 1, 0], [61, "x", 2, 1]])],
            f"{tmp / 'cell.csv'}: line 3, column 'bmi': not a number",
        ),
        "no label column": (
            [write_csv(tmp / "nolabel.csv", list(COLUMNS), [[1, 2, 3], [4, 5, 6]])],
            f"{tmp / 'nolabel.csv'}: line 1, column 'label': label column not found",
        ),
        "missing file": ([tmp / "absent.csv"], f"{tmp / 'absent.csv'}: file not found"),
        "same file twice": ([good, good], f"{good}: given twice"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "malformed",
        "swapped columns",
        "missing column",
        "extra column",
        "constant column",
        "constant across files",
        "no rows",
        "wrong cell count",
        "bad cell",
        "no label column",
        "missing file",
        "same file twice",
    ],
)
def test_bad_input_is_one_line_naming_file_line_and_column(tmp_path: Path, case: str) -> None:
    paths, message = _bad_cases(tmp_path)[case]
    out = tmp_path / "normalizer.json"
    result = cohort("data", "normalizer", *map(str, paths), "--out", str(out))
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert message in line, line
    assert not out.exists()
    with pytest.raises(BadInputError):
        fit_reference_normalizer(paths)


def test_the_command_line_is_checked_before_any_file_is_read(tmp_path: Path) -> None:
    good = write_csv(tmp_path / "good.csv", *GOOD)
    out = tmp_path / "normalizer.json"
    out.write_text("{}")
    exists = cohort("data", "normalizer", str(good), "--out", str(out))
    assert exists.exit_code == 2
    assert "already exists" in one_line_error(exists)
    assert out.read_text() == "{}"
    replaced = cohort("data", "normalizer", str(good), "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(out.read_text())["feature_names"] == list(COLUMNS)
    onto_input = cohort("data", "normalizer", str(good), "--out", str(good), "--overwrite")
    assert onto_input.exit_code == 2
    assert "is one of the input files" in one_line_error(onto_input)
    assert good.read_text().startswith("age,bmi")
    none = runner.invoke(app, ["data", "normalizer", "--out", str(tmp_path / "n.json")])
    assert none.exit_code == 2


def test_no_cell_value_appears_in_an_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [*COLUMNS, "label"], [[60, 25, 1, 0], [61, "42x7", 2, 1]])
    result = cohort("data", "normalizer", str(path), "--out", str(tmp_path / "n.json"))
    assert result.exit_code == 1
    assert "42x7" not in result.output


# --------------------------------------------------------------------------- docs


def test_the_sponsor_guide_command_is_the_real_one(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "guides" / "sponsor.md").read_text()
    lines = [
        line.strip()
        for block in guide.split("```bash\n")[1:]
        for line in block.split("```", 1)[0].splitlines()
        if line.strip().startswith("cohort data normalizer")
    ]
    assert len(lines) == 1
    argv = [w.replace("/srv/sponsor/", f"{tmp_path}/") for w in shlex.split(lines[0])[1:]]
    reference = Path(argv[2])
    paths, _ = reference_files(tmp_path)
    reference.write_text(paths[2].read_text())
    result = cohort(*argv)
    assert result.exit_code == 0, result.output
    assert json.loads(Path(argv[-1]).read_text())["feature_names"] == list(COLUMNS)
    privacy = (ROOT / "docs" / "privacy.md").read_text()
    assert "cohort data normalizer CSV... --out normalizer.json" in privacy
    assert "Never a hospital's records" in privacy
