"""Privacy accounting for one data owner: DP events, the PRV accountant, ledger and guard.

What happened is kept apart from how it is counted (as in Google's dp_accounting):

* :class:`DpEvent` is a frozen record of one round of DP-SGD: a Poisson-subsampled
  Gaussian mechanism (``sample_rate``, ``noise_multiplier``) composed ``steps`` times.
* :func:`compute_epsilon` counts a sequence of events with Opacus's PRV accountant
  (numerical composition of privacy loss random variables, Gopi et al. 2021).
* :class:`PrivacyLedger` is the data owner's durable, tamper-evident list of events, with a
  budget guard. It is run by the data owner; it is published to auditors, who re-verify
  the hash chain and recompute every epsilon from the events alone.

An event states everything the epsilon depends on; the ledger stores the epsilon only
as a convenience, and :meth:`PrivacyLedger.recheck` recomputes it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opacus.accountants import PRVAccountant
from opacus.accountants.utils import get_noise_multiplier
from typing_extensions import TypeIs

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import (
    BadInputError,
    BudgetExhausted,
    ConfigError,
    ProtocolAbort,
    VerificationError,
)
from cohort.files import write_atomic
from cohort.logs import fields, get_logger

log = get_logger(__name__)

LEDGER_FORMAT = "cohort-privacy-ledger/v1"
ACCOUNTANT = "prv"
_EVENT_FIELDS = ("round", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta")


def _is_int(value: object) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeIs[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


@functools.lru_cache(maxsize=512)
def _prv_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    if not history:
        return 0.0
    accountant = PRVAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():
        # The PRV domain bound goes through RDP, which warns when its best order is the
        # largest one tried; the bound stays valid. At sample_rate 1 (full batches) the PRV
        # takes log(1 - q) = log(0) in a branch np.where then discards.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(accountant.get_epsilon(delta=delta))


def compute_epsilon(events: Sequence[DpEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of all ``events`` composed, by Opacus's PRV accountant.

    The accountant returns an upper bound (estimate + its discretisation error, 0.01).
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


# --------------------------------------------------------------------------- ledger


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded event with the epsilon after it and its link in the hash chain."""

    event: DpEvent
    epsilon_after: float
    recorded_at: str
    prev_hash: bytes
    entry_hash: bytes

    def body(self) -> dict[str, Any]:
        """The hashed content (everything but the hashes)."""
        return {
            **self.event.to_dict(),
            "epsilon_after": self.epsilon_after,
            "recorded_at": self.recorded_at,
        }

    @staticmethod
    def link(prev_hash: bytes, body: Mapping[str, Any]) -> bytes:
        return tagged_hash(Tag.LEDGER, b"entry", prev_hash, _canonical_json(dict(body)))

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev": self.prev_hash.hex(), "hash": self.entry_hash.hex()}


def _genesis_hash(header: Mapping[str, Any]) -> bytes:
    return tagged_hash(Tag.LEDGER, b"genesis", _canonical_json(dict(header)))


class PrivacyLedger:
    """A data owner's privacy ledger: JSON file, atomic writes, tagged hash chain.

    Run by the data owner (hospital); published read-only to auditors. The file holds the
    owner, its epsilon cap and delta, and every recorded :class:`DpEvent` with the epsilon
    after it. Each entry's hash is ``tagged_hash(Tag.LEDGER, "entry", previous hash,
    canonical JSON of the entry)``, starting from a genesis hash over the header, and the
    file ends with the head hash. Editing, dropping or reordering entries breaks the chain;
    a rewrite of the whole chain is caught by comparing the head with a published copy.
    """

    def __init__(
        self,
        path: Path,
        *,
        owner: str,
        epsilon_cap: float,
        delta: float,
        entries: Sequence[LedgerEntry],
    ) -> None:
        self._path = Path(path)
        self._owner = owner
        self._cap = float(epsilon_cap)
        self._delta = float(delta)
        self._entries = list(entries)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path, *, owner: str, epsilon_cap: float, delta: float) -> PrivacyLedger:
        """Load the ledger at ``path``, or create an empty one there.

        An existing file must belong to ``owner`` with the same cap and delta
        (:class:`ConfigError` otherwise), be well formed (:class:`BadInputError` naming the
        path) and have an intact hash chain (:class:`VerificationError`).
        """
        if not isinstance(owner, str) or not owner:
            raise ConfigError("owner must be a non-empty party id")
        if not _is_number(epsilon_cap) or not (math.isfinite(epsilon_cap) and epsilon_cap > 0):
            raise ConfigError(
                f"epsilon_cap must be > 0 (owner's total epsilon budget), got {epsilon_cap!r}"
            )
        if not _is_number(delta) or not 0 < delta < 1:
            raise ConfigError(
                f"delta must be in (0, 1) (probability of privacy failure), got {delta!r}"
            )
        path = Path(path)
        if not path.exists():
            ledger = cls(path, owner=owner, epsilon_cap=epsilon_cap, delta=delta, entries=())
            ledger._save()
            log.info("privacy ledger created", extra=fields(owner=owner, path=str(path)))
            return ledger
        ledger = cls.load(path)
        for name, stored, wanted in (
            ("owner", ledger.owner, owner),
            ("epsilon_cap", ledger.epsilon_cap, float(epsilon_cap)),
            ("delta", ledger.delta, float(delta)),
        ):
            if stored != wanted:
                raise ConfigError(
                    f"{path}: ledger has {name}={stored!r} but {wanted!r} was requested; "
                    "a ledger's owner, cap and delta are fixed when it is created"
                )
        return ledger

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read and verify a ledger file as it stands (what an auditor runs)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BadInputError(f"{path}: cannot read ledger ({exc.strerror})") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadInputError(f"{path}: ledger is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise BadInputError(f"{path}: ledger must be a JSON object")
        if data.get("format") != LEDGER_FORMAT:
            raise BadInputError(f"{path}: field 'format' must be {LEDGER_FORMAT!r}")
        if data.get("accountant") != ACCOUNTANT:
            raise BadInputError(f"{path}: field 'accountant' must be {ACCOUNTANT!r}")
        owner = data.get("owner")
        cap = data.get("epsilon_cap")
        delta = data.get("delta")
        if not isinstance(owner, str) or not owner:
            raise BadInputError(f"{path}: field 'owner' must be a non-empty string")
        if not _is_number(cap) or not (math.isfinite(cap) and cap > 0):
            raise BadInputError(f"{path}: field 'epsilon_cap' must be a number > 0")
        if not _is_number(delta) or not 0 < delta < 1:
            raise BadInputError(f"{path}: field 'delta' must be a number in (0, 1)")
        header = cls._header(owner, float(cap), float(delta))
        genesis = _genesis_hash(header)
        for name in ("genesis", "head"):
            if not isinstance(data.get(name), str):
                raise BadInputError(f"{path}: field {name!r} must be a hex string")
        if data["genesis"] != genesis.hex():
            raise VerificationError(f"{path}: ledger header does not match its genesis hash")
        items = data.get("entries")
        if not isinstance(items, list):
            raise BadInputError(f"{path}: field 'entries' must be a list")
        entries: list[LedgerEntry] = []
        prev = genesis
        for number, item in enumerate(items, start=1):
            where = f"{path}: entry {number}"
            entry = cls._parse_entry(item, where=where)
            if entry.prev_hash != prev:
                raise VerificationError(f"{where}: does not link to the entry before it")
            if LedgerEntry.link(prev, entry.body()) != entry.entry_hash:
                raise VerificationError(f"{where}: content does not match its hash")
            if entry.event.delta != float(delta):
                raise VerificationError(f"{where}: delta differs from the ledger's delta")
            if entries and entry.event.round < entries[-1].event.round:
                raise VerificationError(f"{where}: round goes backwards")
            entries.append(entry)
            prev = entry.entry_hash
        if data["head"] != prev.hex():
            raise VerificationError(f"{path}: head hash does not match the last entry")
        return cls(path, owner=owner, epsilon_cap=float(cap), delta=float(delta), entries=entries)

    @staticmethod
    def _header(owner: str, cap: float, delta: float) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "accountant": ACCOUNTANT,
            "owner": owner,
            "epsilon_cap": cap,
            "delta": delta,
        }

    @staticmethod
    def _parse_entry(item: object, *, where: str) -> LedgerEntry:
        if not isinstance(item, dict):
            raise BadInputError(f"{where}: must be a JSON object")
        event = DpEvent.from_dict(item, where=where)
        eps = item.get("epsilon_after")
        if not _is_number(eps) or not (math.isfinite(eps) and eps >= 0):
            raise BadInputError(f"{where}: field 'epsilon_after' must be a number >= 0")
        recorded_at = item.get("recorded_at")
        if not isinstance(recorded_at, str):
            raise BadInputError(f"{where}: field 'recorded_at' must be a string")
        hashes: dict[str, bytes] = {}
        for name in ("prev", "hash"):
            value = item.get(name)
            try:
                hashes[name] = bytes.fromhex(value) if isinstance(value, str) else b""
            except ValueError:
                hashes[name] = b""
            if len(hashes[name]) != 32:
                raise BadInputError(f"{where}: field {name!r} must be 64 hex digits")
        return LedgerEntry(
            event=event,
            epsilon_after=float(eps),
            recorded_at=recorded_at,
            prev_hash=hashes["prev"],
            entry_hash=hashes["hash"],
        )

    def _save(self) -> None:
        header = self._header(self._owner, self._cap, self._delta)
        document = {
            **header,
            "genesis": _genesis_hash(header).hex(),
            "entries": [entry.to_dict() for entry in self._entries],
            "head": self.head.hex(),
        }
        write_atomic(self._path, json.dumps(document, indent=2, allow_nan=False).encode() + b"\n")

    # ------------------------------------------------------------------ queries

    @property
    def path(self) -> Path:
        return self._path

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def epsilon_cap(self) -> float:
        return self._cap

    @property
    def delta(self) -> float:
        return self._delta

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    @property
    def events(self) -> tuple[DpEvent, ...]:
        return tuple(entry.event for entry in self._entries)

    @property
    def head(self) -> bytes:
        """Hash of the last entry (the genesis hash when empty): what an auditor pins."""
        if self._entries:
            return self._entries[-1].entry_hash
        return _genesis_hash(self._header(self._owner, self._cap, self._delta))

    def epsilon(self) -> float:
        """Epsilon spent so far, recomputed from the recorded events (PRV accountant)."""
        return compute_epsilon(self.events, delta=self._delta)

    def _check_event(self, event: DpEvent) -> None:
        if not isinstance(event, DpEvent):
            raise BadInputError(f"expected a DpEvent, got {type(event).__name__}")
        if event.delta != self._delta:
            raise BadInputError(
                f"DP event delta={event.delta} differs from the ledger's delta={self._delta} "
                f"for {self._owner!r}"
            )
        if self._entries and event.round < self._entries[-1].event.round:
            raise BadInputError(
                f"DP event for round {event.round} comes after round "
                f"{self._entries[-1].event.round} in {self._owner!r}'s ledger"
            )

    def projected_epsilon(self, event: DpEvent) -> float:
        """Epsilon this owner would have spent after also running ``event``."""
        self._check_event(event)
        return compute_epsilon((*self.events, event), delta=self._delta)

    def _check_not_stale(self) -> None:
        """Refuse to act on a ledger another writer has changed since this one loaded it.

        One writer per ledger file is assumed; this catches a second, stale
        :class:`PrivacyLedger` object for the same file, which would otherwise overwrite
        (and so under-report) spending recorded in between.
        """
        on_disk = PrivacyLedger.load(self._path).head if self._path.exists() else None
        if on_disk != self.head:
            raise ProtocolAbort(
                f"{self._path}: ledger changed on disk since it was opened; reopen it"
            )

    def guard(self, event: DpEvent) -> None:
        """Run before training: raise :class:`BudgetExhausted` if ``event`` would take this
        owner past its cap. Names the owner, the cap and the projected epsilon."""
        self._check_not_stale()
        projected = self.projected_epsilon(event)
        if projected > self._cap:
            raise BudgetExhausted(
                f"privacy budget of {self._owner!r} would be exceeded in round {event.round}: "
                f"projected epsilon {projected:.4f} > cap {self._cap:g} at delta={self._delta:g} "
                f"(spent so far {self.epsilon():.4f})"
            )

    def record(self, event: DpEvent, *, epsilon: float) -> None:
        """Run after training, before the update is released: append ``event`` durably.

        ``epsilon`` is the caller's :meth:`projected_epsilon` for the event; it must agree
        with the accountant (:class:`BadInputError` otherwise). Spending is always recorded,
        even past the cap (the guard is what prevents that).
        """
        self._check_not_stale()
        expected = self.projected_epsilon(event)
        if not _is_number(epsilon) or not math.isclose(
            epsilon, expected, rel_tol=1e-9, abs_tol=1e-12
        ):
            raise BadInputError(
                f"recorded epsilon {epsilon!r} disagrees with the accountant's {expected:.6f}"
            )
        recorded_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        prev = self.head
        body = {**event.to_dict(), "epsilon_after": float(expected), "recorded_at": recorded_at}
        entry = LedgerEntry(
            event=event,
            epsilon_after=float(expected),
            recorded_at=recorded_at,
            prev_hash=prev,
            entry_hash=LedgerEntry.link(prev, body),
        )
        self._entries.append(entry)
        try:
            self._save()
        except BaseException:
            self._entries.pop()
            raise
        if expected > self._cap:
            log.warning(
                "privacy cap exceeded",
                extra=fields(owner=self._owner, epsilon=expected, cap=self._cap),
            )
        log.info(
            "privacy event recorded",
            extra=fields(owner=self._owner, round=event.round, epsilon=round(expected, 4)),
        )

    def recheck(self) -> None:
        """Auditor check: recompute every ``epsilon_after`` from the events before it.

        Raises :class:`VerificationError` naming the first entry whose stored epsilon
        differs from the PRV accountant's (beyond 1e-6 relative, to allow for
        floating-point differences between numpy builds).
        """
        for number in range(1, len(self._entries) + 1):
            stored = self._entries[number - 1].epsilon_after
            actual = compute_epsilon(self.events[:number], delta=self._delta)
            if not math.isclose(stored, actual, rel_tol=1e-6, abs_tol=1e-9):
                raise VerificationError(
                    f"{self._path}: entry {number}: stored epsilon {stored:.6f} but the "
                    f"events give {actual:.6f}"
                )
