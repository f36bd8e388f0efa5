"""Cohort's Flower ServerApp: the coordinator's entry point.

The ServerApp hands Flower's ``Grid`` to a :class:`~cohort.federation.coordinator.Coordinator`
wrapped in a :class:`~cohort.federation.transcript.RecordingGrid`, so every message the
coordinator receives is described in ``coordinator-inbound.jsonl`` next to the summary.

Two ways in:

* ``cohort simulate`` builds one in-process with :func:`make_server_app` and a factory that
  holds its synthetic parties;
* on the Deployment Engine, ``flwr run .`` (``cohort study launch``) loads the module-level
  :data:`app`, which builds the coordinator from the run config: the paths, on the
  SuperLink's machine, of the signed manifest, the coordinator's key, the sponsor's Ethereum
  keystore and its password file, the held-out test split and the output folder, plus the
  chain URL (see ``[tool.flwr.app.config]`` in pyproject.toml). Every study term comes from
  the manifest, whose signature and contract binding are checked before round 1; the
  coordinator keeps resumable state in the output folder, so a relaunch continues the study.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cohort.errors import ConfigError
from cohort.federation.coordinator import Coordinator, StudyOutcome
from cohort.federation.transcript import RecordingGrid
from cohort.logs import fields, get_logger

log = get_logger(__name__)

CoordinatorFactory = Callable[[Grid, Context], Coordinator]

SUMMARY = "summary.json"
TRANSCRIPT = "coordinator-inbound.jsonl"
MODEL = "model.npy"
RUN_CONFIG_KEYS = (
    "manifest",
    "chain-url",
    "coordinator-key",
    "eth-keystore",
    "eth-password-file",
    "test-data",
    "out",
)


@dataclass
class ServerRun:
    """Where the ServerApp thread leaves its outcome or its error for the caller."""

    outcome: StudyOutcome | None = None
    error: BaseException | None = None
    transcript: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


def make_server_app(factory: CoordinatorFactory, run: ServerRun) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            if run.transcript is not None:
                grid = RecordingGrid(grid, run.transcript)  # type: ignore[assignment]
            run.outcome = factory(grid, context).run()
        except BaseException as exc:  # handed to the caller, re-raised there
            run.error = exc
            raise

    return app


def _run_config(context: Context) -> dict[str, str]:
    cfg = context.run_config
    missing = [k for k in RUN_CONFIG_KEYS if not str(cfg.get(k, "")).strip()]
    if missing:
        raise ConfigError(
            f"run config: {', '.join(missing)} not set (cohort study launch sets them; with "
            "flwr run pass --run-config)"
        )
    return {k: str(cfg[k]) for k in RUN_CONFIG_KEYS}


def deployed_coordinator(grid: Grid, context: Context) -> Coordinator:
    """The coordinator of a deployed study, built from the run config (see module doc)."""
    from cohort.bounties.chain import RpcChain
    from cohort.bounties.study import StudyContract
    from cohort.clients.data import Normalizer, load_csv
    from cohort.crypto.identity import Identity
    from cohort.federation.approval import check_contract
    from cohort.federation.coordinator_state import StateStore
    from cohort.federation.keyfiles import read_password, unlock_eth_keystore
    from cohort.federation.manifest import SignedManifest

    cfg = _run_config(context)
    signed = SignedManifest.load(Path(cfg["manifest"]))
    manifest = signed.manifest
    identity = Identity.load(Path(cfg["coordinator-key"]))
    if identity.public.sign_key != manifest.coordinator_key:
        raise ConfigError(f"{cfg['coordinator-key']}: not the coordinator key the manifest names")
    password = read_password(Path(cfg["eth-password-file"]))
    key = unlock_eth_keystore(Path(cfg["eth-keystore"]), password)
    chain = RpcChain(cfg["chain-url"], private_keys=[key])
    if manifest.sponsor_address not in chain.accounts():
        raise ConfigError(
            f"{cfg['eth-keystore']}: not the sponsor account {manifest.sponsor_address} "
            "the manifest names"
        )
    contract = StudyContract.at(chain, manifest.contract)
    check_contract(contract, manifest)
    test_set = load_csv(Path(cfg["test-data"]), num_classes=manifest.num_classes)
    if manifest.normalizer is not None:
        test_set = Normalizer.from_dict(manifest.normalizer).apply(test_set)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    return Coordinator(
        signed=signed,
        identity=identity,
        grid=RecordingGrid(grid, out / TRANSCRIPT),  # type: ignore[arg-type]
        test_set=test_set,
        contract=contract,
        sponsor=manifest.sponsor_address,
        state=StateStore(out),
    )


def _deployed_main(grid: Grid, context: Context) -> None:
    from cohort.federation.config import write_json
    from cohort.federation.flower_waits import tune_object_transfers
    from cohort.federation.summary import build_summary, config_of

    tune_object_transfers()  # replies are pulled as soon as they are complete
    coordinator = deployed_coordinator(grid, context)
    out = Path(str(context.run_config["out"]))
    outcome = coordinator.run()
    summary = build_summary(config_of(coordinator.manifest), outcome)
    summary["runtime"] = "deployment"
    summary["manifest"] = str(context.run_config["manifest"])
    if outcome.final_model is not None:
        np.save(out / MODEL, outcome.final_model)
    write_json(out / SUMMARY, summary)
    log.info(
        "study finished",
        extra=fields(study=outcome.study_id[:16], summary=str(out / SUMMARY)),
    )
    print(json.dumps({"summary": str(out / SUMMARY), "final_accuracy": summary["final_accuracy"]}))


app = ServerApp()
app.main()(_deployed_main)
