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

Violations read ``"study round <r>: client-level <check>: <what>"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cohort.federation.manifest import Manifest

SUMMARY = "summary.json"
#: PLD discretisation interval for the client-level check (a Gaussian's PLD is near exact).
PLD_DISCRETISATION = 1e-4
TOLERANCE_ABS = 1e-4
TOLERANCE_REL = 1e-4
#: Relative tolerance on a reported effective noise multiplier (same formula, floats).
SIGMA_RTOL = 1e-9


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


def audit_client_level(
    run_dir: Path, manifest: Manifest
) -> tuple[list[str], dict[str, Any] | None]:
    """(violations, the re-derived client-level figures) for the run at ``run_dir``."""
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
    for item in rounds:
        rnd = item.get("round") if isinstance(item, Mapping) else None
        where = f"study round {rnd}"
        level = item.get("client_level") if isinstance(item, Mapping) else None
        if not isinstance(level, Mapping):
            problems.append(f"{where}: client-level record: missing from the summary")
            continue
        clients = level.get("clients")
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 0:
            problems.append(f"{where}: client-level clients: {clients!r} is not a count")
            continue
        included = item.get("clients_included") or []
        if item.get("aggregate_hash") and clients != len(included):
            problems.append(
                f"{where}: client-level clients: {clients} reported, the round included "
                f"{len(included)}"
            )
            clients = len(included)
        if 0 < clients < m:
            problems.append(
                f"{where}: client-level clients: {clients} owners released, fewer than "
                f"min_clients {m}"
            )
        if clients > 0:
            z = terms.noise_multiplier * math.sqrt(clients / m)
            released.append(z)
            reported_z = _number(level.get("noise_multiplier"))
            if reported_z is None or not math.isclose(reported_z, z, rel_tol=SIGMA_RTOL):
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
        if reported is None or reported < epsilon - tol:
            problems.append(
                f"{where}: client-level epsilon: reported {level.get('epsilon')!r} is "
                f"understated: dp-accounting's PLD gives {epsilon:.4f} (tolerance {tol:.1g})"
            )
        elif reported > epsilon + tol:
            problems.append(
                f"{where}: client-level epsilon: reported {reported:.4f} but dp-accounting's "
                f"PLD gives {epsilon:.4f} (tolerance {tol:.1g})"
            )
        per_round.append({"round": rnd, "clients": clients, "epsilon_pld": epsilon})
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
        "delta": delta,
        "clip_norm": terms.clip_norm,
        "noise_multiplier": terms.noise_multiplier,
        "min_clients": m,
        "rounds_released": len(released),
        "rounds": per_round,
    }
    return problems, figures
