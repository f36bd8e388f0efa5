"""``summary.json``: what a study did, written by ``cohort simulate`` and by the deployed
coordinator (the ServerApp) in one schema; ``runtime`` says which ran it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from cohort.federation.coordinator import RoundRecord, StudyOutcome
from cohort.federation.manifest import Manifest


def config_of(manifest: Manifest) -> dict[str, Any]:
    """The study's configuration as summary.json reports it, read from the manifest."""
    return {
        "name": manifest.name,
        "clients": len(manifest.owners),
        "rounds": manifest.rounds,
        "committee": len(manifest.committee),
        "quorum": manifest.quorum,
        "secure": manifest.secure.value,
        "dp": asdict(manifest.dp),
        **({} if manifest.client_dp is None else {"client_dp": asdict(manifest.client_dp)}),
        **({} if manifest.mpc is None else {"mpc": mpc_config(manifest)}),
        "seed": None,
        "model": manifest.model,
        "min_clients": manifest.min_clients,
        "server_lr": manifest.server_lr,
        "bounty_wei": manifest.bounty_wei,
        "dirichlet_alpha": None,
        "classes": manifest.num_classes,
    }


def mpc_config(manifest: Manifest) -> dict[str, Any]:
    """MPC mode's terms as summary.json reports them (``config.mpc``)."""
    terms = manifest.mpc
    assert terms is not None
    return {
        "prime": terms.prime,
        "frac_bits": terms.frac_bits,
        "norm_bound": terms.norm_bound,
        "threshold": manifest.quorum,
    }


def build_summary(config: Mapping[str, Any], outcome: StudyOutcome) -> dict[str, Any]:
    """summary.json: the same schema for ``cohort simulate`` and a deployed study."""
    return {
        "study_id": outcome.study_id,
        "config": dict(config),
        "rounds": [_round_dict(r) for r in outcome.rounds],
        "clients": [
            {
                "id": c.id,
                "epsilon_spent": round(c.epsilon_spent, 6),
                "examples": c.examples,
                "rounds_included": c.rounds_included,
                "payout_address": c.payout_address,
                "paid_wei": c.paid_wei,
            }
            for c in sorted(outcome.clients.values(), key=lambda c: c.id)
        ],
        "stopped": outcome.stopped,
        "chain": {
            "settled": outcome.settled,
            "provider": outcome.chain,
            "contract": outcome.contract,
            "finalized_rounds": outcome.finalized_rounds,
            "bounty_wei": outcome.bounty_wei,
            "total_paid_wei": outcome.total_paid_wei,
        },
        "final_accuracy": outcome.rounds[-1].accuracy if outcome.rounds else None,
        "node_errors": outcome.node_errors,
        **_client_level(outcome.rounds),
    }


def _client_level(rounds: list[RoundRecord]) -> dict[str, Any]:
    """The study's client-level DP after its last round (absent without ``client_dp``)."""
    from cohort.clients.client_dp import ACCOUNTANT, NEIGHBOURING_RELATION

    levels = [r.client_level for r in rounds if r.client_level is not None]
    if not levels:
        return {}
    released = [lv["noise_multiplier"] for lv in levels if lv["clients"] > 0]
    return {
        "client_level": {
            "epsilon": levels[-1]["epsilon"],
            "delta": levels[-1]["delta"],
            "noise_multiplier": min(released) if released else None,
            "clip_norm": levels[-1]["clip_norm"],
            "rounds_released": len(released),
            "accountant": ACCOUNTANT,
            "neighbouring_relation": NEIGHBOURING_RELATION,
        }
    }


def _round_dict(record: RoundRecord) -> dict[str, Any]:
    data = asdict(record)
    data["accuracy"] = round(record.accuracy, 6)
    data["loss"] = round(record.loss, 6)
    data["max_epsilon"] = round(record.max_epsilon, 6)
    if record.client_level is None:
        del data["client_level"]  # a study without client-level DP: schema as before
    return data
