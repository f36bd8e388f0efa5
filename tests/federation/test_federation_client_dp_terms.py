"""The optional client-level DP term: its manifest encoding, study.toml, config and CLI.

The checked-in vectors (tests/vectors/manifest_vectors.json) pin a manifest without the
term byte for byte as before it existed, and one with it; these tests cover the rest.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.errors import ConfigError
from cohort.federation.cli import app
from cohort.federation.config import StudyConfig
from cohort.federation.deploy_config import StudyFile
from cohort.federation.manifest import ClientDpTerms, Manifest

VECTORS = Path(__file__).parents[1] / "vectors"


def _base() -> Manifest:
    spec = importlib.util.spec_from_file_location(
        "gen_manifest_vectors", VECTORS / "gen_manifest_vectors.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    manifest: Manifest = module.base_manifest()[0]
    return manifest


def test_absent_term_is_left_out_and_present_term_round_trips() -> None:
    base = _base()
    assert "client_dp" not in base.to_dict()
    assert b"client_dp" not in base.canonical()
    with_term = dataclasses.replace(
        base, client_dp=ClientDpTerms(clip_norm=0.5, noise_multiplier=1.2)
    )
    assert with_term.to_dict()["client_dp"] == {"clip_norm": 0.5, "noise_multiplier": 1.2}
    assert Manifest.from_dict(with_term.to_dict()) == with_term
    assert with_term.study_id != base.study_id
    assert with_term.client_dp is not None
    assert with_term.client_dp.per_client_std(4) == pytest.approx(0.3)


def test_terms_name_the_parameter_and_unit() -> None:
    with pytest.raises(ConfigError, match=r"client_dp\.clip_norm \(L2 bound C"):
        ClientDpTerms(clip_norm=-1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match=r"client_dp\.noise_multiplier"):
        ClientDpTerms(clip_norm=1.0, noise_multiplier=float("inf"))


def test_study_config_without_the_term_is_unchanged() -> None:
    plain = StudyConfig()
    assert "client_dp" not in plain.to_dict()
    terms = ClientDpTerms(clip_norm=0.5, noise_multiplier=1.0)
    config = StudyConfig(client_dp=terms)
    assert config.to_dict()["client_dp"] == {"clip_norm": 0.5, "noise_multiplier": 1.0}
    assert StudyConfig.from_dict(config.to_dict()) == config
    assert StudyConfig.from_dict(plain.to_dict()) == plain


STUDY = """\
[study]
name = "s"
rounds = 2
quorum = 2

[study.client-dp]
clip-norm = 0.25
noise-multiplier = 1.5

[sponsor]
keys = "keys"
out = "out"

[data]
test = "test.csv"
normalizer = "normalizer.json"

[committee]
ca = "ca.pem"
members = ["m1.json"]

[owners]
entries = ["h1.json", "h2.json"]

[chain]
url = "http://127.0.0.1:8545"

[superlink]
address = "127.0.0.1:9092"
root-certificates = "ca.pem"
"""


def test_study_toml_client_dp_table(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(STUDY, encoding="utf-8")
    assert StudyFile.load(path).terms.client_dp == {"clip_norm": 0.25, "noise_multiplier": 1.5}
    path.write_text(STUDY.replace("noise-multiplier", "noise"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[study.client-dp\] noise"):
        StudyFile.load(path)
    path.write_text(STUDY.split("[study.client-dp]")[0] + "[sponsor]" + STUDY.split("[sponsor]")[1])
    assert StudyFile.load(path).terms.client_dp is None


def test_simulate_refuses_a_bad_client_dp_noise(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--out", str(tmp_path / "o"), "--client-dp-noise", "0"]
    )
    assert result.exit_code == 2
    assert "client_dp.noise_multiplier" in result.output
