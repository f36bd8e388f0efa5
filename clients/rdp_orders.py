"""Opacus's per-step RDP of a subsampled Gaussian, computed once per mechanism.

Run by a data owner wherever it counts epsilon (the budget guard before each round, the
noise calibration once per study) and by ``cohort ledger`` / ``cohort audit``. Opacus's PRV
accountant sizes its discretisation domain with an RDP bound (Gopi et al. 2021, remark 5.6;
``compute_safe_domain_size``): twice per epsilon, it computes the RDP of every mechanism in
the history at about 150 orders, and for a sample rate below 1 each fractional order is a
series (``_compute_log_a_for_frac_alpha``). That is three quarters of a guard's 0.3 s here,
and it is the same every round: RDP composes linearly, so Opacus returns the per-step vector
times ``steps``, and only ``steps`` changes from round to round.

:func:`install` makes Opacus's ``compute_rdp`` keep the per-step vector of each
(sample rate, noise multiplier, orders) it has seen and return ``vector * steps``, as Opacus
itself computes it: the same floating-point operations on the same values, so every epsilon
is bit for bit what Opacus alone gives (the tests compare them). With a folder
(:func:`cohort.clients.accounting.use_disk_memo`) the vectors are also kept there, one file
per mechanism naming the key it answers, so that a deployed owner's fresh ClientApp process
per message does not compute them again. The files are a cache: one that does not parse, or
answers another key, is ignored and recomputed, and ``cohort audit`` recomputes every epsilon
from the ledger's events regardless.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cohort.clients import memo_files

#: Per-step RDP vectors kept in memory (one per mechanism and order list).
_MAX_KEPT = 256

_lock = threading.Lock()
_kept: dict[tuple[float, float, tuple[float, ...]], np.ndarray] = {}
#: File names of the vectors in the memo folder start with this.
_PREFIX = "rdp-"
_installed = False


def per_step(
    q: float, sigma: float, orders: Sequence[float], compute: Callable[..., Any]
) -> np.ndarray:
    """The per-step RDP vector of the subsampled Gaussian (``q``, ``sigma``) at ``orders``:
    ``np.array([compute(q, sigma, a) for a in orders])``, from memory, the folder or
    computed (then kept). Read-only."""
    key = (float(q), float(sigma), tuple(float(a) for a in orders))
    with _lock:
        vector = _kept.get(key)
    if vector is not None:
        return vector
    vector = _read(key)
    if vector is None:
        vector = np.array([compute(q, sigma, order) for order in orders])
        _write(key, vector)
    vector.setflags(write=False)
    with _lock:
        if len(_kept) >= _MAX_KEPT:
            _kept.pop(next(iter(_kept)))
        _kept[key] = vector
    return vector


def _key_text(key: tuple[float, float, tuple[float, ...]]) -> str:
    return json.dumps(["rdp-per-step", key[0], key[1], list(key[2])])


def _read(key: tuple[float, float, tuple[float, ...]]) -> np.ndarray | None:
    values = memo_files.get(_key_text(key), prefix=_PREFIX)
    if (
        not isinstance(values, list)
        or len(values) != len(key[2])
        or not all(isinstance(v, float) and not math.isnan(v) and v >= 0 for v in values)
    ):
        return None
    return np.array(values, dtype=np.float64)


def _write(key: tuple[float, float, tuple[float, ...]], vector: np.ndarray) -> None:
    memo_files.put(_key_text(key), [float(v) for v in vector], prefix=_PREFIX)


def install() -> None:
    """Route Opacus's ``compute_rdp`` (order lists) through :func:`per_step`; idempotent.

    RuntimeError if the installed Opacus no longer has ``compute_rdp`` and ``_compute_rdp``
    in ``opacus.accountants.analysis.rdp`` with the keyword parameters this relies on.
    """
    global _installed
    if _installed:
        return
    from opacus.accountants.analysis import rdp as analysis

    original: Callable[..., Any] | None = getattr(analysis, "compute_rdp", None)
    single: Callable[..., Any] | None = getattr(analysis, "_compute_rdp", None)
    code = getattr(original, "__code__", None)
    expected = ("q", "noise_multiplier", "steps", "orders")
    if (
        original is None
        or single is None
        or code is None
        or tuple(code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount])
        != expected
    ):
        raise RuntimeError(
            "this Opacus's accountants.analysis.rdp lacks compute_rdp(*, q, noise_multiplier, "
            "steps, orders) or _compute_rdp (Opacus 1.6 expected)"
        )

    def compute_rdp(
        *, q: float, noise_multiplier: float, steps: int, orders: Sequence[float] | float
    ) -> Any:
        if isinstance(orders, float):
            return original(q=q, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
        return per_step(q, noise_multiplier, orders, single) * steps

    compute_rdp.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(analysis, "compute_rdp", compute_rdp)  # noqa: B010 (a module global)
    _installed = True


def forget() -> None:
    """Drop the vectors kept in memory (tests; the folder's files stay)."""
    with _lock:
        _kept.clear()


__all__ = ["forget", "install", "per_step"]
