"""The ``cohort`` command line, one command per role.

* ``cohort keys new``      - data owner: create the party's identity and payout account.
* ``cohort study show``    - every operator: read a signed study manifest before approving it.
* ``cohort study approve`` - data owner or committee member: approve a manifest, once.
* ``cohort certs``         - study set-up: a TLS CA and one certificate per committee member.
* ``cohort member``        - committee operator: serve one aggregator member over gRPC.
* ``cohort simulate``      - sponsor/coordinator: run a whole study on one machine.
* ``cohort ledger``        - data owner or auditor: verify a privacy ledger, recompute epsilon.

Every refusal is one line on stderr naming what is wrong, never a traceback: exit 2 for a
bad command line (checked before anything starts), exit 1 for a failed check or run.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cohort import __version__
from cohort.errors import CohortError
from cohort.federation import cli_audit

if TYPE_CHECKING:
    from cohort.crypto.identity import Identity
    from cohort.federation.manifest import Manifest, SignedManifest
    from cohort.federation.policy import HospitalPolicy

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WEI_PER_ETHER = 10**18

_OWNERS = "Data owners (hospitals) and auditors"
_MEMBERS = "Committee members"
_SPONSOR = "Sponsors and study set-up"

app = typer.Typer(
    name="cohort",
    help="Cohort: federated training with differential privacy, encrypted committee "
    "aggregation and on-chain bounties. A hospital runs `cohort keys new`, then "
    "`cohort study show` and `cohort study approve` for each study it joins.",
    no_args_is_help=True,
    add_completion=False,
    # Never render local variables in tracebacks: they may hold key material.
    pretty_exceptions_show_locals=False,
)
study_app = typer.Typer(
    help="Read and approve a signed study manifest (hospitals and committee members).",
    no_args_is_help=True,
)
keys_app = typer.Typer(help="A data owner's identity and payout account.", no_args_is_help=True)
app.add_typer(study_app, name="study", rich_help_panel=_OWNERS)
app.add_typer(keys_app, name="keys", rich_help_panel=_OWNERS)
cli_audit.register(app, panel=_OWNERS)  # cohort audit (federation/cli_audit.py)

console = Console(highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def _fail(message: str, *, code: int = 1) -> NoReturn:
    """One line on stderr, then exit ``code`` (2: bad command line, 1: refused or failed)."""
    err_console.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def _warn(message: str) -> None:
    err_console.print(Text.assemble(("warning: ", "bold yellow"), message))


def _line(label: str, value: str, *, indent: int = 2, width: int = 16) -> None:
    """``label  value`` on one line that is never wrapped (hashes stay whole)."""
    console.print(
        Text.assemble(" " * indent, (f"{label:<{width}}", "bold"), " ", value), soft_wrap=True
    )


def _heading(title: str) -> None:
    console.print(Text(title, style="bold underline"), soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"cohort {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(help=f"Log level for Cohort's JSON logs on stderr: {', '.join(LOG_LEVELS)}."),
    ] = "WARNING",
) -> None:
    from cohort.logs import configure

    if log_level.upper() not in LOG_LEVELS:
        _fail(f"--log-level {log_level!r} is not one of: {', '.join(LOG_LEVELS)}", code=2)
    configure(log_level.upper())


# --------------------------------------------------------------------------- ledger


@app.command(rich_help_panel=_OWNERS)
def ledger(
    path: Annotated[Path, typer.Argument(help="A data owner's privacy ledger (JSON).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verification report as JSON.")
    ] = False,
) -> None:
    """Verify the privacy ledger PATH: hash chain, epsilon recomputed from its DP events, cap.

    Exits 1 naming each violation (edited entry, forged epsilon, epsilon over the cap).
    """
    from cohort.clients.privacy import PrivacyLedger

    try:
        report = PrivacyLedger.verify(path)
    except CohortError as exc:
        _fail(f"ledger rejected: {exc}")
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        table = Table(title=f"privacy ledger {path}")
        table.add_column("owner")
        for column in ("rounds", "studies", "epsilon recorded", "epsilon recomputed", "cap"):
            table.add_column(column, justify="right")
        table.add_column("seeded entries", justify="right")
        cap = "-" if report.epsilon_cap is None else f"{report.epsilon_cap:g}"
        table.add_row(
            report.owner,
            str(report.rounds),
            str(len(report.studies)),
            f"{report.epsilon_recorded:.4f}",
            f"{report.epsilon_recomputed:.4f}",
            cap,
            str(report.seeded_entries),
        )
        console.print(table)
        console.print(f"delta {report.delta:g}; head {report.head}", soft_wrap=True)
    if report.seeded_entries:
        _warn(
            f"{report.seeded_entries} of {report.rounds} entries used seeded DP noise: unfit "
            "for real patient data"
        )
    if report.violations:
        for violation in report.violations:
            err_console.print(Text.assemble(("violation: ", "bold red"), violation))
        _fail(f"ledger rejected: {len(report.violations)} violation(s)")
    if not as_json:
        console.print("ledger verified: hash chain intact, every epsilon recomputed, within cap")


# --------------------------------------------------------------------------- keys


def _public_record(workdir: Path) -> dict[str, str]:
    """The owner's public identity and payout address, as the sponsor puts them in a roster."""
    identity = _owner_identity(workdir)
    from cohort.federation.keystore import KeyStore

    payout = KeyStore(workdir / "keystore", identity.party_id).payout_address()
    return {**identity.public.to_dict(), "payout_address": payout}


def _print_public(record: Mapping[str, str], fingerprint: str) -> None:
    console.print_json(json.dumps(dict(record)))
    err_console.print(
        f"send this to the sponsor for the study's owner roster; key fingerprint {fingerprint} "
        "(read it out when the sponsor checks it)"
    )


@keys_app.command("new")
def keys_new(
    workdir: Annotated[
        Path, typer.Option(help="Your work directory; keys go to WORKDIR/keystore (mode 0600).")
    ],
    party_id: Annotated[str, typer.Option(help="Your id in studies, e.g. hospital-1.")],
) -> None:
    """Create your identity (signing and encryption keys) and payout account, once."""
    from cohort.crypto.identity import check_party_id
    from cohort.federation.keystore import KeyStore

    path = workdir / "keystore" / "identity.json"
    if path.exists():
        _fail(f"{path} already exists: a party keeps one identity (see: cohort keys show)")
    try:
        check_party_id(party_id, "--party-id")
        identity = KeyStore(workdir / "keystore", party_id).identity()
        record = _public_record(workdir)
    except CohortError as exc:
        _fail(str(exc))
    _print_public(record, identity.public.fingerprint())


@keys_app.command("show")
def keys_show(
    workdir: Annotated[Path, typer.Option(help="Your work directory (holds keystore/).")],
) -> None:
    """Print your public identity and payout address (no secret leaves the key store)."""
    try:
        record = _public_record(workdir)
        fingerprint = _owner_identity(workdir).public.fingerprint()
    except CohortError as exc:
        _fail(str(exc))
    _print_public(record, fingerprint)


def _owner_identity(workdir: Path) -> Identity:
    """The data owner's identity from WORKDIR/keystore; never creates one."""
    from cohort.federation.keystore import KeyStore

    path = workdir / "keystore" / "identity.json"
    if not path.is_file():
        _fail(f"no identity in {workdir}: run cohort keys new --workdir {workdir} --party-id ID")
    try:
        party_id = json.loads(path.read_text(encoding="utf-8"))["party_id"]
    except (OSError, ValueError, KeyError, TypeError):
        _fail(f"key store {path}: unreadable identity file")
    if not isinstance(party_id, str):
        _fail(f"key store {path}: party_id must be text")
    return KeyStore(workdir / "keystore", party_id).identity()


def _member_identity(workdir: Path) -> Identity:
    """The committee member's identity from WORKDIR/keys (the layout ``cohort member`` uses)."""
    from cohort.aggregator.keys import IDENTITY_FILE, MemberKeys
    from cohort.aggregator.member import KEYS_DIR

    keys = workdir / KEYS_DIR
    if not (keys / IDENTITY_FILE).is_file():
        _fail(
            f"no member keys in {keys}: run cohort member --workdir {workdir} "
            "--export-identity FILE"
        )
    return MemberKeys.load(keys).identity


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


# --------------------------------------------------------------------------- certs


@app.command(rich_help_panel=_SPONSOR)
def certs(
    out: Annotated[Path, typer.Option(help="Folder for the CA and the member certificates.")],
    member: Annotated[
        list[str], typer.Option(help="A committee member id (repeat for each member).")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="A host name or IP every certificate is valid for (repeat; "
            "default 127.0.0.1 and localhost)."
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing study CA and every member certificate."
        ),
    ] = False,
) -> None:
    """Make a study's TLS CA and one certificate per committee member; print their pins."""
    from cohort.federation.certs import (
        CA_CERT,
        CA_KEY,
        DEFAULT_HOSTS,
        FINGERPRINTS,
        member_files,
        write_study_certs,
    )

    try:
        pins = write_study_certs(
            out, members=member, hosts=tuple(host) if host else DEFAULT_HOSTS, overwrite=overwrite
        )
    except CohortError as exc:
        _fail(str(exc))
    console.print(
        f"wrote the study CA and {len(pins)} member certificates to {out}", soft_wrap=True
    )
    files = {
        CA_CERT: "the CA certificate: goes into the manifest (tls_ca)",
        CA_KEY: "the CA key: keep it offline, it can issue certificates every member trusts",
    }
    for member_id in pins:
        cert_name, key_name = member_files(member_id)
        files[cert_name] = f"with {key_name} (mode 0600): give to {member_id} only"
    width = max(len(name) for name in files)
    for name, purpose in files.items():
        _line(name, purpose, width=width)
    _heading("TLS fingerprints for the manifest (committee[].tls_fingerprint, SHA-256)")
    for member_id, fingerprint in pins.items():
        _line(member_id, fingerprint, width=max(len(m) for m in pins))
    console.print(f"also written to {out / FINGERPRINTS}", soft_wrap=True)


# --------------------------------------------------------------------------- member


@app.command(rich_help_panel=_MEMBERS)
def member(
    ctx: typer.Context,
    workdir: Annotated[
        Path,
        typer.Option(help="Member work directory: keys/ (made on first start), studies/, state."),
    ],
    keystore: Annotated[
        Path | None, typer.Option(help="Key store directory (default: WORKDIR/keys).")
    ] = None,
    member_id: Annotated[
        str | None, typer.Option(help="Member id (default: the work directory's name).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 0,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here when ready.")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM) from the study CA (cohort certs).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its private key (PEM, mode 0600).")] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Serve PLAINTEXT gRPC without a certificate (trusted loopback only)."
        ),
    ] = False,
    export_identity: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Write this member's committee entry (JSON) for the manifest to FILE and exit.",
        ),
    ] = None,
    endpoint: Annotated[
        str, typer.Option(help="host:port callers use (recorded by --export-identity).")
    ] = "",
    grace: Annotated[float, typer.Option(help="Seconds to finish calls on stop.")] = 2.0,
) -> None:
    """Serve one committee member (aggregator) over gRPC until interrupted.

    First: `cohort member --workdir DIR --export-identity FILE`, and send FILE to the sponsor.

    Then, per study: `cohort study approve MANIFEST --workdir DIR --role member`.
    """
    from cohort.aggregator.__main__ import main as member_main

    args = ["--workdir", str(workdir), "--host", host, "--port", str(port), "--grace", str(grace)]
    for flag, value in (
        ("--keystore", keystore),
        ("--member-id", member_id),
        ("--port-file", port_file),
        ("--tls-cert", tls_cert),
        ("--tls-key", tls_key),
        ("--export-identity", export_identity),
    ):
        if value is not None:
            args += [flag, str(value)]
    if endpoint:
        args += ["--endpoint", endpoint]
    if insecure:
        args.append("--insecure")
    log_level = ctx.find_root().params.get("log_level")
    if isinstance(log_level, str):
        args += ["--log-level", log_level.upper()]
    raise typer.Exit(member_main(args))


# --------------------------------------------------------------------------- simulate


def _check_out(out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                _fail(f"--out {out}: {folder} exists and is not a directory", code=2)
            return


@app.command(rich_help_panel=_SPONSOR)
def simulate(
    clients: Annotated[int, typer.Option(help="Hospitals (data owners) in the study.")] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    committee: Annotated[int, typer.Option(help="Aggregator committee members (k).")] = 3,
    quorum: Annotated[int, typer.Option(help="Members that must agree on an aggregate (t).")] = 2,
    secure: Annotated[
        str, typer.Option(help="Secure mode: ckks (encrypted) or none (plaintext FedAvg).")
    ] = "ckks",
    epsilon: Annotated[
        float, typer.Option(help="Per-hospital privacy budget for the whole study (finite, > 0).")
    ] = 3.0,
    seed: Annotated[
        int | None,
        typer.Option(help="Study seed: reproducible runs (unfit for real patient data)."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output directory for summary.json, ledgers and key stores.")
    ] = Path("runs/latest"),
    model: Annotated[
        str, typer.Option(help="Built-in architecture: mlp, mlp:64,32 (hidden widths) or logreg.")
    ] = "mlp",
) -> None:
    """Run a private federated study on one machine (embedded chain, local committee)."""
    from cohort.federation.config import DpSettings, SecureMode, StudyConfig

    if not (math.isfinite(epsilon) and epsilon > 0):
        _fail(
            f"--epsilon must be a finite number > 0 (each hospital's budget for the whole "
            f"study), got {epsilon}",
            code=2,
        )
    _check_out(out)
    from cohort.clients.model import is_builtin_spec

    if not is_builtin_spec(model):
        _fail(
            f"--model {model!r}: the simulation's synthetic hospitals run built-in "
            "architectures only (mlp, mlp:<widths>, logreg)",
            code=2,
        )
    try:
        config = StudyConfig(
            clients=clients,
            rounds=rounds,
            committee=committee,
            quorum=quorum,
            secure=SecureMode.parse(secure),
            dp=DpSettings(epsilon=epsilon),
            seed=seed,
            model=model,
        )
    except CohortError as exc:
        _fail(str(exc), code=2)
    if seed is not None:
        _warn(
            f"seeded run (--seed {seed}): data split, model initialisation and DP noise are "
            "reproducible by anyone who knows the seed; unfit for real patient data"
        )

    from cohort.federation.simulate import SUMMARY, run_study

    progress = Progress(
        TextColumn("[bold]round"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("starting committee, chain and clients", total=rounds)

        def on_round(record: object) -> None:
            acc = getattr(record, "accuracy", float("nan"))
            progress.update(task, advance=1, description=f"accuracy {acc:.3f}")

        try:
            summary = run_study(config, out, on_round=on_round)
        except CohortError as exc:
            progress.stop()
            _fail(f"study aborted: {exc}")
    print_summary(summary)
    console.print(
        f"manifest {summary.get('manifest', '-')}: {summary.get('approvals', '')} "
        f"({clients} hospitals, {committee} committee members)",
        soft_wrap=True,
    )
    console.print(f"summary written to {out / SUMMARY}", soft_wrap=True)
    failure = unfinalized_reasons(summary)
    if failure is not None:
        for reason in failure[1:]:
            err_console.print(f"  {reason}")
        _fail(failure[0])
    if summary.get("stopped"):
        # Detected, not prevented: e.g. the committee lost its quorum. No hospital trained
        # the round that could not complete.
        _fail(f"study stopped early: {summary['stopped']}")


def _float_cell(value: object, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def print_summary(summary: Mapping[str, Any]) -> None:
    """The study's per-round table and its chain line, from ``summary.json``'s content."""
    rounds = summary.get("rounds")
    chain = summary.get("chain")
    rounds = rounds if isinstance(rounds, list) else []
    chain = chain if isinstance(chain, dict) else {}
    table = Table(title=f"study {summary.get('study_id', '?')}")
    for column in ("round", "accuracy", "loss", "max epsilon", "clients", "aggregate", "finalized"):
        table.add_column(column, justify="left" if column == "aggregate" else "right")
    for r in rounds:
        if not isinstance(r, dict):
            continue
        table.add_row(
            str(r.get("round", "?")),
            _float_cell(r.get("accuracy"), 4),
            _float_cell(r.get("loss"), 4),
            _float_cell(r.get("max_epsilon"), 3),
            str(len(r.get("clients_included") or ())),
            str(r.get("aggregate_hash") or "-")[:12],
            "yes" if r.get("finalized") else "no",
        )
    console.print(table)
    console.print(
        f"contract {chain.get('contract', '-')}: {chain.get('finalized_rounds', 0)} rounds "
        f"finalized, paid {chain.get('total_paid_wei', 0)} of {chain.get('bounty_wei', 0)} wei",
        soft_wrap=True,
    )


def unfinalized_reasons(summary: Mapping[str, Any]) -> list[str] | None:
    """None if the study finalized a round; else the failure line and each round's reasons.

    In the plaintext comparison mode nothing is attested on-chain by design: there, a round
    that produced an aggregate counts.
    """
    chain = summary.get("chain")
    rounds = summary.get("rounds")
    config = summary.get("config")
    plaintext = isinstance(config, dict) and config.get("secure") == "none"
    if plaintext and isinstance(rounds, list):
        if any(isinstance(r, dict) and r.get("aggregate_hash") for r in rounds):
            return None
    elif isinstance(chain, dict) and int(chain.get("finalized_rounds") or 0) > 0:
        return None
    reasons: list[str] = []
    if summary.get("stopped"):
        reasons.append(f"stopped: {summary['stopped']}")
    for r in rounds if isinstance(rounds, list) else []:
        if not isinstance(r, dict):
            continue
        parts = [str(r["reason"])] if r.get("reason") else []
        for key in ("declined", "failed"):
            if r.get(key):
                parts.append(f"{key}: {', '.join(map(str, r[key]))}")
        faulty = r.get("faulty_members")
        if isinstance(faulty, dict) and faulty:
            parts.append("faulty members: " + "; ".join(f"{m}: {w}" for m, w in faulty.items()))
        reasons.append(f"round {r.get('round', '?')}: {'; '.join(parts) or 'not finalized'}")
    errors = summary.get("node_errors")
    for e in errors if isinstance(errors, list) else []:
        reasons.append(f"node error: {e}")
    count = len(rounds) if isinstance(rounds, list) else 0
    return [f"the study finalized no round ({count} attempted)", *reasons]


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> None:
    """The ``cohort`` executable: command-line mistakes are one line too (exit 2)."""
    try:
        code = app(args=argv, prog_name="cohort", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        err_console.print(Text.assemble(("error: ", "bold red"), exc.format_message(), where))
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), exc.format_message()))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except CohortError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
