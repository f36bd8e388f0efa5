"""Study configuration is validated when it is built, naming the parameter and its unit."""

from __future__ import annotations

import pytest

from cohort.errors import BadInputError, ConfigError
from cohort.federation.config import DpSettings, SecureMode, StudyConfig


def test_defaults_match_the_issue() -> None:
    cfg = StudyConfig()
    assert (cfg.clients, cfg.rounds, cfg.committee, cfg.quorum) == (5, 5, 3, 2)
    assert cfg.secure is SecureMode.CKKS
    assert cfg.dp.epsilon == 3.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"clients": 1}, "clients must be in 2..1024"),
        ({"clients": 1025}, "pays at most 1024 data owners"),
        ({"rounds": 0}, "rounds must be >= 1"),
        ({"committee": 3, "quorum": 1}, "quorum must be a strict majority"),
        ({"committee": 3, "quorum": 4}, "quorum must be a strict majority"),
        ({"min_clients": 1}, "min_clients must be in 2..clients"),
        ({"server_lr": 0.0}, "server_lr must be > 0"),
    ],
)
def test_bad_study_values_name_the_parameter(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        StudyConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"epsilon": 0.0}, r"epsilon must be > 0 \(per-hospital"),
        ({"delta": 1.0}, "delta must be in"),
        ({"max_grad_norm": -1.0}, r"L2 clipping bound C"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_dp_values_name_the_parameter_and_unit(kwargs: dict[str, float], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DpSettings(**kwargs)  # type: ignore[arg-type]


def test_unknown_secure_mode_lists_choices() -> None:
    with pytest.raises(ConfigError, match="ckks, none"):
        SecureMode.parse("paillier")


def test_config_round_trips_and_study_id_is_stable() -> None:
    cfg = StudyConfig(clients=4, seed=9, secure=SecureMode.NONE)
    again = StudyConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.study_id == cfg.study_id
    assert StudyConfig(clients=4, seed=10).study_id != cfg.study_id


def test_config_errors_are_bad_input() -> None:
    with pytest.raises(BadInputError, match="study config"):
        StudyConfig.from_dict({"clients": 3, "colour": "blue"})


def test_the_client_limit_is_the_contracts() -> None:
    """StudyConfig refuses what the study contract would refuse at deployment."""
    import re
    from pathlib import Path

    from cohort.federation.config import MAX_DATA_OWNERS

    source = Path(__file__).resolve().parents[2] / "bounties/contracts/CohortStudy.sol"
    found = re.search(r"MAX_DATA_OWNERS = (\d+);", source.read_text(encoding="utf-8"))
    assert found is not None
    assert int(found.group(1)) == MAX_DATA_OWNERS
