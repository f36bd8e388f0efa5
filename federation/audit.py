"""``cohort audit``: an outsider re-derives every privacy claim of a study from its files.

Run by a privacy auditor, on public data only: a run directory of ``cohort simulate`` or any
directory laid out like it, ``manifest.json`` (the signed study manifest) and
``hospitals/<id>/ledger-*.json`` (each data owner's published privacy ledger). Per ledger:

1. the hash chain, delta, replay and PRV checks of :meth:`PrivacyLedger.verify` (every
   recorded epsilon recomputed with Opacus's PRV accountant, the study's declared one, and
   checked against the owner's cap in force at each entry);
2. every entry's epsilon recomputed a second time, independently, with Google's
   dp-accounting from the recorded events alone: ``PoissonSampledDpEvent(sample_rate,
   GaussianDpEvent(noise_multiplier))`` composed ``steps`` times per round, under
   add-or-remove-one neighbours, by its PLD accountant (compared with the recorded PRV
   epsilon within :func:`epsilon_tolerance`) and its RDP accountant (a looser upper bound:
   it must not fall below the recorded epsilon minus the tolerance, and it is never used
   to pass a cap the declared accountant fails);
3. the study's own entries against the manifest's DP terms: delta, clipping norm, rounds
   within 1..rounds, sample rate and steps of whole epochs, and the noise multiplier the
   terms calibrate (:class:`cohort.clients.training.DpConfig`, as every hospital does);
   the study's own epsilon within the manifest's per-owner epsilon;
4. seeded entries counted and said plainly: seeded noise is reproducible, so unfit for
   real patient data;
5. with client-level DP in the manifest, the summary's client-level epsilon per round
   re-derived from the released client sets (:mod:`cohort.federation.audit_client_dp`);
   with the study contract, each round's client set size against the contributors of the
   round the contract finalized.

Why the tolerance: the PRV accountant reports its estimate plus its error margin
``eps_error`` (:data:`PRV_EPS_ERROR`, 0.01), and the estimate is within ``eps_error`` of
the true epsilon, so a recorded epsilon lies in [true, true + 2 eps_error]; the PLD
accountant's pessimistic discretisation (interval :data:`PLD_DISCRETISATION`) lies a
little above the true epsilon, by a relative amount that grows with the number of
compositions. Hence ``2 * eps_error + TOLERANCE_REL * epsilon``. A recorded epsilon below
the PLD's by more is understated; above it by more, the events and the claim disagree.

Violations are strings ``"<hospital> round <r>: <check>: <what>"`` (``<hospital>: ...``
for a ledger-wide one). Only a run directory without a manifest, a manifest that does not
verify or a ledger that cannot be parsed raises (:class:`BadInputError` or
:class:`VerificationError`, one line).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohort.clients.privacy import (
    PRV_EPS_ERROR,
    DpEvent,
    LedgerEntry,
    PrivacyLedger,
    accountant_history,
    compute_epsilon,
    read_entries,
)
from cohort.errors import BadInputError
from cohort.federation.audit_client_dp import audit_client_level, chain_client_sets
from cohort.federation.manifest import Manifest, SignedManifest

if TYPE_CHECKING:
    from cohort.bounties.study import StudyContract

MANIFEST = "manifest.json"
HOSPITALS = "hospitals"
LEDGER_GLOB = "ledger-*.json"
#: Value discretisation interval of dp-accounting's PLD accountant (its default).
PLD_DISCRETISATION = 1e-4
#: Absolute part of the PRV/PLD tolerance: PRV's estimate error plus its reported margin.
TOLERANCE_ABS = 2 * PRV_EPS_ERROR
#: Relative part: PLD discretisation and truncation over many compositions.
TOLERANCE_REL = 0.005
#: Relative tolerance when comparing a recorded noise multiplier with the calibrated one
#: (the same deterministic calibration; only floating-point noise between builds).
SIGMA_RTOL = 1e-6

History = tuple[tuple[float, float, int], ...]


def epsilon_tolerance(epsilon: float) -> float:
    """How far a recorded PRV epsilon may lie from dp-accounting's PLD epsilon (module doc)."""
    return TOLERANCE_ABS + TOLERANCE_REL * abs(epsilon)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting's RDP logs (through absl) each fractional order it cannot evaluate at
    large sample rates and then leaves out; the bound over the other orders stays valid."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _compose(accountant: Any, history: History) -> Any:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent

    for sigma, rate, steps in history:
        accountant.compose(PoissonSampledDpEvent(rate, GaussianDpEvent(sigma)), steps)
    return accountant


@functools.lru_cache(maxsize=1024)
def _pld(history: History, delta: float) -> float:
    if not history:
        return 0.0
    from dp_accounting import NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(
        NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_DISCRETISATION
    )
    return float(_compose(accountant, history).get_epsilon(delta))


@functools.lru_cache(maxsize=1024)
def _rdp(history: History, delta: float) -> float:
    if not history:
        return 0.0
    from dp_accounting import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    with _quiet_absl():
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
        return float(_compose(accountant, history).get_epsilon(delta))


def pld_epsilon(events: Sequence[DpEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of ``events`` composed, by dp-accounting's PLD accountant."""
    return _pld(accountant_history(events), float(delta))


def rdp_epsilon(events: Sequence[DpEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of ``events`` composed, by dp-accounting's RDP accountant."""
    return _rdp(accountant_history(events), float(delta))


@dataclass(frozen=True)
class HospitalAudit:
    """What the audit found for one published ledger (one hospital's dataset).

    ``rounds`` are this study's rounds in the ledger; ``epsilon_*`` the whole ledger (every
    study on this dataset composed: what the owner's cap bounds), ``study_epsilon_*`` this
    study's entries alone (what the manifest's epsilon bounds). ``seeded_entries`` counts
    this study's entries with seeded noise; ``legacy_entries`` the entries written before
    entries carried their accounting record (values fixed by the ledger format).
    """

    hospital: str
    ledger: str
    head: str
    rounds: tuple[int, ...]
    entries: int
    epsilon_recorded: float
    epsilon_prv: float
    epsilon_pld: float
    epsilon_rdp: float
    study_epsilon_prv: float
    study_epsilon_pld: float
    study_epsilon_rdp: float
    cap: float | None
    seeded_entries: int
    legacy_entries: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {
            "hospital": self.hospital,
            "ledger": self.ledger,
            "head": self.head,
            "rounds": list(self.rounds),
            "entries": self.entries,
            "epsilon": {
                "recorded": self.epsilon_recorded,
                "prv": self.epsilon_prv,
                "pld": self.epsilon_pld,
                "rdp": self.epsilon_rdp,
            },
            "study_epsilon": {
                "prv": self.study_epsilon_prv,
                "pld": self.study_epsilon_pld,
                "rdp": self.study_epsilon_rdp,
            },
            "cap": self.cap,
            "seeded_entries": self.seeded_entries,
            "legacy_entries": self.legacy_entries,
            "violations": list(self.violations),
            "ok": self.ok,
        }


@dataclass(frozen=True)
class AuditReport:
    """The audit of one run directory; ``violations`` is empty when every check passed."""

    run_dir: str
    study_id: str
    study_epsilon: float
    delta: float
    rounds: int
    hospitals: tuple[HospitalAudit, ...]
    violations: tuple[str, ...]
    #: Address of the study contract whose ledger heads were compared (None: not checked).
    chain_contract: str | None = None
    #: The one-run empirical audit (``EmpiricalAudit.to_dict()`` plus ``hospital``) when
    #: ``cohort audit --empirical`` ran it, else None.
    empirical: dict[str, Any] | None = None
    #: The client-level DP re-derivation (:mod:`cohort.federation.audit_client_dp`) when the
    #: manifest has ``client_dp``, else None.
    client_level: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def seeded(self) -> bool:
        """True when any entry of this study used seeded noise (unfit for patient data)."""
        return any(h.seeded_entries for h in self.hospitals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": self.run_dir,
            "study_id": self.study_id,
            "manifest": {
                "epsilon": self.study_epsilon,
                "delta": self.delta,
                "rounds": self.rounds,
            },
            "tolerance": {
                "absolute": TOLERANCE_ABS,
                "relative": TOLERANCE_REL,
                "prv_eps_error": PRV_EPS_ERROR,
                "pld_discretisation": PLD_DISCRETISATION,
            },
            "seeded": self.seeded,
            "chain_contract": self.chain_contract,
            "empirical": self.empirical,
            "client_level": self.client_level,
            "hospitals": [h.to_dict() for h in self.hospitals],
            "violations": list(self.violations),
            "ok": self.ok,
        }


def _where(hospital: str, entry: LedgerEntry, study_id: str) -> str:
    if entry.study_id == study_id:
        return f"{hospital} round {entry.event.round}"
    return f"{hospital} round {entry.event.round} of study {entry.study_id[:12]}..."


def _accountant_problems(
    where: str, recorded: float, pld: float, rdp: float, *, cap: float
) -> list[str]:
    """PLD within tolerance of the recorded PRV epsilon; RDP not below it; PLD within cap."""
    problems = []
    tol = epsilon_tolerance(pld)
    if recorded < pld - tol:
        problems.append(
            f"{where}: epsilon-pld: recorded epsilon {recorded:.4f} is understated: "
            f"dp-accounting's PLD gives {pld:.4f} from the recorded events "
            f"(tolerance {tol:.4f})"
        )
    elif recorded > pld + tol:
        problems.append(
            f"{where}: epsilon-pld: recorded epsilon {recorded:.4f} but dp-accounting's PLD "
            f"gives {pld:.4f} from the recorded events (tolerance {tol:.4f})"
        )
    if rdp < recorded - tol:
        problems.append(
            f"{where}: epsilon-rdp: dp-accounting's RDP upper bound {rdp:.4f} is below the "
            f"recorded epsilon {recorded:.4f} (tolerance {tol:.4f}): the events cannot give it"
        )
    if pld > cap + tol:
        problems.append(f"{where}: cap: PLD epsilon {pld:.4f} > cap {cap:g}")
    return problems


def _terms_problems(where: str, entry: LedgerEntry, manifest: Manifest) -> list[str]:
    """The study's DP terms against what the entry records (run for this study's entries)."""
    from cohort.federation.dp_terms import dp_config

    event = entry.event
    dp = manifest.dp
    problems = []
    if event.delta != dp.delta:
        problems.append(f"{where}: delta: recorded {event.delta:g}, the manifest says {dp.delta:g}")
    if event.max_grad_norm != dp.max_grad_norm:
        problems.append(
            f"{where}: clipping norm: recorded {event.max_grad_norm:g}, the manifest says "
            f"{dp.max_grad_norm:g}"
        )
    if not 1 <= event.round <= manifest.rounds:
        problems.append(f"{where}: round: outside the manifest's rounds 1..{manifest.rounds}")
    per_epoch = round(1 / event.sample_rate)
    if per_epoch < 1 or not math.isclose(event.sample_rate, 1 / per_epoch, rel_tol=1e-12):
        problems.append(
            f"{where}: sample rate: {event.sample_rate:.6g} is not 1 / (steps per epoch)"
        )
        return problems
    if event.steps != dp.local_epochs * per_epoch:
        problems.append(
            f"{where}: steps: recorded {event.steps}, the manifest's {dp.local_epochs} local "
            f"epoch(s) of {per_epoch} steps give {dp.local_epochs * per_epoch}"
        )
    config = dp_config(manifest)
    # Any dataset of per_epoch * batch_size examples has exactly per_epoch steps per epoch.
    calibrated = config.noise_multiplier(per_epoch * dp.batch_size)
    if not math.isclose(event.noise_multiplier, calibrated, rel_tol=SIGMA_RTOL):
        problems.append(
            f"{where}: noise multiplier: recorded {event.noise_multiplier:.6g}, the manifest's "
            f"epsilon {dp.epsilon:g} over {manifest.rounds} rounds calibrates "
            f"{calibrated:.6g} at sample rate {event.sample_rate:.6g}"
        )
    return problems


def audit_ledger(path: Path, *, hospital: str, manifest: Manifest) -> HospitalAudit:
    """Audit one published ledger against ``manifest`` (module doc, steps 1-4).

    Raises :class:`BadInputError` only if the file cannot be read or parsed.
    """
    report = PrivacyLedger.verify(path)
    entries = read_entries(path)
    study_id = manifest.study_id
    problems = [f"{hospital}: {v}" for v in report.violations]
    if report.owner != hospital:
        problems.append(f"{hospital}: owner: the ledger belongs to {report.owner!r}")
    if manifest.owner(report.owner) is None:
        problems.append(f"{hospital}: roster: {report.owner!r} is not a data owner of the study")
    events: list[DpEvent] = []
    pld = rdp = 0.0
    for entry in entries:
        where = _where(hospital, entry, study_id)
        events.append(entry.event)
        pld = pld_epsilon(events, delta=report.delta)
        rdp = rdp_epsilon(events, delta=report.delta)
        problems += _accountant_problems(
            where, entry.epsilon_after, pld, rdp, cap=entry.epsilon_cap
        )
        if entry.study_id == study_id:
            problems += _terms_problems(where, entry, manifest)
    own = [e for e in entries if e.study_id == study_id]
    own_events = [e.event for e in own]
    study_prv = compute_epsilon(own_events, delta=report.delta)
    study_pld = pld_epsilon(own_events, delta=report.delta)
    study_rdp = rdp_epsilon(own_events, delta=report.delta)
    if own and study_prv > manifest.dp.epsilon:
        problems.append(
            f"{hospital} round {own[-1].event.round}: study cap: this study's PRV epsilon "
            f"{study_prv:.4f} > the manifest's epsilon {manifest.dp.epsilon:g}"
        )
    return HospitalAudit(
        hospital=hospital,
        ledger=str(path),
        head=report.head,
        rounds=tuple(e.event.round for e in own),
        entries=len(entries),
        epsilon_recorded=report.epsilon_recorded,
        epsilon_prv=report.epsilon_recomputed,
        epsilon_pld=pld,
        epsilon_rdp=rdp,
        study_epsilon_prv=study_prv,
        study_epsilon_pld=study_pld,
        study_epsilon_rdp=study_rdp,
        cap=report.epsilon_cap,
        seeded_entries=sum(e.seeded for e in own),
        legacy_entries=sum(e.record is None for e in entries),
        violations=tuple(problems),
    )


def find_ledgers(run_dir: Path) -> list[tuple[str, Path]]:
    """``(hospital, ledger path)`` for every ``hospitals/<id>/ledger-*.json``, sorted; a
    hospital with several datasets is named ``<id>/<ledger file>``."""
    found: list[tuple[str, Path]] = []
    root = run_dir / HOSPITALS
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        ledgers = sorted(folder.glob(LEDGER_GLOB))
        for path in ledgers:
            name = folder.name if len(ledgers) == 1 else f"{folder.name}/{path.name}"
            found.append((name, path))
    return found


def load_manifest(run_dir: Path) -> Manifest:
    """The run's signed manifest, verified; one-line :class:`BadInputError` if absent."""
    path = run_dir / MANIFEST
    if not run_dir.is_dir():
        raise BadInputError(f"{run_dir}: not a directory")
    if not path.is_file():
        raise BadInputError(
            f"{run_dir}: no {MANIFEST}: not a cohort run directory (manifest.json plus "
            f"{HOSPITALS}/<id>/{LEDGER_GLOB})"
        )
    return SignedManifest.load(path).manifest


def audit_run(
    run_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    contract: StudyContract | None = None,
) -> AuditReport:
    """Audit every published ledger of the run at ``run_dir`` against its manifest.

    ``progress`` is called with each hospital's name before its ledger is audited. With
    ``contract`` (the study's deployment), each ledger's head and epsilon after every
    finalized round are also compared with the chain's ``LedgerHead`` events
    (:mod:`cohort.federation.audit_chain`; VerificationError if it is not the manifest's
    contract), and with client-level DP each round's client set size against the
    contributors of its ``RoundFinalized`` event. Raises
    :class:`BadInputError` (no manifest, an unreadable ledger) or
    :class:`VerificationError` (a manifest whose sponsor signature does not verify).
    """
    run_dir = Path(run_dir)
    manifest = load_manifest(run_dir)
    ledgers = find_ledgers(run_dir)
    problems: list[str] = []
    if not ledgers:
        problems.append(f"{run_dir}: ledgers: no {HOSPITALS}/<id>/{LEDGER_GLOB} to audit")
    audits = []
    for hospital, path in ledgers:
        if progress is not None:
            progress(hospital)
        audit = audit_ledger(path, hospital=hospital, manifest=manifest)
        audits.append(audit)
        problems += audit.violations
    chain_sets = None
    if contract is not None:
        from cohort.federation.audit_chain import chain_problems  # web3: only when asked

        problems += chain_problems(contract, manifest, ledgers)
        if manifest.client_dp is not None:
            chain_sets = chain_client_sets(contract.finalized_events())
    client_problems, client_level = audit_client_level(run_dir, manifest, chain_sets=chain_sets)
    problems += client_problems
    return AuditReport(
        run_dir=str(run_dir),
        study_id=manifest.study_id,
        study_epsilon=manifest.dp.epsilon,
        delta=manifest.dp.delta,
        rounds=manifest.rounds,
        hospitals=tuple(audits),
        violations=tuple(problems),
        chain_contract=None if contract is None else contract.address,
        client_level=client_level,
    )
