"""``cohort simulate``: a whole study on one machine with the real components.

* data owners: Flower ClientApps in the simulation runtime (Ray worker processes), each with
  its own work directory (key store, privacy ledger) under ``<out>/hospitals/``;
* committee: ``k`` aggregator services as separate processes serving gRPC on 127.0.0.1
  (free ports), stopped at the end;
* chain: the embedded EVM (py-evm through eth-tester) in this process;
* coordinator: the Flower ServerApp in this process, which deploys the study contract.

The result is ``<out>/summary.json`` plus the coordinator's inbound transcript.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid

from cohort.aggregator.committee import LocalCommittee, MemberRef
from cohort.bounties.chain import ChainProvider, EmbeddedChain
from cohort.clients.data import demo_split
from cohort.errors import ProtocolAbort
from cohort.federation.client_app import make_client_app
from cohort.federation.config import StudyConfig, write_json
from cohort.federation.coordinator import Coordinator, RoundRecord, StudyOutcome
from cohort.federation.hospital import HospitalSettings
from cohort.federation.server_app import ServerRun, make_server_app

SUMMARY = "summary.json"
TRANSCRIPT = "coordinator-inbound.jsonl"
MODEL = "model.npy"


class _PartitionResolver:
    """Maps Flower's partition id to a hospital's local settings (picklable for Ray)."""

    def __init__(self, settings: Sequence[HospitalSettings]) -> None:
        self.settings = list(settings)

    def __call__(self, context: Context) -> HospitalSettings:
        return self.settings[int(context.node_config["partition-id"])]


def hospital_settings(config: StudyConfig, out: Path) -> list[HospitalSettings]:
    seed = config.seed if config.seed is not None else 0
    return [
        HospitalSettings(
            party_id=f"hospital-{i + 1}",
            workdir=str((out / "hospitals" / f"hospital-{i + 1}").resolve()),
            data=f"demo:{i}",
            demo_hospitals=config.clients,
            demo_seed=seed,
            demo_alpha=config.dirichlet_alpha,
        )
        for i in range(config.clients)
    ]


@contextlib.contextmanager
def _committee(
    config: StudyConfig, out: Path, given: Sequence[MemberRef] | None
) -> Iterator[list[MemberRef]]:
    if given is not None:
        yield list(given)
        return
    with LocalCommittee(config.committee, workdir=out / "committee") as committee:
        yield list(committee.roster)


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    committee: Sequence[MemberRef] | None = None,
    chain: ChainProvider | None = None,
    settings: Sequence[HospitalSettings] | None = None,
    on_round: Any = None,
    quiet_flower: bool = True,
) -> dict[str, Any]:
    """Run one study in-process and return (and write) its summary."""
    from flwr.simulation import run_simulation

    out.mkdir(parents=True, exist_ok=True)
    hospitals = list(settings) if settings is not None else hospital_settings(config, out)
    if len(hospitals) != config.clients:
        raise ProtocolAbort(f"{len(hospitals)} hospital settings for {config.clients} clients")
    _, test_set = demo_split(
        num_hospitals=config.clients,
        seed=config.seed if config.seed is not None else 0,
        alpha=config.dirichlet_alpha,
    )
    provider = chain if chain is not None else EmbeddedChain()
    sponsor = provider.accounts()[0]
    run = ServerRun(transcript=out / TRANSCRIPT)

    with _committee(config, out, committee) as roster:

        def factory(grid: Grid, context: Context) -> Coordinator:
            return Coordinator(
                config=config,
                grid=grid,
                test_set=test_set,
                committee=roster,
                chain=provider,
                sponsor=sponsor,
                on_round=on_round,
            )

        server_app = make_server_app(factory, run)
        client_app = make_client_app(_PartitionResolver(hospitals))
        with _quiet(quiet_flower):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=config.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": {
                        "log_to_driver": False,
                        "logging_level": logging.ERROR,
                        "num_cpus": max(1, min(os.cpu_count() or 1, config.clients)),
                    },
                },
            )
    if run.error is not None:
        raise run.error
    if run.outcome is None:
        raise ProtocolAbort("the coordinator finished without an outcome (see Flower's log)")
    summary = build_summary(config, run.outcome)
    if run.outcome.final_model is not None:
        np.save(out / MODEL, run.outcome.final_model)
    write_json(out / SUMMARY, summary)
    return summary


def build_summary(config: StudyConfig, outcome: StudyOutcome) -> dict[str, Any]:
    return {
        "study_id": outcome.study_id,
        "config": config.to_dict(),
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
        "chain": {
            "provider": outcome.chain,
            "contract": outcome.contract,
            "finalized_rounds": outcome.finalized_rounds,
            "bounty_wei": outcome.bounty_wei,
            "total_paid_wei": outcome.total_paid_wei,
        },
        "final_accuracy": outcome.rounds[-1].accuracy if outcome.rounds else None,
        "node_errors": outcome.node_errors,
    }


def _round_dict(record: RoundRecord) -> dict[str, Any]:
    data = asdict(record)
    data["accuracy"] = round(record.accuracy, 6)
    data["loss"] = round(record.loss, 6)
    data["max_epsilon"] = round(record.max_epsilon, 6)
    return data


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Silence Flower's and Ray's own chatter (our progress bar and table say what happened)."""
    if not enabled:
        yield
        return
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            flwr_logger.setLevel(level)
