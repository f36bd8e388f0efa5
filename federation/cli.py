"""The ``cohort`` command line.

* ``cohort simulate`` - sponsor/coordinator: run a whole study on one machine.
* ``cohort member``   - committee operator: serve one aggregator member over gRPC.
* ``cohort ledger``   - data owner or auditor: verify a privacy ledger and recompute epsilon.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cohort import __version__
from cohort.errors import CohortError
from cohort.logs import configure

app = typer.Typer(
    name="cohort",
    help="Cohort: federated training with differential privacy, encrypted committee "
    "aggregation and on-chain bounties.",
    no_args_is_help=True,
    add_completion=False,
    # Never render local variables in tracebacks: they may hold key material.
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=False)


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
        str, typer.Option(help="Log level for Cohort's JSON logs on stderr.")
    ] = "WARNING",
) -> None:
    configure(log_level)


@app.command()
def simulate(
    clients: Annotated[int, typer.Option(help="Hospitals (data owners) in the study.")] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    committee: Annotated[int, typer.Option(help="Aggregator committee members (k).")] = 3,
    quorum: Annotated[int, typer.Option(help="Members that must agree on an aggregate (t).")] = 2,
    secure: Annotated[
        str, typer.Option(help="Secure mode: ckks (encrypted) or none (plaintext FedAvg).")
    ] = "ckks",
    epsilon: Annotated[
        float, typer.Option(help="Per-hospital privacy budget for the whole study.")
    ] = 3.0,
    seed: Annotated[
        int | None,
        typer.Option(help="Study seed: reproducible runs (unfit for real patient data)."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output directory for summary.json, ledgers and key stores.")
    ] = Path("runs/latest"),
    model: Annotated[
        str, typer.Option(help="Model spec: mlp, mlp:64,32, logreg or package.module:factory.")
    ] = "mlp",
) -> None:
    """Run a private federated study on one machine (embedded chain, local committee)."""
    from cohort.federation.config import DpSettings, SecureMode, StudyConfig
    from cohort.federation.simulate import SUMMARY, run_study

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
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

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
            console.print(f"[red]study aborted:[/red] {exc}")
            raise typer.Exit(1) from None
    print_summary(summary)
    console.print(f"summary written to {out / SUMMARY}")


def print_summary(summary: dict[str, object]) -> None:
    rounds = summary["rounds"]
    chain = summary["chain"]
    table = Table(title=f"study {summary['study_id']}")
    for column in ("round", "accuracy", "loss", "max epsilon", "clients", "aggregate", "finalized"):
        table.add_column(column, justify="right" if column not in ("aggregate",) else "left")
    assert isinstance(rounds, list)
    assert isinstance(chain, dict)
    for r in rounds:
        table.add_row(
            str(r["round"]),
            f"{r['accuracy']:.4f}",
            f"{r['loss']:.4f}",
            f"{r['max_epsilon']:.3f}",
            str(len(r["clients_included"])),
            (r["aggregate_hash"] or "-")[:12],
            "yes" if r["finalized"] else "no",
        )
    console.print(table)
    console.print(
        f"contract {chain['contract']}: {chain['finalized_rounds']} rounds finalized, "
        f"paid {chain['total_paid_wei']} of {chain['bounty_wei']} wei"
    )


@app.command()
def member(
    keystore: Annotated[Path, typer.Option(help="Member key store directory (created if absent).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 0,
    port_file: Annotated[
        Path | None, typer.Option(help="Write the bound port here when ready.")
    ] = None,
) -> None:
    """Serve one committee member (aggregator) over gRPC until interrupted."""
    from cohort.aggregator.__main__ import main as member_main

    args = ["--keystore", str(keystore), "--host", host, "--port", str(port)]
    if port_file is not None:
        args += ["--port-file", str(port_file)]
    raise typer.Exit(member_main(args))


@app.command()
def ledger(
    path: Annotated[Path, typer.Argument(help="A data owner's privacy ledger (JSON).")],
) -> None:
    """Verify a privacy ledger's hash chain and recompute its epsilon from the DP events."""
    from cohort.clients.privacy import PrivacyLedger

    try:
        data = json.loads(path.read_text())
        book = PrivacyLedger.open(
            path,
            owner=data["owner"],
            epsilon_cap=float(data["epsilon_cap"]),
            delta=float(data["delta"]),
        )
    except (OSError, KeyError, ValueError, CohortError) as exc:
        console.print(f"[red]ledger rejected:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(
        json.dumps(
            {
                "owner": data["owner"],
                "epsilon": book.epsilon(),
                "cap": data["epsilon_cap"],
                "rounds": len(data.get("entries", [])),
            }
        )
    )


def main() -> None:
    try:
        app()
    except CohortError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
