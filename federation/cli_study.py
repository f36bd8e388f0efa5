"""``cohort study``: reading and approving a signed study manifest (data owners and committee
members). Their keys come from ``cohort keys`` (:mod:`cohort.federation.cli_keys`).

* ``cohort study show MANIFEST`` - every operator: read a manifest before approving it;
* ``cohort study approve MANIFEST`` - a data owner or committee member approves it, once.
"""

from __future__ import annotations

import datetime as _dt
import json
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cohort.errors import CohortError
from cohort.federation.cli_common import console
from cohort.federation.cli_common import fail as _fail
from cohort.federation.cli_common import heading as _heading
from cohort.federation.cli_common import line as _line
from cohort.federation.cli_common import warn as _warn

if TYPE_CHECKING:
    from cohort.crypto.identity import Identity
    from cohort.federation.manifest import Manifest, SignedManifest
    from cohort.federation.policy import HospitalPolicy

WEI_PER_ETHER = 10**18

study_app = typer.Typer(
    help="Read and approve a signed study manifest (hospitals and committee members).",
    no_args_is_help=True,
)


def _owner_identity(workdir: Path) -> Identity:
    """The data owner's identity from WORKDIR/keystore; never creates one."""
    from cohort.federation.keystore import KeyStore

    path = workdir / "keystore" / "identity.json"
    if not path.is_file():
        _fail(
            f"no identity in {workdir}: run cohort keys new --role owner --dir {workdir} "
            "--party-id ID"
        )
    try:
        party_id = json.loads(path.read_text(encoding="utf-8"))["party_id"]
    except (OSError, ValueError, KeyError, TypeError):
        _fail(f"key store {path}: unreadable identity file")
    if not isinstance(party_id, str):
        _fail(f"key store {path}: party_id must be text")
    return KeyStore(workdir / "keystore", party_id).identity()


def _member_identity(workdir: Path) -> Identity:
    """The committee member's identity from WORKDIR/keys (the layout ``cohort member`` uses)."""
    from cohort.aggregator.keys import IDENTITY_FILE, load_member_identity
    from cohort.aggregator.member import KEYS_DIR

    keys = workdir / KEYS_DIR
    if not (keys / IDENTITY_FILE).is_file():
        _fail(f"no member keys in {keys}: run cohort keys new --role member --dir {workdir}")
    return load_member_identity(keys).identity


# --------------------------------------------------------------------------- study


def _load_manifest(path: Path) -> SignedManifest:
    """Parse a signed manifest and verify the sponsor's signature; one line if it fails."""
    from cohort.federation.manifest import SignedManifest

    try:
        return SignedManifest.load(path)
    except CohortError as exc:
        message = str(exc)
        _fail(message if str(path) in message else f"{path}: {message}")


def _ether(wei: int) -> str:
    whole, frac = divmod(wei, WEI_PER_ETHER)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".")


def _utc(seconds: int) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC).isoformat().replace("+00:00", "Z")


def _print_manifest(path: Path, manifest: Manifest) -> None:
    from cohort.crypto.identity import PublicIdentity
    from cohort.federation.manifest import SecureMode

    sponsor = PublicIdentity("sponsor", manifest.sponsor_key, manifest.sponsor_key)
    k = len(manifest.committee)
    modes = {
        SecureMode.CKKS: "ckks (updates encrypted; the committee sums ciphertexts)",
        SecureMode.NONE: "none (PLAINTEXT updates through the coordinator: not for patient data)",
    }
    _heading(f"Study manifest {path}")
    _line("study id", manifest.study_id)
    _line("name", manifest.name)
    _line(
        "sponsor",
        f"signature verified with key fingerprint {sponsor.fingerprint()} (check it with the "
        "sponsor)",
    )
    _line("sponsor address", manifest.sponsor_address)
    _line("secure mode", modes.get(manifest.secure, manifest.secure.value))
    _line("quorum", f"{manifest.quorum} of {k} committee members must agree")
    _line("min clients", f"{manifest.min_clients} data owners in every aggregate")
    _line("rounds", str(manifest.rounds))
    dealer = manifest.owner(manifest.key_dealer)
    _line(
        "key dealer",
        f"{manifest.key_dealer} (key fingerprint {dealer.identity.fingerprint()})"
        if dealer is not None
        else (manifest.key_dealer or "-"),
    )
    _line("coordinator", f"key fingerprint {manifest.coordinator.fingerprint()}")

    tls = "NO TLS"
    if manifest.tls_ca:
        from cohort.crypto.tls import cert_fingerprint_hex

        tls = f"CA sha256 {cert_fingerprint_hex(manifest.tls_ca.encode('utf-8'))}"
    _heading(f"Committee ({k} members; TLS: {tls})")
    for m in manifest.committee:
        _line(m.member_id, f"endpoint {m.endpoint}")
        _line("", f"eth address {m.eth_address}")
        _line("", f"key fingerprint {m.identity.fingerprint()}")
        _line("", f"tls sha256 {m.tls_fingerprint.hex()}" if m.tls_fingerprint else "NO TLS")

    _heading(f"Data owners ({len(manifest.owners)})")
    for o in manifest.owners:
        _line(o.party_id, f"key fingerprint {o.identity.fingerprint()}")
        _line("", f"payout address {o.payout_address}")

    dp = manifest.dp
    _heading("DP terms (each owner, whole study; your own cap still applies)")
    _line("epsilon", f"{dp.epsilon:g}")
    _line("delta", f"{dp.delta:g}")
    _line("local epochs", f"{dp.local_epochs} per round")
    _line("batch size", f"{dp.batch_size} examples (expected)")
    _line("clipping bound", f"C = {dp.max_grad_norm:g} (per-example L2 norm)")
    _line("learning rate", f"{dp.lr:g}")

    _heading("Model")
    _line("model", manifest.model)
    _line("features", str(manifest.features))
    _line("classes", str(manifest.num_classes))
    _line("normalizer", "included" if manifest.normalizer is not None else "not included")
    _line("update length", f"{manifest.update_length} values")
    _line("server lr", f"{manifest.server_lr:g}")

    _heading("Bounty and chain")
    _line("payout rule", manifest.payout_rule)
    _line("bounty", f"{manifest.bounty_wei} wei ({_ether(manifest.bounty_wei)} ether)")
    _line("chain id", str(manifest.chain_id))
    _line("contract", manifest.contract)
    _line("deadline", f"{_utc(manifest.deadline)} (UTC)")


@study_app.command("show")
def study_show(
    manifest: Annotated[Path, typer.Argument(help="The signed study manifest (JSON).")],
) -> None:
    """Print the terms of the signed study MANIFEST for whoever decides to approve it."""
    signed = _load_manifest(manifest)
    _print_manifest(manifest, signed.manifest)


def _load_policy(path: Path) -> HospitalPolicy:
    from cohort.federation.policy import HospitalPolicy

    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"policy {path}: cannot read ({exc.strerror})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        _fail(f"policy {path}: not valid TOML ({exc})")
    table = document.get("policy")
    if not isinstance(table, dict):
        _fail(f"policy {path}: no [policy] table")
    try:
        return HospitalPolicy.from_mapping(table)
    except CohortError as exc:
        _fail(f"policy {path}: {exc}")


def _check_contract(manifest: Manifest, chain_url: str) -> None:
    """The study contract on ``chain_url`` is bound to ``manifest``; else one line, exit 1."""
    from cohort.bounties.chain import RpcChain
    from cohort.bounties.study import StudyContract
    from cohort.federation.approval import check_contract

    try:
        provider = RpcChain(chain_url)
        check_contract(StudyContract.at(provider, manifest.contract), manifest)
    except CohortError as exc:
        _fail(f"contract {manifest.contract} on {chain_url}: {exc}")


@study_app.command("approve")
def study_approve(
    manifest: Annotated[Path, typer.Argument(help="The signed study manifest (JSON).")],
    workdir: Annotated[
        Path,
        typer.Option(help="Your work directory: keystore/ (owner) or keys/ (member) inside."),
    ],
    role: Annotated[str, typer.Option(help="Your role in the study: owner or member.")],
    policy: Annotated[
        Path | None,
        typer.Option(
            help="Owner: your policy TOML (\\[policy] epsilon-cap, delta, min-clients, modes, "
            "models, noise-seed); required for --role owner."
        ),
    ] = None,
    chain_url: Annotated[
        str | None,
        typer.Option(help="Ethereum JSON-RPC URL: check the study contract is bound to it."),
    ] = None,
) -> None:
    """Approve the signed study MANIFEST once; you then act only on messages for this study."""
    from cohort.federation.approval import APPROVAL_FILE, Role, approve, check_party_in, study_dir

    try:
        party_role = Role(role.lower())
    except ValueError:
        _fail(f"--role must be one of: {', '.join(r.value for r in Role)}; got {role!r}", code=2)
    if party_role is Role.OWNER and policy is None:
        _fail(
            "--policy FILE.toml is required with --role owner (your budget cap and limits)",
            code=2,
        )
    if party_role is Role.MEMBER and policy is not None:
        _fail("--policy applies to --role owner only", code=2)

    signed = _load_manifest(manifest)
    terms = signed.manifest
    hospital = _load_policy(policy) if policy is not None else None
    try:
        identity = (
            _owner_identity(workdir) if party_role is Role.OWNER else _member_identity(workdir)
        )
        check_party_in(terms, identity, party_role)
        if hospital is not None:
            hospital.check(terms)
    except CohortError as exc:
        _fail(str(exc))
    if chain_url is not None:
        _check_contract(terms, chain_url)
    already = (study_dir(workdir, terms.study_id) / APPROVAL_FILE).exists()
    try:
        approval = approve(
            signed,
            workdir=workdir,
            identity=identity,
            role=party_role,
            contract_checked=chain_url is not None,
        )
    except CohortError as exc:
        _fail(str(exc))
    home = study_dir(workdir, terms.study_id)
    verb = "already approved" if already else "approved"
    console.print(
        f"{verb} study {terms.study_id} ({terms.name}) as {party_role.value} "
        f"{identity.party_id} at {approval.approved_at}",
        soft_wrap=True,
    )
    console.print(f"approval: {home / APPROVAL_FILE}", soft_wrap=True)
    if hospital is not None and terms.dp.epsilon > hospital.epsilon_cap:
        _warn(
            f"the study's epsilon {terms.dp.epsilon:g} is above your epsilon-cap "
            f"{hospital.epsilon_cap:g}: your budget guard declines rounds once your ledger "
            "reaches your cap"
        )
    if chain_url is not None:
        console.print(
            f"contract {terms.contract} on chain {terms.chain_id}: runs the committed "
            "CohortStudy build and is bound to this manifest",
            soft_wrap=True,
        )
    else:
        _warn(
            f"contract {terms.contract} not checked: run this again with --chain-url URL "
            "before the first round to check it is bound to this manifest"
        )
