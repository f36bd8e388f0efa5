"""A data owner's privacy ledger and budget guard, over the DP events of
:mod:`cohort.clients.accounting` (re-exported here).

* :class:`PrivacyLedger` is the data owner's durable, tamper-evident list of events for one
  dataset, across every study it takes part in, with a budget guard and a replay guard
  (one entry per study and round). It is run by the data owner; it is published to
  auditors, whose :meth:`PrivacyLedger.verify` re-checks the hash chain and recomputes
  every epsilon from the events alone.

An event states everything the epsilon depends on; the ledger stores the epsilon only
as a convenience, and :meth:`PrivacyLedger.verify` recomputes it. Each entry also names, in
an :class:`AccountingRecord`, what an independent accountant would otherwise have to guess:
the mechanism, the sampling scheme, the neighbouring relation, the accountant and its error
margin, and the noise generator (see docs/privacy.md, "Ledger records").
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typing_extensions import TypeIs

from cohort.clients.accounting import (
    ACCOUNTANT,
    LEGACY_RECORD,
    MECHANISM,
    NEIGHBOURING_RELATION,
    NOISE_GENERATOR,
    PRV_EPS_ERROR,
    SAMPLING,
    AccountingRecord,
    DpEvent,
    accountant_history,
    calibrate_noise_multiplier,
    compute_epsilon,
)
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

LEDGER_FORMAT = "cohort-privacy-ledger/v2"

__all__ = [
    "ACCOUNTANT",
    "LEDGER_FORMAT",
    "LEGACY_RECORD",
    "MECHANISM",
    "NEIGHBOURING_RELATION",
    "NOISE_GENERATOR",
    "PRV_EPS_ERROR",
    "SAMPLING",
    "AccountingRecord",
    "DpEvent",
    "LedgerEntry",
    "LedgerReport",
    "PrivacyLedger",
    "RoundReplayed",
    "accountant_history",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "read_entries",
]


def _is_number(value: object) -> TypeIs[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------- ledger

#: What a seeded entry says about itself (stored in the entry, so it travels with audits).
SEEDED_WARNING = (
    "seeded DP noise: reproducible by anyone who knows the seed, so unfit for real patient data"
)
#: Tolerance when an auditor compares a recorded epsilon with the recomputed one (relative,
#: with an absolute floor), to allow for floating-point differences between numpy builds.
EPSILON_RTOL = 1e-6
EPSILON_ATOL = 1e-9


class RoundReplayed(VerificationError):
    """The ledger already holds this (study, round), or a later round of the study.

    Raised by :meth:`PrivacyLedger.guard` before any training: a coordinator that replays
    or reorders a round must not make a data owner train (and spend budget) twice. A
    :class:`VerificationError` (tampering), not :class:`BudgetExhausted` (a normal decline).
    """


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _short(study_id: str) -> str:
    return study_id if len(study_id) <= 16 else f"{study_id[:12]}..."


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded event, the study it was spent for, and its link in the hash chain.

    ``epsilon_cap`` is the owner's cap in force when the entry was recorded; ``seeded``
    says the round's noise came from a local seed (reproducible, so not private);
    ``record`` how the event happened and was counted (None: an entry written before
    entries carried it; :attr:`accounting` then gives the values its format fixed).
    """

    event: DpEvent
    study_id: str
    seeded: bool
    epsilon_cap: float
    epsilon_after: float
    recorded_at: str
    prev_hash: bytes
    entry_hash: bytes
    record: AccountingRecord | None = None

    @property
    def accounting(self) -> AccountingRecord:
        """The entry's record, or :data:`LEGACY_RECORD` for an entry without one."""
        return LEGACY_RECORD if self.record is None else self.record

    def body(self) -> dict[str, Any]:
        """The hashed content (everything but the hashes)."""
        return {
            **self.event.to_dict(),
            **({} if self.record is None else self.record.to_dict()),
            "study_id": self.study_id,
            "seeded": self.seeded,
            "warning": SEEDED_WARNING if self.seeded else None,
            "epsilon_cap": self.epsilon_cap,
            "epsilon_after": self.epsilon_after,
            "recorded_at": self.recorded_at,
        }

    @staticmethod
    def link(prev_hash: bytes, body: Mapping[str, Any]) -> bytes:
        return tagged_hash(Tag.LEDGER, b"entry", prev_hash, _canonical_json(dict(body)))

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "prev": self.prev_hash.hex(), "hash": self.entry_hash.hex()}

    def where(self, number: int) -> str:
        return f"entry {number} (study {_short(self.study_id)}, round {self.event.round})"


def _header(owner: str, delta: float) -> dict[str, Any]:
    return {"format": LEDGER_FORMAT, "accountant": ACCOUNTANT, "owner": owner, "delta": delta}


def _genesis_hash(header: Mapping[str, Any]) -> bytes:
    return tagged_hash(Tag.LEDGER, b"genesis", _canonical_json(dict(header)))


def _check_study_id(study_id: object) -> str:
    if not isinstance(study_id, str) or not study_id:
        raise BadInputError(f"study_id must be a non-empty string, got {study_id!r}")
    return study_id


@dataclass(frozen=True)
class _Document:
    """A ledger file parsed (well formed) but not yet verified."""

    owner: str
    delta: float
    genesis: str
    head: str
    entries: tuple[LedgerEntry, ...]


def _read_document(path: Path) -> _Document:
    """Parse a ledger file; :class:`BadInputError` (one line, naming the path) if malformed."""
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
    delta = data.get("delta")
    if not isinstance(owner, str) or not owner:
        raise BadInputError(f"{path}: field 'owner' must be a non-empty string")
    if not _is_number(delta) or not 0 < delta < 1:
        raise BadInputError(f"{path}: field 'delta' must be a number in (0, 1)")
    for name in ("genesis", "head"):
        if not isinstance(data.get(name), str):
            raise BadInputError(f"{path}: field {name!r} must be a hex string")
    items = data.get("entries")
    if not isinstance(items, list):
        raise BadInputError(f"{path}: field 'entries' must be a list")
    entries = tuple(
        _parse_entry(item, where=f"{path}: entry {number}")
        for number, item in enumerate(items, start=1)
    )
    return _Document(owner, float(delta), data["genesis"], data["head"], entries)


def read_entries(path: Path) -> tuple[LedgerEntry, ...]:
    """The entries of the ledger file at ``path``, parsed but not verified (an auditor pairs
    this with :meth:`PrivacyLedger.verify`); :class:`BadInputError` if malformed."""
    return _read_document(Path(path)).entries


def _parse_entry(item: object, *, where: str) -> LedgerEntry:
    if not isinstance(item, dict):
        raise BadInputError(f"{where}: must be a JSON object")
    event = DpEvent.from_dict(item, where=where)
    record = AccountingRecord.from_entry(item, where=where)
    study_id = item.get("study_id")
    if not isinstance(study_id, str) or not study_id:
        raise BadInputError(f"{where}: field 'study_id' must be a non-empty string")
    seeded = item.get("seeded")
    if not isinstance(seeded, bool):
        raise BadInputError(f"{where}: field 'seeded' must be true or false")
    if item.get("warning") != (SEEDED_WARNING if seeded else None):
        raise BadInputError(
            f"{where}: field 'warning' must be the seeded-noise warning exactly when "
            "'seeded' is true, and null otherwise"
        )
    cap = item.get("epsilon_cap")
    if not _is_number(cap) or not (math.isfinite(cap) and cap > 0):
        raise BadInputError(f"{where}: field 'epsilon_cap' must be a number > 0")
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
        study_id=study_id,
        seeded=seeded,
        epsilon_cap=float(cap),
        epsilon_after=float(eps),
        recorded_at=recorded_at,
        prev_hash=hashes["prev"],
        entry_hash=hashes["hash"],
        record=record,
    )


def _round_problem(held: Sequence[LedgerEntry], event: DpEvent, study_id: str) -> str | None:
    """Why ``event`` for ``study_id`` cannot follow ``held``, or None: one entry per
    (study, round), rounds of one study strictly increasing."""
    rounds = [entry.event.round for entry in held if entry.study_id == study_id]
    if event.round in rounds:
        return f"round {event.round} of study {_short(study_id)} is already recorded"
    if rounds and event.round < rounds[-1]:
        return f"round {event.round} of study {_short(study_id)} comes after its round {rounds[-1]}"
    return None


def _chain_problems(doc: _Document) -> list[str]:
    """Hash chain, delta and replay violations of a parsed ledger, in file order."""
    problems: list[str] = []
    genesis = _genesis_hash(_header(doc.owner, doc.delta))
    if doc.genesis != genesis.hex():
        problems.append("header: hash chain: header does not match its genesis hash")
    prev = genesis
    for number, entry in enumerate(doc.entries, start=1):
        where = entry.where(number)
        if entry.prev_hash != prev:
            problems.append(f"{where}: hash chain: does not link to the entry before it")
        if LedgerEntry.link(entry.prev_hash, entry.body()) != entry.entry_hash:
            problems.append(f"{where}: hash chain: content does not match its hash")
        if entry.event.delta != doc.delta:
            problems.append(f"{where}: delta: differs from the ledger's delta {doc.delta:g}")
        replay = _round_problem(doc.entries[: number - 1], entry.event, entry.study_id)
        if replay is not None:
            problems.append(f"{where}: replay: {replay}")
        prev = entry.entry_hash
    if doc.head != prev.hex():
        problems.append("head: hash chain: head hash does not match the last entry")
    return problems


@dataclass(frozen=True)
class LedgerReport:
    """What :meth:`PrivacyLedger.verify` found; ``violations`` is empty when all checks pass.

    ``epsilon_recomputed`` is the PRV epsilon of every recorded event; ``epsilon_recorded``
    the last entry's stored ``epsilon_after``; ``epsilon_cap`` the cap in force at the last
    entry (None for an empty ledger); ``rounds`` the number of entries, over all studies.
    Each violation names the entry (study, round) or part and the check that failed:
    ``hash chain``, ``delta``, ``replay``, ``epsilon`` or ``cap``.
    """

    path: str
    owner: str
    delta: float
    head: str
    epsilon_recomputed: float
    epsilon_recorded: float
    epsilon_cap: float | None
    rounds: int
    studies: tuple[str, ...]
    seeded_entries: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "owner": self.owner,
            "delta": self.delta,
            "head": self.head,
            "epsilon_recomputed": self.epsilon_recomputed,
            "epsilon_recorded": self.epsilon_recorded,
            "epsilon_cap": self.epsilon_cap,
            "rounds": self.rounds,
            "studies": list(self.studies),
            "seeded_entries": self.seeded_entries,
            "violations": list(self.violations),
            "ok": self.ok,
        }


class PrivacyLedger:
    """A data owner's privacy ledger for one dataset, across studies: JSON file, atomic
    writes, tagged hash chain.

    Run by the data owner (hospital), one file per dataset; published read-only to auditors.
    The header holds the owner and delta; each entry one :class:`DpEvent` with the study it
    was spent for, whether its noise was seeded, the cap in force and the epsilon after it
    (all studies composed: the records are the same). Each entry's hash is
    ``tagged_hash(Tag.LEDGER, "entry", previous hash, canonical JSON of the entry)``,
    starting from a genesis hash over the header, and the file ends with the head hash.
    Editing, dropping or reordering entries breaks the chain; a rewrite of the whole chain
    is caught by comparing the head with a published copy, and forged epsilons by
    recomputing them (:meth:`verify`).
    """

    def __init__(
        self,
        path: Path,
        *,
        owner: str,
        epsilon_cap: float | None,
        delta: float,
        entries: Sequence[LedgerEntry],
    ) -> None:
        self._path = Path(path)
        self._owner = owner
        self._cap = None if epsilon_cap is None else float(epsilon_cap)
        self._delta = float(delta)
        self._entries = list(entries)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: Path, *, owner: str, epsilon_cap: float, delta: float) -> PrivacyLedger:
        """Load the dataset's ledger at ``path``, or create an empty one there.

        ``epsilon_cap`` is the owner's cap in force from now on (it may differ from the cap
        recorded in earlier entries: each entry keeps its own). An existing file must belong
        to ``owner`` with the same delta (:class:`ConfigError` otherwise), be well formed
        (:class:`BadInputError` naming the path) and verify (:class:`VerificationError`).
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
        loaded = cls.load(path)
        for name, stored, wanted in (
            ("owner", loaded.owner, owner),
            ("delta", loaded.delta, float(delta)),
        ):
            if stored != wanted:
                raise ConfigError(
                    f"{path}: ledger has {name}={stored!r} but {wanted!r} was requested; "
                    "a ledger's owner and delta are fixed when it is created"
                )
        return cls(path, owner=owner, epsilon_cap=epsilon_cap, delta=delta, entries=loaded.entries)

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read a ledger file as it stands and check its chain, delta and rounds.

        Raises :class:`BadInputError` if malformed and :class:`VerificationError` naming the
        first violated check. The result's ``epsilon_cap`` is the last recorded cap (None
        when empty); to spend from it, :meth:`open` it with the cap in force.
        """
        path = Path(path)
        doc = _read_document(path)
        problems = _chain_problems(doc)
        if problems:
            raise VerificationError(f"{path}: {problems[0]}")
        cap = doc.entries[-1].epsilon_cap if doc.entries else None
        return cls(path, owner=doc.owner, epsilon_cap=cap, delta=doc.delta, entries=doc.entries)

    @classmethod
    def verify(cls, path: Path) -> LedgerReport:
        """Auditor's check of a ledger file: a report, not an exception, for what it finds.

        Checks the hash chain (genesis, links, entry hashes, head), one delta, one entry per
        (study, round) with rounds increasing per study, then recomputes every entry's
        epsilon with the PRV accountant from the events up to it and compares it with the
        recorded ``epsilon_after`` (within ``EPSILON_RTOL`` relative, ``EPSILON_ATOL``
        absolute), and checks both against the cap in force at that entry. Only a file
        that cannot be read or parsed raises (:class:`BadInputError`, one line).
        """
        path = Path(path)
        doc = _read_document(path)
        problems = _chain_problems(doc)
        events: list[DpEvent] = []
        recomputed = 0.0
        for number, entry in enumerate(doc.entries, start=1):
            where = entry.where(number)
            events.append(entry.event)
            recomputed = compute_epsilon(events, delta=doc.delta)
            if not math.isclose(
                entry.epsilon_after, recomputed, rel_tol=EPSILON_RTOL, abs_tol=EPSILON_ATOL
            ):
                problems.append(
                    f"{where}: epsilon: recorded {entry.epsilon_after:.6f} but the events "
                    f"give {recomputed:.6f}"
                )
            for label, value in (("recorded", entry.epsilon_after), ("recomputed", recomputed)):
                if value > entry.epsilon_cap:
                    problems.append(
                        f"{where}: cap: {label} epsilon {value:.6f} > cap {entry.epsilon_cap:g}"
                    )
        studies = tuple(dict.fromkeys(entry.study_id for entry in doc.entries))
        last = doc.entries[-1] if doc.entries else None
        return LedgerReport(
            path=str(path),
            owner=doc.owner,
            delta=doc.delta,
            head=doc.head,
            epsilon_recomputed=recomputed,
            epsilon_recorded=last.epsilon_after if last else 0.0,
            epsilon_cap=last.epsilon_cap if last else None,
            rounds=len(doc.entries),
            studies=studies,
            seeded_entries=sum(entry.seeded for entry in doc.entries),
            violations=tuple(problems),
        )

    def _save(self) -> None:
        header = _header(self._owner, self._delta)
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
    def epsilon_cap(self) -> float | None:
        """The cap :meth:`guard` enforces (from :meth:`open`; the last recorded after
        :meth:`load`, None for an empty loaded ledger)."""
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
    def studies(self) -> tuple[str, ...]:
        """Study ids with at least one entry, in order of first spending."""
        return tuple(dict.fromkeys(entry.study_id for entry in self._entries))

    @property
    def head(self) -> bytes:
        """Hash of the last entry (the genesis hash when empty): what an auditor pins."""
        if self._entries:
            return self._entries[-1].entry_hash
        return _genesis_hash(_header(self._owner, self._delta))

    def epsilon(self, *, study_id: str | None = None) -> float:
        """Epsilon spent on this dataset so far, all studies composed (PRV accountant), or
        only the events of ``study_id`` (what that study alone cost)."""
        events = [e.event for e in self._entries if study_id is None or e.study_id == study_id]
        return compute_epsilon(events, delta=self._delta)

    def foresee_next_round(self, study_id: str) -> DpEvent | None:
        """Compute now what :meth:`guard` will compute for ``study_id``'s next round if it
        repeats the study's last recorded mechanism (as every round of a fixed plan does),
        and return that round's event; None when the study has no entry here.

        Run by a deployed data owner once a round's reply is on its way, so that the next
        round's guard answers from the accountant's memo instead of running the PRV
        accountant while the study waits. Nothing is recorded or decided: the guard still
        checks the event it is given, and one that differs is computed then.
        """
        own = [e.event for e in self._entries if e.study_id == study_id]
        if not own:
            return None
        nxt = dataclasses.replace(own[-1], round=own[-1].round + 1)
        self.projected_epsilon(nxt)
        compute_epsilon((*own, nxt), delta=self._delta)
        return nxt

    def foresee_study(self, event: DpEvent, *, study_id: str, rounds: int) -> int:
        """Compute now what :meth:`guard` and :meth:`record` will compute for each round of
        ``study_id`` still to come if each repeats ``event``'s mechanism (a study's rounds
        all do: its manifest fixes the noise, the sample rate and the steps), and return how
        many rounds that was.

        ``rounds`` is the study's number of rounds; the rounds this ledger already holds for
        the study are not foreseen again. Stops after the first round whose projection
        exceeds the cap in force (the guard declines it and every later one). Run by a
        deployed data owner once its enrollment reply has left, so that no round of the
        study runs the PRV accountant while the study waits. Nothing is recorded or
        decided: the guard still checks each event it is given, and one that differs is
        computed then. An event at another delta than the ledger's foresees nothing (the
        guard refuses it).
        """
        if not isinstance(event, DpEvent):
            raise BadInputError(f"expected a DpEvent, got {type(event).__name__}")
        if event.delta != self._delta:
            return 0
        own = [e.event for e in self._entries if e.study_id == study_id]
        prior = self.events
        planned: list[DpEvent] = []
        for number in range(len(own) + 1, rounds + 1):
            planned.append(dataclasses.replace(event, round=number))
            projected = compute_epsilon((*prior, *planned), delta=self._delta)
            compute_epsilon((*own, *planned), delta=self._delta)
            if self._cap is not None and projected > self._cap:
                break
        return len(planned)

    def _check_event(self, event: DpEvent, study_id: str) -> None:
        if not isinstance(event, DpEvent):
            raise BadInputError(f"expected a DpEvent, got {type(event).__name__}")
        _check_study_id(study_id)
        if event.delta != self._delta:
            raise BadInputError(
                f"DP event delta={event.delta} differs from the ledger's delta={self._delta} "
                f"for {self._owner!r}"
            )
        replay = _round_problem(self._entries, event, study_id)
        if replay is not None:
            raise RoundReplayed(f"{self._owner!r}'s ledger refuses to train again: {replay}")

    def projected_epsilon(self, event: DpEvent) -> float:
        """Epsilon this owner would have spent on the dataset after also running ``event``."""
        if not isinstance(event, DpEvent):
            raise BadInputError(f"expected a DpEvent, got {type(event).__name__}")
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

    def _cap_in_force(self) -> float:
        if self._cap is None:
            raise ConfigError(f"{self._path}: no cap in force; open the ledger with a cap")
        return self._cap

    def guard(self, event: DpEvent, *, study_id: str, study_cap: float | None = None) -> None:
        """Run before training; raises, in this order:

        * :class:`RoundReplayed` if the ledger already holds ``study_id``'s round
          ``event.round`` (or a later one);
        * :class:`BudgetExhausted` if ``event`` would take this dataset past the cap in
          force (all studies composed), naming owner, study, cap and projection;
        * :class:`BudgetExhausted` if ``study_cap`` is given and this study's own events
          plus ``event`` would exceed it (the study's epsilon term: a coordinator sending
          rounds beyond the planned ones cannot make the study spend more than it says).
        """
        cap = self._cap_in_force()
        self._check_not_stale()
        self._check_event(event, study_id)
        if study_cap is not None and not (_is_number(study_cap) and study_cap > 0):
            raise BadInputError(f"study_cap must be a number > 0 or None, got {study_cap!r}")
        projected = self.projected_epsilon(event)
        where = f"round {event.round} of study {_short(study_id)}"
        if projected > cap:
            raise BudgetExhausted(
                f"privacy budget of {self._owner!r} would be exceeded in {where}: "
                f"projected epsilon {projected:.4f} > cap {cap:g} at delta={self._delta:g} "
                f"(spent so far {self.epsilon():.4f})"
            )
        if study_cap is not None:
            own = [e.event for e in self._entries if e.study_id == study_id]
            study_projected = compute_epsilon((*own, event), delta=self._delta)
            if study_projected > study_cap:
                raise BudgetExhausted(
                    f"{where} would take {self._owner!r} past the study's own epsilon "
                    f"{study_cap:g}: projected {study_projected:.4f} for this study alone"
                )

    def record(
        self,
        event: DpEvent,
        *,
        study_id: str,
        epsilon: float,
        seeded: bool,
        noise_generator: str = NOISE_GENERATOR,
    ) -> None:
        """Run after training, before the update is released: append ``event`` durably.

        ``epsilon`` is the caller's :meth:`projected_epsilon` for the event; it must agree
        with the accountant (:class:`BadInputError` otherwise). ``seeded`` says the noise
        came from a local seed; the entry then carries :data:`SEEDED_WARNING`;
        ``noise_generator`` names the generator of noise and batches (only
        :data:`NOISE_GENERATOR` is implemented). The entry's :class:`AccountingRecord`
        states the mechanism, sampling, neighbouring relation and accountant. The same
        replay check as :meth:`guard` applies. Spending is always recorded, even past the
        cap (the guard is what prevents that).
        """
        cap = self._cap_in_force()
        self._check_not_stale()
        self._check_event(event, study_id)
        if not isinstance(seeded, bool):
            raise BadInputError(f"seeded must be True or False, got {seeded!r}")
        accounting = AccountingRecord(noise_generator=noise_generator)
        expected = self.projected_epsilon(event)
        if not _is_number(epsilon) or not math.isclose(
            epsilon, expected, rel_tol=1e-9, abs_tol=1e-12
        ):
            raise BadInputError(
                f"recorded epsilon {epsilon!r} disagrees with the accountant's {expected:.6f}"
            )
        prev = self.head
        draft = LedgerEntry(
            event=event,
            study_id=study_id,
            seeded=seeded,
            epsilon_cap=cap,
            epsilon_after=float(expected),
            recorded_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            prev_hash=prev,
            entry_hash=b"",
            record=accounting,
        )
        entry = dataclasses.replace(draft, entry_hash=LedgerEntry.link(prev, draft.body()))
        self._entries.append(entry)
        try:
            self._save()
        except BaseException:
            self._entries.pop()
            raise
        if expected > cap:
            log.warning(
                "privacy cap exceeded",
                extra=fields(owner=self._owner, epsilon=expected, cap=cap),
            )
        log.info(
            "privacy event recorded",
            extra=fields(
                owner=self._owner,
                study=_short(study_id),
                round=event.round,
                seeded=seeded,
                epsilon=round(expected, 4),
            ),
        )

    def recheck(self) -> None:
        """Auditor check: recompute every ``epsilon_after`` from the events before it.

        Raises :class:`VerificationError` naming the first entry whose stored epsilon
        differs from the PRV accountant's (beyond ``EPSILON_RTOL``); :meth:`verify` reports
        every problem instead.
        """
        for number in range(1, len(self._entries) + 1):
            entry = self._entries[number - 1]
            actual = compute_epsilon(self.events[:number], delta=self._delta)
            if not math.isclose(
                entry.epsilon_after, actual, rel_tol=EPSILON_RTOL, abs_tol=EPSILON_ATOL
            ):
                raise VerificationError(
                    f"{self._path}: {entry.where(number)}: stored epsilon "
                    f"{entry.epsilon_after:.6f} but the events give {actual:.6f}"
                )
