"""DP-SGD rounds: guard before, record after, determinism, a clean model afterwards."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cohort.clients.data import Dataset, demo_split
from cohort.clients.model import build_model, get_flat
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import DpConfig, derive_noise_seed, train_dp
from cohort.errors import BadInputError, BudgetExhausted, ConfigError

# Study defaults (epsilon 3 over 5 rounds of 1 epoch) with small batches: 7 steps per epoch
# on the test hospital keeps the sample rate low, where Opacus's PRV accounting is quick.
CONFIG = DpConfig(batch_size=4)


@cache
def small_hospital() -> Dataset:
    """The smallest demo hospital (27 examples)."""
    hospitals, _ = demo_split(num_hospitals=5, seed=0)
    return min(hospitals, key=len)


def fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", in_features=30, num_classes=2)


def ledger(tmp_path: Path, name: str = "l", cap: float = 3.0) -> PrivacyLedger:
    return PrivacyLedger.open(
        tmp_path / f"{name}.json", owner="hospital-a", epsilon_cap=cap, delta=CONFIG.delta
    )


def _opacus_leftovers(model: nn.Module) -> list[str]:
    found = []
    for name, module in model.named_modules():
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            found.append(f"hooks on {name or 'root'}")
    for name, param in model.named_parameters():
        for attr in ("grad_sample", "_forward_counter", "summed_grad"):
            if hasattr(param, attr):
                found.append(f"{name}.{attr}")
    return found


def test_round_trains_records_and_returns_a_plain_module(tmp_path: Path) -> None:
    data = small_hospital()
    model = fresh_model()
    keys = list(model.state_dict())
    before = get_flat(model)
    book = ledger(tmp_path)
    result = train_dp(model, data, config=CONFIG, ledger=book, round=1, noise_seed=3)

    assert type(model).__name__ == "MLP"
    assert list(model.state_dict()) == keys
    assert _opacus_leftovers(model) == []
    assert not np.array_equal(get_flat(model), before)
    assert np.isfinite(get_flat(model)).all()

    assert result.examples == len(data)
    assert result.event == CONFIG.event(len(data), round=1)
    assert result.event.steps == CONFIG.steps_per_epoch(len(data))
    assert book.events == (result.event,)
    assert result.epsilon == book.epsilon()
    assert 0 < result.epsilon < CONFIG.target_epsilon
    assert np.isfinite(result.loss)
    reopened = PrivacyLedger.open(
        book.path, owner="hospital-a", epsilon_cap=3.0, delta=CONFIG.delta
    )
    assert reopened.events == (result.event,)


def test_fixed_seeds_make_training_deterministic(tmp_path: Path) -> None:
    data = small_hospital()
    runs = []
    for name, seed in (("a", 9), ("b", 9), ("c", 10)):
        model = fresh_model()
        train_dp(
            model, data, config=CONFIG, ledger=ledger(tmp_path, name), round=1, noise_seed=seed
        )
        runs.append(get_flat(model))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_unseeded_noise_comes_from_the_os(tmp_path: Path) -> None:
    data = small_hospital()
    flats = []
    for name in ("a", "b"):
        model = fresh_model()
        train_dp(
            model, data, config=CONFIG, ledger=ledger(tmp_path, name), round=1, noise_seed=None
        )
        flats.append(get_flat(model))
    assert not np.array_equal(flats[0], flats[1])


def test_guard_declines_before_training(tmp_path: Path) -> None:
    data = small_hospital()
    model = fresh_model()
    before = get_flat(model)
    book = ledger(tmp_path, cap=0.5)
    on_disk = book.path.read_bytes()
    with pytest.raises(BudgetExhausted, match=r"'hospital-a'.*projected epsilon .* > cap 0.5"):
        train_dp(model, data, config=CONFIG, ledger=book, round=1, noise_seed=1)
    assert np.array_equal(get_flat(model), before)
    assert book.events == ()
    assert book.path.read_bytes() == on_disk


def test_whole_study_spends_the_budget_then_declines(tmp_path: Path) -> None:
    data = small_hospital()
    model = fresh_model()
    book = ledger(tmp_path, cap=CONFIG.target_epsilon)
    spent = []
    for rnd in range(1, CONFIG.total_rounds + 1):
        spent.append(
            train_dp(model, data, config=CONFIG, ledger=book, round=rnd, noise_seed=rnd).epsilon
        )
    assert spent == sorted(spent)
    assert CONFIG.target_epsilon - 0.05 <= spent[-1] <= CONFIG.target_epsilon
    after = get_flat(model)
    with pytest.raises(BudgetExhausted):
        train_dp(model, data, config=CONFIG, ledger=book, round=6, noise_seed=6)
    assert np.array_equal(get_flat(model), after)
    assert len(book.events) == CONFIG.total_rounds


def test_empty_poisson_batches_are_noise_only_steps(tmp_path: Path) -> None:
    data = small_hospital()
    config = DpConfig(batch_size=1, total_rounds=1, lr=0.05)
    model = fresh_model()
    result = train_dp(model, data, config=config, ledger=ledger(tmp_path), round=1, noise_seed=4)
    assert result.empty_batches > 0
    assert result.event.steps == len(data)  # every step, empty or not, is accounted
    assert np.isfinite(get_flat(model)).all()


def test_labels_beyond_model_classes(tmp_path: Path) -> None:
    data = small_hospital()
    bad = Dataset(data.features, np.full(len(data), 2, dtype=np.int64), data.feature_names, "x")
    with pytest.raises(BadInputError, match="labels go beyond"):
        train_dp(fresh_model(), bad, config=CONFIG, ledger=ledger(tmp_path), round=1, noise_seed=0)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("target_epsilon", 0.0, r"target_epsilon must be > 0 \(per-owner epsilon budget"),
        ("total_rounds", 0, r"total_rounds must be an integer >= 1 \(rounds\)"),
        ("local_epochs", 1.5, r"local_epochs must be an integer >= 1"),
        ("batch_size", 0, r"batch_size must be an integer >= 1 \(expected examples"),
        ("max_grad_norm", 0.0, r"max_grad_norm must be > 0 \(L2 clipping bound C\)"),
        ("delta", 0.0, r"delta must be in \(0, 1\)"),
        ("lr", float("nan"), r"lr must be > 0 \(local SGD step size\)"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ],
)
def test_config_is_validated_when_built(field: str, value: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DpConfig(**{field: value})


def test_config_dict_round_trip() -> None:
    assert DpConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ConfigError, match="unknown field"):
        DpConfig.from_dict({"epsilon": 3.0})


def test_noise_seed_is_domain_separated() -> None:
    base = derive_noise_seed(1, "hospital-a", 1, b"noise")
    assert base == derive_noise_seed(1, "hospital-a", 1, b"noise")
    others = {
        derive_noise_seed(2, "hospital-a", 1, b"noise"),
        derive_noise_seed(1, "hospital-b", 1, b"noise"),
        derive_noise_seed(1, "hospital-a", 2, b"noise"),
        derive_noise_seed(1, "hospital-a", 1, b"sampling"),
    }
    assert base not in others
    assert len(others) == 4
    assert 0 <= base < 2**64
