"""The ``cohort`` command line, one command per role.

* ``cohort keys new``      - every party: identity and encrypted Ethereum keystore, once.
* ``cohort data normalizer`` - sponsor: the feature scaling published in the manifest.
* ``cohort study show``    - every operator: read a signed study manifest before approving it.
* ``cohort study approve`` - data owner or committee member: approve a manifest, once.
* ``cohort certs``         - study set-up: a TLS CA and one certificate per committee member.
* ``cohort member``        - committee operator: serve one aggregator member over gRPC.
* ``cohort simulate``      - sponsor/coordinator: run a whole study on one machine.
* ``cohort ledger``        - data owner or auditor: verify a privacy ledger, recompute epsilon.
* ``cohort audit``         - auditor: re-derive every epsilon of a study with dp-accounting.

``keys`` lives in :mod:`cohort.federation.cli_keys`, ``data`` in
:mod:`cohort.federation.cli_data`, ``study`` in :mod:`cohort.federation.cli_study`, ``audit``
in :mod:`cohort.federation.cli_audit`. Every refusal is one line on stderr naming what is
wrong, never a traceback: exit 2 for a bad command line (checked before anything starts),
exit 1 for a failed check or run.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cohort import __version__
from cohort.errors import CohortError
from cohort.federation import cli_audit, cli_deploy
from cohort.federation.cli_common import console, err_console
from cohort.federation.cli_common import fail as _fail
from cohort.federation.cli_common import heading as _heading
from cohort.federation.cli_common import line as _line
from cohort.federation.cli_common import warn as _warn
from cohort.federation.cli_data import data_app
from cohort.federation.cli_keys import keys_app
from cohort.federation.cli_study import study_app

if TYPE_CHECKING:
    pass

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

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
app.add_typer(study_app, name="study", rich_help_panel=_OWNERS)
app.add_typer(keys_app, name="keys", rich_help_panel=_OWNERS)
app.add_typer(data_app, name="data", rich_help_panel=_SPONSOR)
cli_audit.register(app, panel=_OWNERS)  # cohort audit (federation/cli_audit.py)
# cohort node | committee | deploy, and cohort study create|launch|status (cli_deploy.py)
app.add_typer(cli_deploy.node_app, name="node", rich_help_panel=_OWNERS)
app.add_typer(cli_deploy.committee_app, name="committee", rich_help_panel=_MEMBERS)
app.add_typer(cli_deploy.deploy_app, name="deploy", rich_help_panel=_SPONSOR)


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
        str | None,
        typer.Option(
            help=f"Log level for Cohort's JSON logs on stderr: {', '.join(LOG_LEVELS)} "
            "(default: $COHORT_LOG_LEVEL, else WARNING)."
        ),
    ] = None,
) -> None:
    from cohort.logs import configure

    source = "--log-level"
    if log_level is None:
        source, log_level = "COHORT_LOG_LEVEL", os.environ.get("COHORT_LOG_LEVEL", "WARNING")
    if log_level.upper() not in LOG_LEVELS:
        _fail(f"{source} {log_level!r} is not one of: {', '.join(LOG_LEVELS)}", code=2)
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
    password_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="File holding the password of the encrypted attestation key (cohort keys new "
            "--role member; default: $COHORT_KEYSTORE_PASSWORD).",
        ),
    ] = None,
) -> None:
    """Serve one committee member (aggregator) over gRPC until interrupted.

    First: `cohort keys new --role member --dir DIR`, then `cohort member --workdir DIR
    --export-identity FILE --endpoint HOST:PORT --tls-cert C --tls-key K`; send FILE to the
    sponsor.

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
        ("--password-file", password_file),
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
        str,
        typer.Option(
            help="Secure mode: ckks (encrypted), mpc (Shamir shares, norms checked inside "
            "MPC) or none (plaintext FedAvg)."
        ),
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
    data: Annotated[
        str,
        typer.Option(
            help="The hospitals' records: demo (the breast-cancer split, up to ~20 hospitals) "
            "or synthetic (seeded synthetic records, up to 1,024 hospitals: scale runs)."
        ),
    ] = "demo",
    csv: Annotated[
        list[Path] | None,
        typer.Option(
            help="A hospital's own CSV (repeat, one per hospital; sets --data csv and "
            "--clients): header row, numeric features, integer label column 'label'."
        ),
    ] = None,
    test_csv: Annotated[
        Path | None,
        typer.Option(help="With --csv: the sponsor's held-out CSV (evaluation and scaling)."),
    ] = None,
    classes: Annotated[int, typer.Option(help="Label classes K (labels 0..K-1).")] = 2,
    client_dp_noise: Annotated[
        float | None,
        typer.Option(
            help="Client-level DP: noise multiplier sigma of the aggregate (std sigma*C over "
            "any min-clients owners, each adding its share); off when not given."
        ),
    ] = None,
    client_clip: Annotated[
        float,
        typer.Option(help="With --client-dp-noise: L2 bound C on each weighted update."),
    ] = 1.0,
    mpc_norm_bound: Annotated[
        float,
        typer.Option(
            help="With --secure mpc: L2 bound on each weighted update, checked inside MPC; "
            "an update above it is rejected and named."
        ),
    ] = 10.0,  # cohort.federation.config.DEFAULT_MPC_NORM_BOUND
) -> None:
    """Run a private federated study on one machine (embedded chain, local committee)."""
    from cohort.federation.config import DpSettings, SecureMode, StudyConfig
    from cohort.federation.manifest import ClientDpTerms

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
            clients=len(csv) if csv else clients,
            rounds=rounds,
            committee=committee,
            quorum=quorum,
            secure=SecureMode.parse(secure),
            dp=DpSettings(epsilon=epsilon),
            seed=seed,
            model=model,
            data="csv" if csv else data,
            csv=tuple(str(p) for p in csv or ()),
            test_csv=str(test_csv) if test_csv is not None else "",
            classes=classes,
            client_dp=None
            if client_dp_noise is None
            else ClientDpTerms(clip_norm=client_clip, noise_multiplier=client_dp_noise),
            mpc_norm_bound=mpc_norm_bound,
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
