"""``cohort audit RUN_DIR``: the privacy auditor's command (see :mod:`cohort.federation.audit`).

Registered on the ``cohort`` app by :func:`register`. Prints one table row per hospital
(rounds, epsilon recorded / recomputed by Opacus's PRV / by dp-accounting's PLD and RDP,
cap, seeded entries, verdict), says plainly when the study was seeded, then every violation
on its own line. Exit 0 when every check passed, 1 on any violation or when the run cannot
be read (one line: no manifest, a manifest that does not verify, an unreadable ledger), 2
for a bad command line. ``--report FILE.html`` also writes the audit as one self-contained
HTML page (:mod:`cohort.federation.audit_report`) and prints its path; the exit code stays
the audit's verdict. ``--empirical`` also runs the one-run membership-inference audit
(:mod:`cohort.clients.empirical`) for the study's first hospital on the demo split of a
``cohort simulate`` run and prints its empirical epsilon lower bound next to the
theoretical epsilon; exit 1 if the lower bound exceeds it (a DP bug).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cohort.errors import CohortError
from cohort.federation.cli_common import console, err_console
from cohort.federation.cli_common import fail as _fail

if TYPE_CHECKING:
    from cohort.bounties.study import StudyContract
    from cohort.clients.empirical import EmpiricalAudit
    from cohort.federation.audit import AuditReport


def _contract(chain_url: str | None, address: str | None) -> StudyContract | None:
    """The study contract at ``address`` over ``chain_url`` (read-only), or None."""
    if chain_url is None and address is None:
        return None
    if chain_url is None or address is None:
        raise typer.BadParameter("--chain-url and --contract go together")
    from cohort.bounties.chain import RpcChain
    from cohort.bounties.study import StudyContract

    return StudyContract.at(RpcChain(chain_url), address)


def _run(
    run_dir: Path, *, show_progress: bool, contract: StudyContract | None = None
) -> AuditReport:
    from cohort.federation.audit import audit_run, find_ledgers

    progress = Progress(
        TextColumn("auditing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not show_progress,
    )
    with progress:
        task = progress.add_task("ledgers", total=len(find_ledgers(run_dir)))
        started: list[str] = []

        def step(hospital: str) -> None:
            if started:
                progress.advance(task)
            started.append(hospital)
            progress.update(task, description=hospital)

        report = audit_run(run_dir, progress=step, contract=contract)
        progress.advance(task)
    return report


def _table(report: AuditReport) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title=f"privacy audit of study {report.study_id[:16]}... (epsilon: recorded, "
        "recomputed by PRV, PLD, RDP)",
    )
    table.add_column("hospital", no_wrap=True, min_width=10)
    for column in ("rounds", "recorded", "PRV", "PLD", "RDP", "cap", "seeded"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for h in report.hospitals:
        table.add_row(
            h.hospital,
            f"{len(h.rounds)}/{report.rounds}",
            f"{h.epsilon_recorded:.4f}",
            f"{h.epsilon_prv:.4f}",
            f"{h.epsilon_pld:.4f}",
            f"{h.epsilon_rdp:.4f}",
            "-" if h.cap is None else f"{h.cap:g}",
            str(h.seeded_entries),
            Text("ok", style="green") if h.ok else Text("FAIL", style="bold red"),
        )
    return table


def _write_report(report: AuditReport, *, run_dir: Path, path: Path, quiet: bool) -> None:
    """Write the HTML report atomically; say where (on stderr when stdout carries JSON)."""
    from cohort.federation.audit_report import render_report
    from cohort.files import write_atomic

    try:
        write_atomic(path, render_report(report, run_dir=run_dir).encode("utf-8"))
    except OSError as exc:
        _fail(f"audit report not written: {path}: {exc.strerror or exc}")
    (err_console if quiet else console).print(f"report: {path}", soft_wrap=True)


EMPIRICAL_HOSPITAL = "hospital-1"
EMPIRICAL_CANARIES = 64
EMPIRICAL_GUESSES = 16


def _empirical(run_dir: Path) -> EmpiricalAudit:
    """Run the one-run audit for the first hospital of a ``cohort simulate`` study."""
    from cohort.clients.data import demo_split
    from cohort.clients.empirical import one_run_audit
    from cohort.federation.audit import load_manifest
    from cohort.federation.dp_terms import dp_config

    summary_path = run_dir / "summary.json"
    try:
        study = json.loads(summary_path.read_text(encoding="utf-8"))["config"]
        clients, seed = int(study["clients"]), int(study.get("seed") or 0)
        alpha = float(study.get("dirichlet_alpha", 1.0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _fail(
            f"empirical audit refused: {summary_path}: not a cohort simulate study "
            f"({type(exc).__name__}: {exc})"
        )
    try:
        manifest = load_manifest(run_dir)
        config = dp_config(manifest)
        hospitals, _ = demo_split(num_hospitals=clients, seed=seed, alpha=alpha)
        result = one_run_audit(
            hospitals[0],
            config=config,
            canaries=EMPIRICAL_CANARIES,
            guesses=EMPIRICAL_GUESSES,
            seed_key=None,
            rounds=manifest.rounds,
            model=manifest.model,
        )
    except CohortError as exc:
        _fail(f"empirical audit refused: {exc}")
    return result


def _print_empirical(result: EmpiricalAudit, *, quiet: bool) -> None:
    """The empirical line; exit 1 if the lower bound passes the theoretical epsilon."""
    from cohort.clients.empirical import EmpiricalAuditFailed

    (err_console if quiet else console).print(
        f"empirical audit (hospital-1, demo split): {result.correct}/{result.guesses} correct "
        f"guesses over {result.canaries} canaries ({result.included} included); empirical "
        f"epsilon lower bound {result.epsilon_lower:.4f} at {100 * (1 - result.beta):g}% "
        f"confidence vs theoretical epsilon {result.epsilon_theoretical:.4f} "
        f"(delta {result.delta:g})",
        soft_wrap=True,
    )
    try:
        result.check()
    except EmpiricalAuditFailed as exc:
        _fail(str(exc))


def audit(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A `cohort simulate` run directory (or any with manifest.json and "
            "hospitals/<id>/ledger-*.json)."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the audit report as JSON.")
    ] = False,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            metavar="FILE.html",
            help="Also write the audit as one self-contained HTML page (verdict, epsilon "
            "charts per hospital, DP parameters, accuracy, attestations, failed checks).",
            dir_okay=False,
        ),
    ] = None,
    chain_url: Annotated[
        str | None,
        typer.Option(
            "--chain-url",
            metavar="URL",
            help="JSON-RPC URL of the study's chain (with --contract): also check every "
            "ledger's head and epsilon after each finalized round against the contract's "
            "LedgerHead events, and with client-level DP each round's client set size "
            "against the contributors of its RoundFinalized event.",
        ),
    ] = None,
    contract_address: Annotated[
        str | None,
        typer.Option(
            "--contract",
            metavar="ADDR",
            help="The study contract's address (with --chain-url); it must be the committed "
            "build bound to the run's manifest.",
        ),
    ] = None,
    empirical: Annotated[
        bool,
        typer.Option(
            "--empirical",
            help="Also train the first hospital's model (cohort simulate demo split) with "
            "inserted canaries and print the one-run audit's empirical epsilon lower bound "
            "next to the theoretical one; exit 1 if it is higher.",
        ),
    ] = False,
) -> None:
    """Audit a study's privacy claims from its published files: every ledger's hash chain,
    every epsilon recomputed with Opacus's PRV and dp-accounting's PLD and RDP, caps, the
    manifest's DP terms, seeded noise; with --chain-url/--contract, each ledger's heads
    against the study contract.

    Exits 1 with one line per violation naming hospital, round and check.
    """
    try:
        contract = _contract(chain_url, contract_address)
        report = _run(run_dir, show_progress=not as_json, contract=contract)
    except CohortError as exc:
        _fail(f"audit refused: {exc}")
    found = None
    if empirical and report.ok:
        found = _empirical(run_dir)
        report = dataclasses.replace(
            report, empirical={**found.to_dict(), "hospital": EMPIRICAL_HOSPITAL}
        )
    if report_file is not None:
        _write_report(report, run_dir=run_dir, path=report_file, quiet=as_json)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        console.print(_table(report))
        console.print(
            f"epsilon at delta {report.delta:g}, every study on each dataset composed; "
            f"the manifest allows {report.study_epsilon:g} per hospital for this study; "
            "PRV (Opacus, declared) and PLD agree within 2 x 0.01 + 0.5%; RDP is a looser "
            "upper bound",
            soft_wrap=True,
        )
        level = report.client_level
        if level is not None:
            console.print(
                f"client-level DP (one whole hospital, apart from the record-level epsilons "
                f"above): epsilon {level['epsilon_pld']:.4f} at delta {level['delta']:g} "
                f"(dp-accounting PLD) over {level['rounds_released']} released round(s), "
                f"clip {level['clip_norm']:g}, sigma {level['noise_multiplier']:g} for at "
                f"least {level['min_clients']} owners",
                soft_wrap=True,
            )
    for h in report.hospitals:
        if h.seeded_entries:
            err_console.print(
                Text.assemble(
                    ("seeded: ", "bold yellow"),
                    f"{h.hospital}: {h.seeded_entries} of {len(h.rounds)} rounds of this study "
                    "used seeded DP noise: reproducible by whoever knows the seed, so this "
                    "study is unfit for real patient data",
                )
            )
    if report.violations:
        for violation in report.violations:
            err_console.print(Text.assemble(("violation: ", "bold red"), violation))
        _fail(f"audit failed: {len(report.violations)} violation(s)")
    if found is not None:
        _print_empirical(found, quiet=as_json)
    if not as_json:
        chain = (
            ""
            if report.chain_contract is None
            else f"; ledger heads and epsilons match contract {report.chain_contract}"
        )
        if report.chain_contract is not None and report.client_level is not None:
            chain += (
                "; the client-level client set size of every round matches the contract's "
                "finalized round"
            )
        console.print(
            f"audit passed: {len(report.hospitals)} ledger(s), hash chains intact, every "
            f"epsilon recomputed by PRV, PLD and RDP, within caps and the manifest's terms{chain}",
            soft_wrap=True,
        )


def register(app: typer.Typer, *, panel: str | None = None) -> None:
    """Add ``cohort audit`` to ``app`` (in help panel ``panel``)."""
    app.command("audit", rich_help_panel=panel)(audit)
