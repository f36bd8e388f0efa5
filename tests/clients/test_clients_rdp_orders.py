"""Opacus's per-step RDP kept once per mechanism (clients/rdp_orders.py): the epsilons are
bit for bit Opacus's own, in memory and read back from the owner's folder."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.clients import accounting, rdp_orders


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    rdp_orders.install()
    rdp_orders.forget()
    accounting._prv_epsilon.cache_clear()
    yield
    accounting.use_disk_memo(None)
    rdp_orders.forget()
    accounting._prv_epsilon.cache_clear()


def _opacus() -> Any:
    from opacus.accountants.analysis import rdp as analysis

    return analysis


def _alphas() -> list[float]:
    from opacus.accountants import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


@settings(max_examples=40, deadline=None)
@given(
    q=st.floats(min_value=1e-3, max_value=1.0),
    sigma=st.floats(min_value=0.3, max_value=20.0),
    steps=st.integers(min_value=1, max_value=5000),
)
def test_the_kept_vector_times_steps_is_opacus_bit_for_bit(
    q: float, sigma: float, steps: int
) -> None:
    analysis = _opacus()
    original = analysis.compute_rdp.__wrapped__
    orders = _alphas()
    want = original(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    for _ in range(2):  # computed, then kept
        got = analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
        assert got.tobytes() == np.asarray(want).tobytes()
    one = analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=2.5)
    assert one == original(q=q, noise_multiplier=sigma, steps=steps, orders=2.5)


@pytest.mark.parametrize(
    "history",
    [
        ((1.376953125, 0.125, 8),),
        ((1.376953125, 0.125, 40),),
        ((1.52587890625, 1 / 6, 18),),
        ((1.1, 0.05, 60), (4.189453125, 1.0, 3)),
    ],
)
def test_a_prv_epsilon_is_what_opacus_alone_gives(
    history: tuple[tuple[float, float, int], ...],
) -> None:
    analysis = _opacus()
    kept = accounting._prv_epsilon_uncached(history, 1e-5)
    again = accounting._prv_epsilon_uncached(history, 1e-5)  # from the kept vectors
    wrapped = analysis.compute_rdp
    analysis.compute_rdp = wrapped.__wrapped__
    try:
        alone = accounting._prv_epsilon_uncached(history, 1e-5)
    finally:
        analysis.compute_rdp = wrapped
    assert kept == again == alone


def test_the_folder_answers_later_and_a_bad_file_is_computed_again(tmp_path: Path) -> None:
    orders = _alphas()[:20]
    calls: list[float] = []

    def compute(q: float, sigma: float, alpha: float) -> float:
        calls.append(alpha)
        return float(_opacus()._compute_rdp(q, sigma, alpha))

    accounting.use_disk_memo(tmp_path)
    first = rdp_orders.per_step(0.125, 1.4, orders, compute)
    assert len(calls) == 20
    (path,) = tmp_path.iterdir()
    rdp_orders.forget()
    assert rdp_orders.per_step(0.125, 1.4, orders, compute).tobytes() == first.tobytes()
    assert len(calls) == 20  # read back, not computed
    record = json.loads(path.read_text())
    bad = [
        "not json",
        json.dumps({**record, "key": record["key"].replace("1.4", "9.9")}),  # another question
        json.dumps({**record, "value": record["value"][:-1]}),  # wrong length
        json.dumps({**record, "value": [-1.0] * 20}),  # RDP is never negative
        json.dumps({**record, "value": ["0.1"] * 20}),
    ]
    for text in bad:
        path.write_text(text)
        rdp_orders.forget()
        calls.clear()
        assert rdp_orders.per_step(0.125, 1.4, orders, compute).tobytes() == first.tobytes()
        assert len(calls) == 20, text


def test_a_kept_vector_is_read_only() -> None:
    vector = rdp_orders.per_step(0.5, 2.0, [1.5, 2.0], lambda q, s, a: a / (2 * s * s))
    with pytest.raises(ValueError, match="read-only"):
        vector[0] = 0.0


def test_a_fresh_process_reads_the_owners_folder_and_gets_the_same_epsilon(tmp_path: Path) -> None:
    """A deployed ClientApp is a fresh process per message: with the owner's memo folder,
    the next message's guard does not compute the RDP orders again."""
    history = ((1.376953125, 0.125, 16),)
    accounting.use_disk_memo(tmp_path)
    want = accounting._prv_epsilon_uncached(history, 1e-5)
    assert any(p.name.startswith("rdp-") for p in tmp_path.iterdir())
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from opacus.accountants.analysis import rdp\n"
        "def refuse(*a): raise AssertionError('RDP order computed again')\n"
        "rdp._compute_rdp = refuse\n"
        "from cohort.clients import accounting\n"
        "accounting.use_disk_memo(Path(sys.argv[1]))\n"
        "print(repr(accounting._prv_epsilon_uncached(((1.376953125, 0.125, 40),), 1e-5)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    wanted_40 = accounting._prv_epsilon_uncached(((1.376953125, 0.125, 40),), 1e-5)
    assert float(out.stdout.strip()) == wanted_40
    assert want < wanted_40


def test_an_opacus_without_the_expected_function_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analysis = _opacus()
    monkeypatch.setattr(rdp_orders, "_installed", False)
    monkeypatch.setattr(analysis, "compute_rdp", lambda q, sigma: 0.0)
    with pytest.raises(RuntimeError, match="compute_rdp"):
        rdp_orders.install()
