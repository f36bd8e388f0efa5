"""Hospitals on their own CSV files, with K = 3 classes, end to end (``cohort simulate --csv``).

Three hospitals each get a CSV of iris records (scikit-learn's bundled copy: 3 classes,
4 features, raw centimetres), the sponsor a held-out CSV. The manifest takes K from the
study (``--classes 3``), the normaliser from the sponsor's held-out file; each hospital loads
and checks its own file (labels in 0..K-1) and standardises it with the manifest's scaling;
training, CKKS aggregation and evaluation run over three classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from cohort.clients.data import Dataset, write_csv
from cohort.errors import BadInputError, ConfigError
from cohort.federation.config import DpSettings, StudyConfig
from cohort.federation.simulate import run_study

pytestmark = pytest.mark.slow


def _iris_files(folder: Path) -> tuple[list[Path], Path]:
    bunch = load_iris()
    x = np.asarray(bunch.data, dtype=np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    names = tuple(str(n) for n in bunch.feature_names)
    order = np.random.default_rng(3).permutation(len(y))
    test, rest = order[:30], order[30:]
    files = []
    for i, part in enumerate(np.array_split(rest, 3)):
        path = folder / f"hospital-{i + 1}.csv"
        write_csv(Dataset(x[part], y[part], names, "iris"), path)
        files.append(path)
    test_path = folder / "test.csv"
    write_csv(Dataset(x[test], y[test], names, "iris"), test_path)
    return files, test_path


def test_three_class_csv_hospitals_train_end_to_end(tmp_path: Path) -> None:
    files, test = _iris_files(tmp_path / "data")
    config = StudyConfig(
        clients=3,
        rounds=2,
        seed=0,
        dp=DpSettings(epsilon=8.0, batch_size=16, lr=0.5),
        data="csv",
        csv=tuple(map(str, files)),
        test_csv=str(test),
        classes=3,
        model="logreg",
    )
    summary = run_study(config, tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["manifest"]
    assert manifest["num_classes"] == 3
    assert manifest["features"] == 4
    assert manifest["normalizer"]["feature_names"][0] == "sepal length (cm)"
    assert [len(r["clients_included"]) for r in summary["rounds"]] == [3, 3]
    assert summary["chain"]["finalized_rounds"] == 2
    assert summary["final_accuracy"] > 0.6  # three classes: chance is 1/3


def test_a_label_outside_the_studys_classes_is_named(tmp_path: Path) -> None:
    files, test = _iris_files(tmp_path / "data")
    with pytest.raises(BadInputError, match=r"label out of range, expected a class in 0\.\.1"):
        run_study(
            StudyConfig(
                clients=3,
                rounds=1,
                data="csv",
                csv=tuple(map(str, files)),
                test_csv=str(test),
                classes=2,
            ),
            tmp_path / "out",
        )


def test_csv_config_mistakes_are_named() -> None:
    with pytest.raises(ConfigError, match="one file per hospital"):
        StudyConfig(clients=3, data="csv", csv=("a.csv",), test_csv="t.csv")
    with pytest.raises(ConfigError, match="test_csv"):
        StudyConfig(clients=2, data="csv", csv=("a.csv", "b.csv"))
    with pytest.raises(ConfigError, match="classes must be >= 2"):
        StudyConfig(classes=1)
