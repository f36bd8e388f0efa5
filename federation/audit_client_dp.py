"""The auditor's re-derivation of a study's client-level epsilon (``cohort audit``).

Run by a privacy auditor for a study whose manifest carries ``client_dp``, on public data
only: the manifest's C, sigma, min_clients and delta, and ``summary.json``'s rounds (how
many owners each released sum held). Per round it checks that the released client set had
at least min_clients owners (and, for a completed round, that the count is the size of the
round's ``clients_included``), that the reported clip norm and effective noise multiplier
``sigma * sqrt(|S| / min_clients)`` are the manifest's, and recomputes the cumulative
client-level epsilon with Google's dp-accounting: ``GaussianDpEvent(z_t)`` per released
round, composed by its PLD accountant (an independent check of the coordinator's exact
Gaussian composition, :func:`cohort.clients.client_dp.client_level_epsilon`). A reported
epsilon below the PLD's by more than :func:`tolerance` is understated.

With the study contract (``cohort audit --chain-url URL --contract ADDR``) the client set
size is also checked against the chain, which is the source of truth: every round's |S|
must be the number of contributors of the round the contract finalized
(``RoundFinalized``'s ``contributors``; 0 for a round it did not finalize). A summary that
claims a larger |S| (more noise, so a smaller epsilon) fails with one line naming the round
(:data:`CLIENTS_CHAIN_MISMATCH`), which gives the noise multiplier and cumulative epsilon of
the chain's set next to the claimed ones; the re-derivation then composes the chain's |S|
(min_clients, the least noise, for a claimed release the contract never finalized), so
later rounds and the final epsilon are checked against the chain's accounting. A round
finalized on chain but absent from the summary is named too, and composed.

Violations read ``"study round <r>: client-level <check>: <what>"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohort.federation.manifest import Manifest

if TYPE_CHECKING:
    from cohort.bounties.study import FinalizedRound

SUMMARY = "summary.json"
#: PLD discretisation interval for the client-level check (a Gaussian's PLD is near exact).
PLD_DISCRETISATION = 1e-4
TOLERANCE_ABS = 1e-4
TOLERANCE_REL = 1e-4
#: Relative tolerance on a reported effective noise multiplier (same formula, floats).
SIGMA_RTOL = 1e-9
#: The check of a round's client set size against the study contract's finalized round.
CLIENTS_CHAIN_MISMATCH = "client-level clients do not match the chain"


def tolerance(epsilon: float) -> float:
    """How far a reported client-level epsilon may lie from dp-accounting's PLD one."""
    return TOLERANCE_ABS + TOLERANCE_REL * abs(epsilon)


def pld_gaussian_epsilon(noise_multipliers: Sequence[float], *, delta: float) -> float:
    """Epsilon at ``delta`` of Gaussian mechanisms composed, by dp-accounting's PLD."""
    if not noise_multipliers:
        return 0.0
    from dp_accounting import GaussianDpEvent, NeighboringRelation
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(
        NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_DISCRETISATION
    )
    for z in noise_multipliers:
        accountant.compose(GaussianDpEvent(z))
    return float(accountant.get_epsilon(delta))


def _number(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(float(value)) else None  # type: ignore[arg-type]


def chain_client_sets(finalized: Iterable[FinalizedRound]) -> dict[int, tuple[int, str]]:
    """Round -> (contributors finalized, transaction) from ``RoundFinalized`` events.

    The contract finalizes a round once; the first event of a round is kept.
    """
    sets: dict[int, tuple[int, str]] = {}
    for event in finalized:
        sets.setdefault(event.round, (len(event.contributors), event.tx_hash))
    return sets


def audit_client_level(
    run_dir: Path,
    manifest: Manifest,
    *,
    chain_sets: Mapping[int, tuple[int, str]] | None = None,
) -> tuple[list[str], dict[str, Any] | None]:
    """(violations, the re-derived client-level figures) for the run at ``run_dir``.

    With ``chain_sets`` (:func:`chain_client_sets` of the study contract's finalized
    rounds) the client set size of every round is also checked against the chain, and the
    chain's is the one the re-derivation composes (module doc).
    """
    terms = manifest.client_dp
    if terms is None:
        return [], None
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        rounds = summary["rounds"]
        if not isinstance(rounds, list):
            raise TypeError("rounds is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"study: client-level summary: {path} unreadable ({exc})"], None
    problems: list[str] = []
    delta, m = manifest.dp.delta, manifest.min_clients
    released: list[float] = []
    epsilon = 0.0
    per_round: list[dict[str, Any]] = []
    seen: set[object] = set()

    def z_of(clients: int) -> float:
        return terms.noise_multiplier * math.sqrt(clients / m)

    for item in rounds:
        rnd = item.get("round") if isinstance(item, Mapping) else None
        seen.add(rnd)
        where = f"study round {rnd}"
        onchain = chain_sets.get(rnd) if chain_sets is not None and isinstance(rnd, int) else None
        level = item.get("client_level") if isinstance(item, Mapping) else None
        if not isinstance(level, Mapping):
            problems.append(f"{where}: client-level record: missing from the summary")
            if onchain is not None and onchain[0] > 0:
                released.append(z_of(onchain[0]))  # the chain's release still counts
            continue
        claimed = level.get("clients")
        if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 0:
            problems.append(f"{where}: client-level clients: {claimed!r} is not a count")
            continue
        clients = claimed
        included = item.get("clients_included") or []
        if item.get("aggregate_hash") and clients != len(included):
            problems.append(
                f"{where}: client-level clients: {clients} reported, the round included "
                f"{len(included)}"
            )
            clients = len(included)
        chain_line = None
        if chain_sets is not None:
            finalized = onchain[0] if onchain is not None else 0
            if clients != finalized:
                chain_line = (
                    f"{where}: {CLIENTS_CHAIN_MISMATCH}: the summary accounts {clients} owners "
                    f"(noise multiplier {level.get('noise_multiplier')!r}, epsilon "
                    f"{level.get('epsilon')!r}), "
                    + (
                        f"the contract finalized {finalized} contributors (tx {onchain[1][:18]})"
                        if onchain is not None
                        else "the contract finalized no such round: accounted at min_clients "
                        f"{m}, the least noise a released sum may carry"
                    )
                )
                clients = finalized if onchain is not None else m
        if 0 < clients < m:
            problems.append(
                f"{where}: client-level clients: {clients} owners released, fewer than "
                f"min_clients {m}"
            )
        z: float | None = None
        if clients > 0:
            z = z_of(clients)
            released.append(z)
            reported_z = _number(level.get("noise_multiplier"))
            if chain_line is None and (
                reported_z is None or not math.isclose(reported_z, z, rel_tol=SIGMA_RTOL)
            ):
                problems.append(
                    f"{where}: client-level noise multiplier: reported "
                    f"{level.get('noise_multiplier')!r}, the manifest's sigma "
                    f"{terms.noise_multiplier:g} over {clients} of min {m} owners gives {z:.6g}"
                )
        if _number(level.get("clip_norm")) != terms.clip_norm:
            problems.append(
                f"{where}: client-level clip norm: reported {level.get('clip_norm')!r}, the "
                f"manifest says {terms.clip_norm:g}"
            )
        epsilon = pld_gaussian_epsilon(released, delta=delta)
        reported = _number(level.get("epsilon"))
        tol = tolerance(epsilon)
        if chain_line is not None:
            # One line for the round: what the chain's set gives, next to the claim.
            problems.append(
                f"{chain_line}: noise multiplier "
                f"{'-' if z is None else format(z, '.6g')}, epsilon {epsilon:.4f} at delta "
                f"{delta:g} (dp-accounting PLD)"
            )
        elif reported is None or reported < epsilon - tol:
            problems.append(
                f"{where}: client-level epsilon: reported {level.get('epsilon')!r} is "
                f"understated: dp-accounting's PLD gives {epsilon:.4f} (tolerance {tol:.1g})"
            )
        elif reported > epsilon + tol:
            problems.append(
                f"{where}: client-level epsilon: reported {reported:.4f} but dp-accounting's "
                f"PLD gives {epsilon:.4f} (tolerance {tol:.1g})"
            )
        per_round.append(
            {
                "round": rnd,
                "clients": clients,
                "clients_claimed": claimed,
                "clients_chain": None if chain_sets is None else (onchain or (0, ""))[0],
                "noise_multiplier": z,
                "noise_multiplier_claimed": _number(level.get("noise_multiplier")),
                "epsilon_pld": epsilon,
                "epsilon_claimed": reported,
            }
        )
    for number in sorted(set(chain_sets or {}) - seen):
        finalized, tx = (chain_sets or {})[number]
        problems.append(
            f"study round {number}: {CLIENTS_CHAIN_MISMATCH}: the contract finalized "
            f"{finalized} contributors (tx {tx[:18]}), the summary has no record of the round"
        )
        if finalized > 0:
            released.append(z_of(finalized))
    epsilon = pld_gaussian_epsilon(released, delta=delta)  # with any round only the chain has
    final = summary.get("client_level")
    final_eps = _number(final.get("epsilon")) if isinstance(final, Mapping) else None
    if final_eps is None or final_eps < epsilon - tolerance(epsilon):
        problems.append(
            f"study: client-level epsilon: the summary's final {final_eps!r} is understated or "
            f"missing: dp-accounting's PLD gives {epsilon:.4f} over {len(released)} released "
            "rounds"
        )
    figures = {
        "epsilon_pld": epsilon,
        "epsilon_claimed": final_eps,
        "delta": delta,
        "clip_norm": terms.clip_norm,
        "noise_multiplier": terms.noise_multiplier,
        "min_clients": m,
        "rounds_released": len(released),
        "chain_checked": chain_sets is not None,
        "rounds": per_round,
        "violations": list(problems),
    }
    return problems, figures
