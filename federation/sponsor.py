"""The sponsor's side of a deployed study: create it, launch it on the SuperLink, follow it.

* :func:`create_study` (``cohort study create``): reads ``study.toml``
  (:class:`~cohort.federation.deploy_config.StudyFile`), the members' and hospitals' public
  entries, the held-out test split and the published normaliser; writes the signed manifest
  to ``<out>/manifest.json`` and deploys the study contract bound to its hash, escrowing the
  bounty, at the address the manifest names.
* :func:`launch_study` (``cohort study launch``): runs ``flwr run`` with Cohort's Flower App
  against the SuperLink of ``[superlink]``, passing the run config the ServerApp reads (see
  :mod:`cohort.federation.server_app`), and waits for ``<out>/summary.json``.
* :func:`study_status` (``cohort study status``): the contract's view (finalized rounds,
  settlement) next to the coordinator's saved state.

The sponsor's Ethereum key is unlocked from its encrypted keystore with the password file the
study file names; it signs transactions locally (the node never sees it).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cohort.bounties.chain import RpcChain
from cohort.bounties.study import StudyContract, predict_address
from cohort.clients.data import Normalizer, load_csv
from cohort.clients.model import build_model, num_parameters
from cohort.crypto.fixed_point import FRAC_BITS, PRIME
from cohort.errors import BadInputError, ConfigError, ProtocolAbort
from cohort.federation.approval import deploy_bound
from cohort.federation.config import DpSettings
from cohort.federation.deploy_config import StudyFile
from cohort.federation.manifest import (
    ClientDpTerms,
    CommitteeEntry,
    DpTerms,
    Manifest,
    MpcTerms,
    OwnerEntry,
    SignedManifest,
    new_nonce,
)
from cohort.federation.server_app import SUMMARY
from cohort.logs import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
RUN_CONFIG = "run-config.toml"
FLWR_HOME = "flwr"
CONNECTION = "cohort"
PAYOUT_RULE = "proportional-to-included-rounds"


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInputError(f"{what} {path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise BadInputError(f"{what} {path}: not JSON ({exc})") from None


def _eth_keystore(study: StudyFile) -> Path:
    from cohort.federation.keyfiles import KeyRole, eth_keystore_path

    return eth_keystore_path(study.sponsor_keys, KeyRole.SPONSOR)


def _sponsor_chain(study: StudyFile) -> RpcChain:
    from cohort.federation.keyfiles import read_password, unlock_eth_keystore

    key = unlock_eth_keystore(_eth_keystore(study), read_password(study.password_file))
    return RpcChain(study.chain_url, private_keys=[key])


def create_study(study: StudyFile, *, now: float | None = None) -> tuple[SignedManifest, str]:
    """Write ``<out>/manifest.json`` and deploy its contract; returns (manifest, address)."""
    from cohort.federation.keyfiles import SponsorKeys

    out = study.out
    path = out / MANIFEST
    if path.exists():
        raise ConfigError(
            f"{path} exists: one study per output folder (a new study needs a new [sponsor] out)"
        )
    terms = study.terms
    sponsor, coordinator = SponsorKeys.load(study.sponsor_keys)
    committee = tuple(CommitteeEntry.from_dict(_json(p, "committee entry")) for p in study.members)
    owners = tuple(OwnerEntry.from_dict(_json(p, "owner entry")) for p in study.owners)
    normalizer = Normalizer.from_dict(_json(study.normalizer, "normaliser"))
    test = load_csv(study.test_data, label_column=study.label_column, num_classes=terms.classes)
    features = int(test.features.shape[1])
    length = num_parameters(
        build_model(terms.model, in_features=features, num_classes=terms.classes)
    )
    try:
        ca = study.ca.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"{study.ca}: cannot read the study CA ({exc.strerror})") from None
    chain = _sponsor_chain(study)
    sponsor_address = chain.accounts()[0]
    dealer = terms.key_dealer or owners[0].party_id
    deadline = int(now if now is not None else time.time()) + int(terms.deadline_days * 86400)
    manifest = Manifest(
        name=terms.name,
        nonce=new_nonce(),
        secure=terms.secure,
        committee=committee,
        quorum=terms.quorum,
        min_clients=terms.min_clients,
        owners=owners,
        key_dealer=dealer,
        coordinator_key=coordinator.public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=sponsor_address,
        rounds=terms.rounds,
        dp=DpTerms(**{**asdict(DpSettings()), **terms.dp}),
        client_dp=None if terms.client_dp is None else ClientDpTerms(**terms.client_dp),
        model=terms.model,
        features=features,
        num_classes=terms.classes,
        update_length=length,
        init_seed=terms.seed if terms.seed is not None else secrets.randbits(63),
        server_lr=terms.server_lr,
        payout_rule=PAYOUT_RULE,
        bounty_wei=terms.bounty_wei,
        chain_id=chain.chain_id,
        contract=predict_address(chain, sponsor_address),
        deadline=max(deadline, chain.latest_timestamp() + 3600),
        tls_ca=ca,
        normalizer=normalizer.to_dict(),
        mpc=None
        if terms.mpc is None
        else MpcTerms(
            prime=PRIME,
            frac_bits=FRAC_BITS,
            norm_bound=terms.mpc["norm_bound"],
            rendezvous=terms.mpc["rendezvous"],
        ),
    )
    signed = SignedManifest.sign(manifest, sponsor)
    out.mkdir(parents=True, exist_ok=True)
    contract = deploy_bound(chain, signed)
    signed.save(path)
    return signed, contract.address


def flwr_home(study: StudyFile) -> Path:
    """The sponsor's Flower CLI configuration: one connection, ``cohort``, to the SuperLink."""
    home = study.out / FLWR_HOME
    home.mkdir(parents=True, exist_ok=True)
    link = study.superlink
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{link.address}"',
    ]
    if link.insecure:
        lines.append("insecure = true")
    else:
        assert link.root_certificates is not None
        lines.append(f'root-certificates = "{link.root_certificates.resolve()}"')
    (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return home


def flwr_env(study: StudyFile) -> dict[str, str]:
    """The environment for ``flwr`` commands: this venv's scripts first, the study's home."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home(study))
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_config(study: StudyFile) -> dict[str, str]:
    """The ServerApp's run config (paths on the SuperLink's machine, see server_app)."""
    from cohort.federation.keyfiles import COORDINATOR_FILE

    if study.password_file is None:
        raise ConfigError(
            f"{study.path}: [sponsor] password-file is required to launch (the coordinator "
            "unlocks the sponsor's Ethereum key to relay attestations and settle)"
        )
    return {
        "manifest": str((study.out / MANIFEST).resolve()),
        "chain-url": study.chain_url,
        "coordinator-key": str((study.sponsor_keys / COORDINATOR_FILE).resolve()),
        "eth-keystore": str(_eth_keystore(study).resolve()),
        "eth-password-file": str(study.password_file.resolve()),
        "test-data": str(study.test_data.resolve()),
        "out": str(study.out.resolve()),
    }


def default_app_dir() -> Path:
    """This installation's Flower App folder (the source tree holding pyproject.toml)."""
    import cohort.federation

    root = Path(cohort.federation.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text("utf-8"):
        raise ConfigError("no Cohort Flower App found next to the package: pass --app DIR")
    return root


def launch_command(study: StudyFile, app: Path) -> list[str]:
    """``flwr run APP cohort --run-config <out>/run-config.toml --stream``."""
    config = run_config(study)
    text = "".join(f'{k} = "{_toml_text(v)}"\n' for k, v in config.items())
    (study.out / RUN_CONFIG).write_text(text, encoding="utf-8")
    flwr = shutil.which("flwr", path=flwr_env(study)["PATH"]) or "flwr"
    return [
        flwr,
        "run",
        str(app),
        CONNECTION,
        "--run-config",
        str(study.out / RUN_CONFIG),
        "--stream",
    ]


def _toml_text(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ConfigError(f"{value!r}: quotes, backslashes and newlines are not allowed in paths")
    return value


def launch_study(
    study: StudyFile, *, app: Path | None = None, log_file: Path | None = None
) -> dict[str, Any]:
    """Run the study on the SuperLink; return ``<out>/summary.json`` once the run finished."""
    if not (study.out / MANIFEST).is_file():
        raise ConfigError(f"{study.out / MANIFEST}: no manifest; run cohort study create first")
    summary_path = study.out / SUMMARY
    before = summary_path.stat().st_mtime_ns if summary_path.exists() else None
    argv = launch_command(study, app if app is not None else default_app_dir())
    stdout = log_file.open("ab") if log_file is not None else None
    try:
        done = subprocess.run(
            argv,
            env=flwr_env(study),
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
            check=False,
        )
    finally:
        if stdout is not None:
            stdout.close()
    if done.returncode != 0:
        raise ProtocolAbort(f"flwr run exited with status {done.returncode}")
    after = summary_path.stat().st_mtime_ns if summary_path.exists() else None
    if after is None or after == before:
        raise ProtocolAbort(
            f"the run ended without writing {summary_path} (see the SuperLink's log and "
            "`flwr log` for the ServerApp's error)"
        )
    summary: dict[str, Any] = _json(summary_path, "summary")
    return summary


def study_status(study: StudyFile) -> dict[str, Any]:
    """What the chain says about the study, and what the coordinator saved."""
    from cohort.federation.coordinator_state import StateStore

    signed = SignedManifest.load(study.out / MANIFEST)
    m = signed.manifest
    chain = RpcChain(study.chain_url)
    contract = StudyContract.at(chain, m.contract)
    state = StateStore(study.out).load(m.study_id)
    return {
        "study_id": m.study_id,
        "name": m.name,
        "contract": m.contract,
        "rounds": m.rounds,
        "finalized": [r for r in range(1, m.rounds + 1) if contract.is_finalized(r)],
        "settled": contract.is_settled(),
        "bounty_wei": contract.bounty_wei(),
        "coordinator": None
        if state is None
        else {
            "finished_round": state.finished_round,
            "rounds": [asdict(r) for r in state.rounds],
        },
    }
