"""``cohort simulate``: a whole study on one machine with the real components.

* sponsor: creates the synthetic parties' keys, the study manifest (committee, roster, DP terms,
  model, chain and the contract's address), signs it and deploys the study contract bound to
  its hash on the embedded EVM (py-evm through eth-tester) in this process;
* approvals: ``cohort simulate`` approves the manifest on behalf of its synthetic hospitals and
  committee members (each with its own identity, in its own work directory) and says so in
  the summary; real parties approve with ``cohort study approve``;
* data owners: Flower ClientApps in the simulation runtime (Ray worker processes), each with
  its own work directory (key store, approvals, privacy ledger) under ``<out>/hospitals/``,
  and a local policy set on its behalf (cap = the study's epsilon, the study's mode only);
* committee: ``k`` aggregator services as separate processes serving gRPC over TLS on
  127.0.0.1 (free ports, certificates from a study CA), stopped at the end;
* coordinator: the Flower ServerApp in this process, signing its control calls.

Every run is a fresh study (a new manifest nonce, fresh synthetic parties): an ``--out``
directory left by an earlier simulation is cleared first, any other non-empty one is refused.
The result is ``<out>/summary.json``, ``<out>/manifest.json`` and the coordinator's inbound
transcript.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid

from cohort.aggregator.committee import LocalCommittee
from cohort.bounties.chain import ChainProvider, EmbeddedChain
from cohort.bounties.study import StudyContract, predict_address
from cohort.clients.data import (
    Dataset,
    Normalizer,
    demo_normalizer,
    demo_split,
    load_csv,
    synthetic_split,
)
from cohort.clients.model import build_model, num_parameters
from cohort.crypto.fixed_point import FRAC_BITS, PRIME
from cohort.crypto.identity import Identity
from cohort.errors import ConfigError, ProtocolAbort
from cohort.federation.approval import Role, approve, check_contract, deploy_bound
from cohort.federation.client_app import make_client_app
from cohort.federation.config import StudyConfig, write_json
from cohort.federation.coordinator import Coordinator
from cohort.federation.hospital import HospitalSettings
from cohort.federation.manifest import (
    CommitteeEntry,
    DpTerms,
    Manifest,
    MpcTerms,
    OwnerEntry,
    SecureMode,
    SignedManifest,
    new_nonce,
)
from cohort.federation.policy import HospitalPolicy
from cohort.federation.server_app import ServerRun, make_server_app
from cohort.federation.summary import build_summary, mpc_config
from cohort.logs import fields, get_logger

log = get_logger(__name__)

SUMMARY = "summary.json"
TRANSCRIPT = "coordinator-inbound.jsonl"
MODEL = "model.npy"
MANIFEST = "manifest.json"
MARKER = ".cohort-simulation"
DEADLINE_S = 7 * 24 * 3600
ON_BEHALF = "approved by cohort simulate on behalf of a synthetic party"


class CommitteeHandle(Protocol):
    """What the simulation needs of a committee: manifest entries, the CA, approvals."""

    def entries(self) -> list[CommitteeEntry]: ...

    @property
    def ca_pem(self) -> str: ...

    def approve(self, signed: SignedManifest) -> None: ...


class _PartitionResolver:
    """Maps Flower's partition id to a hospital's local settings (picklable for Ray)."""

    def __init__(self, settings: Sequence[HospitalSettings]) -> None:
        self.settings = list(settings)

    def __call__(self, context: Context) -> HospitalSettings:
        return self.settings[int(context.node_config["partition-id"])]


def hospital_settings(config: StudyConfig, out: Path) -> list[HospitalSettings]:
    """Synthetic hospitals on the demo split, with a local policy set on their behalf."""
    seed = config.seed if config.seed is not None else 0
    policy = HospitalPolicy(
        epsilon_cap=config.dp.epsilon,
        delta=config.dp.delta,
        min_clients=config.min_clients,
        modes=frozenset({config.secure}),
        noise_seed=config.seed,
    )
    return [
        HospitalSettings(
            party_id=f"hospital-{i + 1}",
            workdir=str((out / "hospitals" / f"hospital-{i + 1}").resolve()),
            data=config.csv[i] if config.data == "csv" else f"{config.data}:{i}",
            policy=policy,
            demo_hospitals=config.clients,
            demo_seed=seed,
            demo_alpha=config.dirichlet_alpha,
        )
        for i in range(config.clients)
    ]


def _raw_test_csv(config: StudyConfig) -> Dataset:
    return load_csv(Path(config.test_csv), num_classes=config.classes)


def published_normalizer(config: StudyConfig) -> dict[str, Any] | None:
    """The scaling the sponsor publishes: fitted on its own held-out split (demo or CSV);
    synthetic records come standardised, so none."""
    if config.data == "demo":
        return demo_normalizer(seed=config.seed if config.seed is not None else 0).to_dict()
    if config.data == "csv":
        return Normalizer.fit(_raw_test_csv(config)).to_dict()
    return None


def held_out_split(config: StudyConfig) -> Dataset:
    """The sponsor's held-out split for ``config.data``, scaled as the hospitals' data is."""
    seed = config.seed if config.seed is not None else 0
    if config.data == "synthetic":
        return synthetic_split(num_hospitals=config.clients, seed=seed)[1]
    if config.data == "csv":
        raw = _raw_test_csv(config)
        return Normalizer.fit(raw).apply(raw)
    return demo_split(num_hospitals=config.clients, seed=seed, alpha=config.dirichlet_alpha)[1]


def prepare_out(out: Path) -> None:
    """Make ``out`` a fresh simulation directory (see module doc); ConfigError otherwise."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(
                f"--out {out}: holds files that are not a Cohort simulation; use an empty "
                "or new directory"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by cohort simulate; cleared by the next run\n")


@contextlib.contextmanager
def _committee(
    config: StudyConfig, out: Path, given: CommitteeHandle | None
) -> Iterator[CommitteeHandle]:
    if given is not None:
        yield given
        return
    with LocalCommittee(config.committee, workdir=out / "committee", tls=True) as committee:
        yield committee


def _sponsor_identity(out: Path, name: str) -> Identity:
    identity = Identity.generate(name)
    identity.save(out / "sponsor" / f"{name}.json")
    return identity


def create_manifest(
    config: StudyConfig,
    *,
    hospitals: Sequence[HospitalSettings],
    committee: CommitteeHandle,
    provider: ChainProvider,
    sponsor_address: str,
    sponsor: Identity,
    coordinator: Identity,
    features: int,
) -> SignedManifest:
    """The sponsor's manifest for a simulated study, signed (contract address predicted).

    ``features`` is the column count of the sponsor's published data (its test split)."""
    owners = []
    for h in hospitals:
        identity = h.keystore.identity()
        owners.append(
            OwnerEntry(
                party_id=identity.party_id,
                sign_key=identity.public.sign_key,
                box_key=identity.public.box_key,
                payout_address=h.keystore.payout_address(),
            )
        )
    init_seed = config.seed if config.seed is not None else secrets.randbits(63)
    length = num_parameters(
        build_model(config.model, in_features=features, num_classes=config.classes)
    )
    ca = committee.ca_pem
    manifest = Manifest(
        name=config.name,
        nonce=new_nonce(),
        secure=config.secure,
        committee=tuple(committee.entries()),
        quorum=config.quorum,
        min_clients=config.min_clients,
        owners=tuple(owners),
        key_dealer=owners[0].party_id,
        coordinator_key=coordinator.public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=sponsor_address,
        rounds=config.rounds,
        dp=DpTerms(**asdict(config.dp)),
        model=config.model,
        features=features,
        num_classes=config.classes,
        update_length=length,
        init_seed=init_seed,
        server_lr=config.server_lr,
        payout_rule="proportional-to-included-rounds",
        bounty_wei=config.bounty_wei,
        chain_id=provider.chain_id,
        contract=predict_address(provider, sponsor_address),
        deadline=int(time.time()) + DEADLINE_S,
        tls_ca=ca,
        normalizer=published_normalizer(config),
        client_dp=config.client_dp,
        mpc=mpc_terms(config, len(committee.entries())),
    )
    return SignedManifest.sign(manifest, sponsor)


def mpc_terms(config: StudyConfig, members: int) -> MpcTerms | None:
    """MPC mode's terms for a local study: the default field and scale, the configured norm
    bound, and one free loopback port per member for its MPC party (None in other modes)."""
    if config.secure is not SecureMode.MPC:
        return None
    from cohort.federation.deploy_local import free_ports

    return MpcTerms(
        prime=PRIME,
        frac_bits=FRAC_BITS,
        norm_bound=config.mpc_norm_bound,
        rendezvous=tuple(f"127.0.0.1:{port}" for port in free_ports(members)),
    )


def approve_on_behalf(
    signed: SignedManifest,
    contract: StudyContract,
    hospitals: Sequence[HospitalSettings],
    committee: CommitteeHandle,
) -> None:
    """What each operator would do with ``cohort study approve``, for synthetic parties."""
    m = signed.manifest
    check_contract(contract, m)
    for h in hospitals:
        h.policy.check(m)
        approve(
            signed,
            workdir=Path(h.workdir),
            identity=h.keystore.identity(),
            role=Role.OWNER,
            note=ON_BEHALF,
            contract_checked=True,
        )
    committee.approve(signed)


def run_study(
    config: StudyConfig,
    out: Path,
    *,
    committee: CommitteeHandle | None = None,
    chain: ChainProvider | None = None,
    settings: Sequence[HospitalSettings] | None = None,
    on_round: Any = None,
    quiet_flower: bool = True,
    coordinator_class: type[Coordinator] = Coordinator,
) -> dict[str, Any]:
    """Run one study in-process and return (and write) its summary.

    ``coordinator_class`` lets a sponsor run its own coordinator logic (and the adversarial
    tests a scripted malicious one) over the same parties, committee and chain.
    """
    from flwr.simulation import run_simulation

    prepare_out(out)
    hospitals = list(settings) if settings is not None else hospital_settings(config, out)
    if len(hospitals) != config.clients:
        raise ProtocolAbort(f"{len(hospitals)} hospital settings for {config.clients} clients")
    test_set = held_out_split(config)
    provider = chain if chain is not None else EmbeddedChain()
    sponsor_address = provider.accounts()[0]
    sponsor = _sponsor_identity(out, "sponsor")
    coordinator = _sponsor_identity(out, "coordinator")
    run = ServerRun(transcript=out / TRANSCRIPT)

    with _committee(config, out, committee) as members:
        signed = create_manifest(
            config,
            hospitals=hospitals,
            committee=members,
            provider=provider,
            sponsor_address=sponsor_address,
            sponsor=sponsor,
            coordinator=coordinator,
            features=int(test_set.features.shape[1]),
        )
        signed.save(out / MANIFEST)
        contract = deploy_bound(provider, signed)
        approve_on_behalf(signed, contract, hospitals, members)

        def factory(grid: Grid, context: Context) -> Coordinator:
            return coordinator_class(
                signed=signed,
                identity=coordinator,
                grid=grid,
                test_set=test_set,
                contract=contract,
                sponsor=sponsor_address,
                on_round=on_round,
            )

        server_app = make_server_app(factory, run)
        client_app = make_client_app(_PartitionResolver(hospitals))
        init_args: dict[str, Any] = {
            "log_to_driver": False,
            "logging_level": logging.ERROR,
            "num_cpus": max(1, min(os.cpu_count() or 1, config.clients)),
        }
        with _quiet(quiet_flower):
            start_ray(init_args)
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=config.clients,
                backend_config={
                    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                    "init_args": init_args,
                },
            )
    if run.error is not None:
        raise run.error
    if run.outcome is None:
        raise ProtocolAbort("the coordinator finished without an outcome (see Flower's log)")
    reported = config.to_dict()
    if signed.manifest.mpc is not None:
        reported["mpc"] = mpc_config(signed.manifest)
    summary = build_summary(reported, run.outcome)
    summary["runtime"] = "simulation"
    summary["manifest"] = str(out / MANIFEST)
    summary["approvals"] = ON_BEHALF
    if run.outcome.final_model is not None:
        np.save(out / MODEL, run.outcome.final_model)
    write_json(out / SUMMARY, summary)
    return summary


RAY_START_ATTEMPTS = 4


def start_ray(init_args: dict[str, Any], *, attempts: int = RAY_START_ATTEMPTS) -> None:
    """Start Ray for Flower's simulation runtime, retrying a start-up that timed out.

    On a busy machine Ray's head node can miss its own start-up deadlines ("timed out
    waiting for file ... gcs_server_port", "the current node timed out during startup"),
    which would crash the whole simulation. Flower's Ray backend reuses an initialised Ray
    (and shuts it down at the end), so starting it here, with retries, costs nothing when
    the machine is idle. The arguments are the ones Flower's backend would pass.
    """
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                include_dashboard=False,
                **init_args,
            )
            return
        except Exception as exc:  # Ray raises RuntimeError, ConnectionError, TimeoutError...
            ray.shutdown()
            if attempt == attempts:
                raise ProtocolAbort(f"Ray did not start after {attempts} attempts: {exc}") from exc
            log.warning(
                "Ray start-up failed; retrying", extra=fields(attempt=attempt, error=str(exc))
            )


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
