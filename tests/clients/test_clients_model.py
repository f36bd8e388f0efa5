"""Model specs, Opacus validation, flat parameter vectors and evaluation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from cohort.clients.data import Dataset
from cohort.clients.model import (
    DEFAULT_HIDDEN,
    build_model,
    evaluate,
    get_flat,
    is_builtin_spec,
    num_parameters,
    set_flat,
)
from cohort.errors import BadInputError

FACTORIES = """
from torch import nn

def with_batchnorm(in_features, num_classes):
    return nn.Sequential(nn.Linear(in_features, 8), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, num_classes))

def frozen_eval(in_features, num_classes):
    return nn.Sequential(nn.Linear(in_features, num_classes)).eval()

def wrong_width(in_features, num_classes):
    return nn.Linear(in_features, num_classes + 1)

def not_a_module(in_features, num_classes):
    return 42

def no_arguments():
    return nn.Linear(1, 1)
"""


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cohort_test_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "cohort_test_factories"


def test_default_mlp_shape() -> None:
    model = build_model("mlp", in_features=30, num_classes=2)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [*DEFAULT_HIDDEN, 2]
    assert model(torch.zeros(3, 30)).shape == (3, 2)


def test_hidden_sizes_and_logreg() -> None:
    model = build_model("mlp:64,32", in_features=10, num_classes=3)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [64, 32, 3]
    logreg = build_model("logreg", in_features=10, num_classes=2)
    assert num_parameters(logreg) == 10 * 2 + 2


def test_initialisation_is_deterministic_under_manual_seed() -> None:
    torch.manual_seed(5)
    a = get_flat(build_model("mlp", in_features=30, num_classes=2))
    torch.manual_seed(5)
    b = get_flat(build_model("mlp", in_features=30, num_classes=2))
    torch.manual_seed(6)
    c = get_flat(build_model("mlp", in_features=30, num_classes=2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("cnn", "unknown model 'cnn'"),
        ("mlp:", "hidden sizes must be positive integers"),
        ("mlp:64,0", "hidden sizes must be positive integers"),
        ("mlp:a", "hidden sizes must be positive integers"),
        # A module path is never imported from the spec itself: only registered names are.
        ("os:ftruncate", "unknown model 'os:ftruncate'"),
        ("torch.nn:Linear", "unknown model 'torch.nn:Linear'"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        build_model(spec, in_features=4, num_classes=2)


def test_registered_names_only(factories: str) -> None:
    registry = {
        "linear": "torch.nn:Linear",
        "not-a-module": f"{factories}:not_a_module",
        "no-arguments": f"{factories}:no_arguments",
        "wrong-width": f"{factories}:wrong_width",
        "missing": "no_such_module_xyz:make",
        "no-callable": "torch.nn:NoSuchThing",
    }
    model = build_model("linear", in_features=4, num_classes=2, registry=registry)
    assert isinstance(model, nn.Linear)
    cases = [
        ("not-a-module", "returned int, not a torch Module"),
        ("no-arguments", r"must accept \(in_features, num_classes\)"),
        ("wrong-width", r"shape \(2, 3\), expected \(2, 2\)"),
        ("missing", "cannot import 'no_such_module_xyz'"),
        ("no-callable", "no callable 'NoSuchThing'"),
    ]
    for name, match in cases:
        with pytest.raises(BadInputError, match=match):
            build_model(name, in_features=4, num_classes=2, registry=registry)
    assert is_builtin_spec("mlp:8,4")
    assert is_builtin_spec("logreg")
    assert not is_builtin_spec("linear")
    assert not is_builtin_spec("os:ftruncate")


def test_batchnorm_is_fixed_for_opacus(factories: str) -> None:
    registry = {"bn": f"{factories}:with_batchnorm"}
    model = build_model("bn", in_features=4, num_classes=2, registry=registry)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


def test_unfixable_model_is_rejected(factories: str) -> None:
    with pytest.raises(BadInputError, match=r"not trainable with DP-SGD: .*training mode"):
        build_model(
            "frozen", in_features=4, num_classes=2, registry={"frozen": f"{factories}:frozen_eval"}
        )


@settings(max_examples=40, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 12), min_size=0, max_size=3),
    in_features=st.integers(1, 9),
    num_classes=st.integers(2, 4),
    data=st.data(),
)
def test_flat_round_trip(
    hidden: list[int], in_features: int, num_classes: int, data: st.DataObject
) -> None:
    spec = "logreg" if not hidden else "mlp:" + ",".join(map(str, hidden))
    model = build_model(spec, in_features=in_features, num_classes=num_classes)
    n = num_parameters(model)
    vector = data.draw(
        arrays(np.float32, n, elements=st.floats(-1e6, 1e6, allow_nan=False, width=32))
    )
    set_flat(model, vector)
    assert np.array_equal(get_flat(model), vector)
    assert get_flat(model).dtype == np.float32


@settings(max_examples=20, deadline=None)
@given(extra=st.integers(-5, 5).filter(lambda k: k != 0))
def test_set_flat_wrong_length_names_both(extra: int) -> None:
    model = build_model("mlp:3", in_features=2, num_classes=2)
    before = get_flat(model)
    expected = num_parameters(model)
    with pytest.raises(BadInputError, match=f"expected {expected}, got {expected + extra}"):
        set_flat(model, np.zeros(expected + extra, dtype=np.float32))
    assert np.array_equal(get_flat(model), before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_set_flat_rejects_non_finite_and_leaves_model(bad: float) -> None:
    model = build_model("mlp:3", in_features=2, num_classes=2)
    before = get_flat(model)
    vector = np.zeros(num_parameters(model), dtype=np.float32)
    vector[3] = bad
    with pytest.raises(BadInputError, match="NaN or infinite"):
        set_flat(model, vector)
    assert np.array_equal(get_flat(model), before)
    with pytest.raises(BadInputError, match="1-D"):
        set_flat(model, np.zeros((1, num_parameters(model)), dtype=np.float32))


def test_evaluate_accuracy_and_loss() -> None:
    model = build_model("logreg", in_features=1, num_classes=2)
    # logits = [0, x]: predicts class 1 when x > 0
    set_flat(model, np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32))
    ds = Dataset(
        features=np.array([[2.0], [-1.0], [3.0], [-4.0]], dtype=np.float32),
        labels=np.array([1, 0, 0, 0], dtype=np.int64),
        feature_names=("x",),
        source="t",
    )
    accuracy, loss = evaluate(model, ds)
    assert accuracy == 0.75
    logits = torch.tensor([[0.0, 2.0], [0.0, -1.0], [0.0, 3.0], [0.0, -4.0]])
    expected = float(nn.functional.cross_entropy(logits, torch.from_numpy(ds.labels)))
    assert loss == pytest.approx(expected, rel=1e-6)
    assert model.training  # evaluate restores the mode
