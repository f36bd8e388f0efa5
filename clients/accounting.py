"""How a data owner's DP-SGD rounds are recorded and counted, apart from the ledger.

What happened is kept apart from how it is counted (as in Google's dp_accounting):

* :class:`DpEvent` is a frozen record of one round of DP-SGD: a Poisson-subsampled
  Gaussian mechanism (``sample_rate``, ``noise_multiplier``) composed ``steps`` times;
* :class:`AccountingRecord` names what an independent accountant would otherwise have to
  guess: the mechanism, the sampling scheme, the neighbouring relation, the accountant and
  its error margin, and the noise generator (see docs/privacy.md, "Ledger records");
* :func:`compute_epsilon` counts a sequence of events with Opacus's PRV accountant
  (numerical composition of privacy loss random variables, Gopi et al. 2021), and
  :func:`calibrate_noise_multiplier` inverts it for a study's budget.

:mod:`cohort.clients.privacy` keeps the events in the owner's hash-chained ledger.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import TypeIs

from cohort.clients import memo_files, rdp_orders
from cohort.errors import BadInputError, ConfigError

ACCOUNTANT = "prv"
#: The one mechanism a :class:`DpEvent` describes: a Gaussian on a Poisson subsample.
MECHANISM = "subsampled_gaussian"
#: How batches are drawn: each example independently with probability ``sample_rate``.
SAMPLING = "poisson"
#: Neighbouring datasets differ by adding or removing one example (Opacus's accounting).
NEIGHBOURING_RELATION = "add_or_remove_one"
#: Error margin of Opacus's PRV accountant (``PRVAccountant.get_epsilon(eps_error=...)``):
#: the epsilon it returns is its estimate plus this, and the estimate is within this of the
#: true epsilon (Gopi et al. 2021), so a recorded epsilon lies in [true, true + 2 * this].
PRV_EPS_ERROR = 0.01
#: Where DP-SGD's noise and Poisson batches come from (:mod:`cohort.clients.noise`):
#: ChaCha20 keystreams from libsodium's ``randombytes_buf_deterministic``.
NOISE_GENERATOR = "chacha20-libsodium"
_EVENT_FIELDS = ("round", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta")


def _is_int(value: object) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeIs[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class AccountingRecord:
    """What a ledger entry says about how its :class:`DpEvent` happened and was counted.

    The event's numbers (noise multiplier, sample rate, steps, clipping norm, delta) do not
    say which mechanism they parametrise, under which neighbouring relation, nor how the
    recorded epsilon was computed; these fields do, so that an auditor's accountant
    (dp_accounting's PLD or RDP) needs to assume nothing. Only the values this code
    implements are accepted (:class:`BadInputError` naming the field otherwise).
    """

    mechanism: str = MECHANISM
    sampling: str = SAMPLING
    neighbouring_relation: str = NEIGHBOURING_RELATION
    accountant: str = ACCOUNTANT
    accountant_eps_error: float = PRV_EPS_ERROR
    noise_generator: str = NOISE_GENERATOR

    def __post_init__(self) -> None:
        for name, wanted in _RECORD_VALUES.items():
            value = getattr(self, name)
            if isinstance(wanted, float):
                ok = _is_number(value) and float(value) == wanted
            else:
                ok = value == wanted
            if not ok:
                raise BadInputError(
                    f"accounting record: field {name!r} must be {wanted!r} (the only one "
                    f"Cohort implements), got {value!r}"
                )

    def to_dict(self) -> dict[str, str | float]:
        return {name: getattr(self, name) for name in _RECORD_VALUES}

    @classmethod
    def from_entry(cls, item: Mapping[str, Any], *, where: str) -> AccountingRecord | None:
        """The record fields of a ledger entry; None when it has none of them (an entry
        written before they were recorded, whose values :data:`LEGACY_RECORD` gives)."""
        present = [name for name in _RECORD_VALUES if name in item]
        if not present:
            return None
        missing = [name for name in _RECORD_VALUES if name not in item]
        if missing:
            raise BadInputError(
                f"{where}: missing field {missing[0]!r} (an entry records all of "
                f"{', '.join(_RECORD_VALUES)} or, written before they existed, none)"
            )
        try:
            return cls(**{name: item[name] for name in _RECORD_VALUES})
        except BadInputError as exc:
            raise BadInputError(f"{where}: {exc}") from None


_RECORD_VALUES: dict[str, str | float] = {
    "mechanism": MECHANISM,
    "sampling": SAMPLING,
    "neighbouring_relation": NEIGHBOURING_RELATION,
    "accountant": ACCOUNTANT,
    "accountant_eps_error": PRV_EPS_ERROR,
    "noise_generator": NOISE_GENERATOR,
}

#: The record of an entry written before entries carried one: the ledger format
#: cohort-privacy-ledger/v2 was only ever written by code with exactly these (one mechanism,
#: Opacus's PRV at its default eps_error 0.01, ChaCha20 noise since the format began), so
#: they are read from the format, not guessed.
LEGACY_RECORD = AccountingRecord()


@dataclass(frozen=True)
class DpEvent:
    """One round of DP-SGD by one data owner (a Poisson-subsampled Gaussian, ``steps`` times).

    ``noise_multiplier`` is sigma / C (noise standard deviation over the clipping bound);
    ``sample_rate`` is the Poisson probability that an example joins a batch;
    ``max_grad_norm`` is the per-example L2 clipping bound C (it does not change epsilon);
    ``delta`` is the delta at which the owner's epsilon is stated.
    """

    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    delta: float

    def __post_init__(self) -> None:
        if not _is_int(self.round) or self.round < 0:
            raise BadInputError(f"DP event: round must be an integer >= 0, got {self.round!r}")
        if not _is_number(self.noise_multiplier) or not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise BadInputError(
                "DP event: noise_multiplier must be finite and > 0 (sigma / C), "
                f"got {self.noise_multiplier!r}"
            )
        if not _is_number(self.sample_rate) or not 0 < self.sample_rate <= 1:
            raise BadInputError(
                "DP event: sample_rate must be in (0, 1] (Poisson inclusion probability), "
                f"got {self.sample_rate!r}"
            )
        if not _is_int(self.steps) or self.steps < 1:
            raise BadInputError(f"DP event: steps must be an integer >= 1, got {self.steps!r}")
        if not _is_number(self.max_grad_norm) or not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise BadInputError(
                "DP event: max_grad_norm must be finite and > 0 (L2 clipping bound C), "
                f"got {self.max_grad_norm!r}"
            )
        if not _is_number(self.delta) or not 0 < self.delta < 1:
            raise BadInputError(f"DP event: delta must be in (0, 1), got {self.delta!r}")

    def to_dict(self) -> dict[str, int | float]:
        return {
            "round": self.round,
            "noise_multiplier": float(self.noise_multiplier),
            "sample_rate": float(self.sample_rate),
            "steps": self.steps,
            "max_grad_norm": float(self.max_grad_norm),
            "delta": float(self.delta),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "DP event") -> DpEvent:
        """Parse :meth:`to_dict` output; :class:`BadInputError` naming ``where`` and the field."""
        values: dict[str, Any] = {}
        for name in _EVENT_FIELDS:
            if name not in data:
                raise BadInputError(f"{where}: missing field {name!r}")
            value = data[name]
            if name in ("round", "steps"):
                if not _is_int(value):
                    raise BadInputError(f"{where}: field {name!r} must be an integer")
            elif not _is_number(value):
                raise BadInputError(f"{where}: field {name!r} must be a number")
            values[name] = value if name in ("round", "steps") else float(value)
        try:
            return cls(**values)
        except BadInputError as exc:
            raise BadInputError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- accounting


def _canonical_history(events: Iterable[DpEvent]) -> tuple[tuple[float, float, int], ...]:
    """Opacus accountant history: steps summed per (noise_multiplier, sample_rate), sorted.

    Composition is commutative, so grouping identical mechanisms changes nothing in
    theory and makes the numbers identical to a single-entry calibration in practice.
    """
    grouped: dict[tuple[float, float], int] = {}
    for event in events:
        key = (float(event.noise_multiplier), float(event.sample_rate))
        grouped[key] = grouped.get(key, 0) + event.steps
    return tuple(sorted((sigma, q, steps) for (sigma, q), steps in grouped.items()))


def accountant_history(events: Iterable[DpEvent]) -> tuple[tuple[float, float, int], ...]:
    """Accountant state restored from recorded events: ``(noise_multiplier, sample_rate,
    steps)`` per distinct mechanism, sorted; what the PRV accountant counts, and what an
    auditor composes with another accountant."""
    return _canonical_history(events)


# --------------------------------------------------------------------------- disk memo


def use_disk_memo(directory: Path | None) -> None:
    """Also keep calibrations, PRV epsilons and the per-step RDP vectors of
    :mod:`cohort.clients.rdp_orders` as files in ``directory`` (None: memory only).

    Set by a data owner's ClientApp to a folder of its own work directory. On Flower's
    Deployment Engine every message runs in a fresh ClientApp process, which would otherwise
    re-run the PRV calibration (seconds) every round and the PRV domain's RDP bound (most
    of a budget guard's time) every message. The values are pure functions of their
    arguments, each file records the arguments it answers, and whatever the files say, the
    ledger records the DP events themselves: ``cohort ledger`` and ``cohort audit`` recompute
    every epsilon from those, without this memo.
    """
    memo_files.use(directory)


def _memoised(name: str, compute: Callable[[], float], *args: object) -> float:
    key = json.dumps([name, *args])
    cached = memo_files.get(key)
    if isinstance(cached, int | float) and math.isfinite(cached):
        return float(cached)
    value = compute()
    memo_files.put(key, value)
    return value


@functools.lru_cache(maxsize=512)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if not history:
        return 0.0
    return _memoised("prv-epsilon", lambda: _prv_epsilon_uncached(history, delta), history, delta)


def _prv_epsilon_uncached(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    # Opacus is imported where it is used: it costs ~2 s, and a deployed ClientApp is a
    # fresh process per message (most of which never account).
    from opacus.accountants import PRVAccountant

    rdp_orders.install()  # the PRV domain's RDP bound, once per mechanism
    accountant = PRVAccountant()
    accountant.history = list(history)  # the state, restored from the recorded events
    with warnings.catch_warnings():
        # The PRV domain bound goes through RDP, which warns when its best order is the
        # largest one tried; the bound stays valid. At sample_rate 1 (full batches) the PRV
        # takes log(1 - q) = log(0) in a branch np.where then discards.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def compute_epsilon(events: Sequence[DpEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed, by Opacus's PRV accountant.

    The accountant returns an upper bound (estimate + its discretisation error,
    :data:`PRV_EPS_ERROR`).
    Results are memoised per distinct history; no events means epsilon 0.
    """
    if not 0 < delta < 1:
        raise BadInputError(f"delta must be in (0, 1), got {delta!r}")
    return _prv_epsilon(_canonical_history(events), float(delta))


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int
) -> float:
    """Smallest noise multiplier (to Opacus's 0.01 epsilon tolerance) so that ``steps``
    Poisson-subsampled Gaussian steps at ``sample_rate`` stay within ``target_epsilon``.

    Run by a data owner once per study (memoised): the study's whole run is
    ``total_rounds * local_epochs`` epochs of ``1 / sample_rate`` steps each.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(
            f"target_epsilon must be > 0 (per-owner study budget), got {target_epsilon}"
        )
    return _memoised(
        "calibrate",
        lambda: _calibrate(target_epsilon, delta, sample_rate, steps),
        target_epsilon,
        delta,
        sample_rate,
        steps,
    )


def _calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    rdp_orders.install()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=ACCOUNTANT,
            )
    except ValueError as exc:
        raise ConfigError(
            f"target_epsilon={target_epsilon} at delta={delta} cannot be met by any noise "
            f"multiplier for {steps} steps at sample rate {sample_rate:.4g}: {exc}"
        ) from None
    return float(sigma)
