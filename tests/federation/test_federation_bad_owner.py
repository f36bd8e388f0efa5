"""A data owner whose CSV is malformed is left out with the file, line and column named;
the study goes on with the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cohort.federation.config import SecureMode, StudyConfig
from cohort.federation.simulate import hospital_settings, run_study

pytestmark = pytest.mark.slow

BAD_CSV = Path(__file__).resolve().parents[1] / "data" / "clients_bad_non_numeric.csv"


def test_malformed_csv_owner_is_excluded_and_named(tmp_path: Path) -> None:
    config = StudyConfig(clients=3, rounds=1, secure=SecureMode.CKKS, seed=4)
    settings = hospital_settings(config, tmp_path)
    settings[2] = dataclasses.replace(settings[2], data=str(BAD_CSV))

    summary = run_study(config, tmp_path, settings=settings)

    errors = [e for e in summary["node_errors"] if e["message_type"] == "query.enroll"]
    assert len(errors) == 1
    assert errors[0]["reason"].startswith("BadInputError: ")
    assert f"{BAD_CSV}: line 4, column 'bmi'" in errors[0]["reason"]
    assert [c["id"] for c in summary["clients"]] == ["hospital-1", "hospital-2"]
    (only,) = summary["rounds"]
    assert only["clients_included"] == ["hospital-1", "hospital-2"]
    assert only["finalized"]
