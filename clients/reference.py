"""The sponsor's reference data: fitting the feature normaliser a study publishes.

Run by the sponsor (``cohort data normalizer``), on its own data that it may publish: its
held-out evaluation split or a public data set with the study's columns, never a hospital's
records (docs/privacy.md, "Feature scaling"). The result is a :class:`Normalizer` whose
``to_dict()`` goes into the manifest's ``normalizer`` field; every data owner and the
coordinator apply it unchanged.

The rule, as the privacy doc states it: the files are read with :func:`load_csv` (the same
parser and column choice as every hospital: every column but the label, in file order),
pooled row by row, and each feature's mean and population standard deviation (ddof 0) over
all rows is computed exactly as :meth:`Normalizer.fit` does. What the output reveals: the
feature names and order, and those two numbers per feature; not the row count, the labels
or any single row (the label column is checked, then ignored). A feature that is constant
over the pooled rows is refused rather than given scale 1: the reference data then says
nothing about how that feature varies at the hospitals.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohort.clients.data import Dataset, Normalizer, load_csv
from cohort.errors import BadInputError

#: Below this standard deviation a feature counts as constant (as in :meth:`Normalizer.fit`).
MIN_SCALE = 1e-12


@dataclass(frozen=True)
class ReferenceFit:
    """A fitted normaliser and what it was fitted on (for the sponsor's own records)."""

    normalizer: Normalizer
    rows: int
    files: tuple[Path, ...]


def _mismatch(path: Path, names: tuple[str, ...], first: Path, expected: tuple[str, ...]) -> str:
    rule = f"feature columns must match {first} by name and order"
    pairs = itertools.zip_longest(names, expected)
    for position, (got, want) in enumerate(pairs, start=1):
        if got == want:
            continue
        if got is None:
            return f"{path}: header, column {want!r}: missing ({rule})"
        if want is None:
            return f"{path}: header, column {got!r}: not in {first} ({rule})"
        return f"{path}: header, column {got!r}: feature {position} is {want!r} in {first} ({rule})"
    return f"{path}: header: {rule}"  # pragma: no cover - names differ somewhere


def fit_reference_normalizer(paths: Sequence[Path], *, label_column: str = "label") -> ReferenceFit:
    """Fit the study's normaliser on the sponsor's reference CSV files ``paths``.

    Raises :class:`BadInputError` with one line naming the file, line and column for: no
    file, a file given twice, anything :func:`load_csv` refuses (malformed CSV, a bad cell,
    no rows), feature columns that differ between files, and a constant feature.
    """
    if not paths:
        raise BadInputError("no reference CSV file given")
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen:
            raise BadInputError(f"{path}: given twice (its rows would count double)")
        seen[key] = Path(path)
    datasets = [load_csv(Path(path), label_column=label_column) for path in paths]
    first, expected = Path(paths[0]), datasets[0].feature_names
    for path, dataset in zip(paths[1:], datasets[1:], strict=True):
        if dataset.feature_names != expected:
            raise BadInputError(_mismatch(Path(path), dataset.feature_names, first, expected))
    pooled = Dataset(
        features=np.concatenate([d.features for d in datasets]),
        labels=np.concatenate([d.labels for d in datasets]),
        feature_names=expected,
        source=", ".join(str(p) for p in paths),
    )
    std = pooled.features.astype(np.float64).std(axis=0)
    for name, value in zip(expected, std, strict=True):
        if not value > MIN_SCALE:
            where = str(first) if len(paths) == 1 else f"{len(paths)} files"
            raise BadInputError(
                f"{where}: column {name!r}: constant over all {len(pooled)} rows, so its "
                "scale cannot be estimated; drop the column from the study or add reference "
                "rows where it varies"
            )
    return ReferenceFit(
        normalizer=Normalizer.fit(pooled), rows=len(pooled), files=tuple(Path(p) for p in paths)
    )
