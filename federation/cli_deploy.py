"""The commands of a deployed study, one per role, each reading its own TOML file.

* ``cohort node start --config hospital.toml``     - hospital: its Flower SuperNode;
* ``cohort committee serve --config member.toml``  - committee member: its aggregator;
* ``cohort study create|launch|status --config study.toml`` - sponsor;
* ``cohort deploy local``                           - the whole topology as local processes.

The file formats are in :mod:`cohort.federation.deploy_config`; docs/guides has one guide per
role with these exact commands.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cohort.errors import CohortError
from cohort.federation.cli_common import console, err_console
from cohort.federation.cli_common import fail as _fail
from cohort.federation.cli_common import line as _line
from cohort.federation.cli_study import study_app

if TYPE_CHECKING:
    from cohort.federation.deploy_config import HospitalConfig, StudyFile

node_app = typer.Typer(help="A hospital's Flower SuperNode.", no_args_is_help=True)
committee_app = typer.Typer(help="A committee member's aggregator service.", no_args_is_help=True)
deploy_app = typer.Typer(
    help="Run a whole deployed study on this machine, as separate processes.",
    no_args_is_help=True,
)

ConfigOption = Annotated[Path, typer.Option("--config", help="The role's TOML file.")]


# --------------------------------------------------------------------------- hospital


def supernode_argv(config_path: Path) -> list[str]:
    """The ``flower-supernode`` command ``cohort node start`` runs for ``config_path``."""
    from cohort.federation.deploy_config import HospitalConfig

    return _supernode_argv(HospitalConfig.load(config_path))


def _supernode_argv(config: HospitalConfig) -> list[str]:
    link = config.superlink
    binary = Path(sys.executable).parent / "flower-supernode"
    argv = [str(binary) if binary.is_file() else "flower-supernode", "--superlink", link.address]
    if link.insecure:
        argv.append("--insecure")
    else:
        assert link.root_certificates is not None
        argv += ["--root-certificates", str(link.root_certificates)]
    if config.auth_key is not None:
        if not config.auth_key.is_file():
            raise CohortError(
                f"{config.path}: [superlink] auth-key {config.auth_key} not found (cohort keys "
                "new --role owner writes it; the sponsor registers its .pub)"
            )
        argv += ["--auth-supernode-private-key", str(config.auth_key)]
    argv += ["--node-config", config.node_config(), "--port", str(config.node_port)]
    # No SuperExec inside the node: cohort node start serves the ClientApp tasks itself, so
    # that every task runs under Cohort's checks (cohort.federation.task_process).
    argv += ["--isolation", "process"]
    if not config.data.is_file():
        raise CohortError(f"{config.path}: [hospital] data {config.data}: file not found")
    return argv


@node_app.command("start")
def node_start(
    config: ConfigOption,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Print the SuperNode command (JSON) and exit.")
    ] = False,
) -> None:
    """Start this hospital's Flower SuperNode (TLS, node authentication) on its own CSV.

    The node only connects out, to the SuperLink in \\[superlink]; it trains on \\[hospital]
    data under your \\[policy], for studies you approved with `cohort study approve`. This
    process also runs the ClientApp for each message: with \\[hospital] clientapp = "warm"
    (the default) in a fresh child of a process that has it imported, with "subprocess" in a
    new interpreter (seconds of imports per message). Either way a run's app bundle that
    carries code is refused.
    """
    from cohort.federation.deploy_config import HospitalConfig

    try:
        hospital = HospitalConfig.load(config)
        argv = _supernode_argv(hospital)
    except CohortError as exc:
        _fail(str(exc))
    if print_command:
        console.print_json(json.dumps(argv))
        return
    err_console.print(f"starting the SuperNode: connects to {argv[2]}")
    sys.stdout.flush()
    raise typer.Exit(_run_node(argv, hospital))


def _run_node(argv: list[str], hospital: HospitalConfig) -> int:
    """The SuperNode as a child process plus the ClientApp runner in this one.

    Either one ending, SIGTERM or Ctrl-C stops both (and any ClientApp child); the exit
    status is the SuperNode's. The SuperNode runs in its own session and gets exactly one
    SIGTERM, from here: Flower's handler restores the default one on the first signal, so a
    second (say, one to the whole process group, then this one's) would kill the node before
    it deactivates itself at the SuperLink, which then refuses the restarted node ("Failed to
    activate SuperNode"). If this process dies, the SuperNode notices within 0.2 s and stops.
    The node tells the runner of each task it creates through a pipe
    (:mod:`cohort.federation.supernode_loop`).
    """
    import signal
    import subprocess

    wake_read, wake_write = os.pipe()
    try:
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                __name__,
                str(hospital.poll_interval_s),
                str(wake_write),
                *argv[1:],
            ],
            start_new_session=True,
            pass_fds=(wake_write,),
            env={**os.environ, "COHORT_LOG_LEVEL": _log_level()},
        )
    finally:
        os.close(wake_write)
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        from cohort.federation.client_app import serve_tasks  # imports torch, Opacus, ...

        serve_tasks(
            f"127.0.0.1:{hospital.node_port}",
            running=lambda: not stopping and node.poll() is None,
            threads=hospital.threads,
            wake_fd=wake_read,
            fresh_interpreter=hospital.clientapp == "subprocess",
        )
    finally:
        os.close(wake_read)
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:  # within deploy local's 10 s before it kills this process group
                node.wait(timeout=8)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if stopping else (node.returncode or 0)


def _log_level() -> str:
    """This process's ``cohort`` log level by name, for the SuperNode child to log at."""
    import logging

    from cohort.logs import ROOT

    return logging.getLevelName(logging.getLogger(ROOT).getEffectiveLevel())


def _supernode_main(args: list[str]) -> None:
    """``flower-supernode ARGS[2:]`` in this process: idle poll ARGS[0] seconds, each task
    announced on the pipe whose write end is file descriptor ARGS[1].

    Flower 1.42's SuperNode sleeps a fixed 3 s whenever the SuperLink has no message for it
    and checks its own memory for the ClientApp's reply every 0.5 s;
    :func:`~cohort.federation.supernode_loop.tune_supernode_loop` shortens both (see there)
    and tells the runner of each task; its object pushes and pulls are tuned by
    :func:`~cohort.federation.flower_waits.tune_object_transfers`. Nothing else changes.
    """
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supernode.cli.flower_supernode import flower_supernode

    from cohort.federation.flower_waits import tune_object_transfers
    from cohort.federation.supernode_loop import tune_supernode_loop
    from cohort.logs import configure

    configure()  # at the runner's level (COHORT_LOG_LEVEL, set by _run_node)
    start_parent_process_monitor(os.getppid())  # the runner gone: stop (SIGINT) gracefully
    try:
        tune_supernode_loop(idle_s=float(args[0]), wake_fd=int(args[1]))
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    tune_object_transfers()
    sys.argv = ["flower-supernode", *args[2:]]
    flower_supernode()


# --------------------------------------------------------------------------- member


@committee_app.command("serve")
def committee_serve(config: ConfigOption) -> None:
    """Serve this committee member (gRPC over TLS) until interrupted.

    Before: `cohort keys new --role member`, `cohort member --export-identity` (sent to the
    sponsor), and `cohort study approve MANIFEST --role member` for each study.
    """
    from cohort.aggregator.__main__ import main as member_main
    from cohort.federation.deploy_config import MemberConfig

    try:
        member = MemberConfig.load(config)
    except CohortError as exc:
        _fail(str(exc))
    raise typer.Exit(member_main(member.argv()))


# --------------------------------------------------------------------------- sponsor


def _study_file(config: Path) -> StudyFile:
    from cohort.federation.deploy_config import StudyFile

    try:
        return StudyFile.load(config)
    except CohortError as exc:
        _fail(str(exc))


@study_app.command("create")
def study_create(config: ConfigOption) -> None:
    """Sponsor: write the signed manifest and deploy its contract, escrowing the bounty.

    Reads the members' and hospitals' public entries, the test split and the normaliser
    named in STUDY.toml; send the manifest to every party for `cohort study approve`.
    """
    from cohort.federation.sponsor import MANIFEST, create_study

    study = _study_file(config)
    try:
        signed, address = create_study(study)
    except CohortError as exc:
        _fail(str(exc))
    m = signed.manifest
    _line("study", m.study_id)
    _line("manifest", str(study.out / MANIFEST))
    _line("contract", f"{address} (chain {m.chain_id}, bounty {m.bounty_wei} wei)")
    console.print("send the manifest to every hospital and committee member to approve")


@study_app.command("launch")
def study_launch(
    config: ConfigOption,
    app_dir: Annotated[
        Path | None,
        typer.Option("--app", help="Cohort's Flower App folder (default: this installation's)."),
    ] = None,
) -> None:
    """Sponsor: run the study on the SuperLink (`flwr run`) and print its summary.

    Launching again resumes the study after the last round the coordinator finished.
    """
    from cohort.federation.cli import print_summary
    from cohort.federation.sponsor import launch_study

    study = _study_file(config)
    try:
        summary = launch_study(study, app=app_dir)
    except CohortError as exc:
        _fail(str(exc))
    print_summary(summary)


@study_app.command("status")
def study_status(
    config: ConfigOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Sponsor, anyone with the chain URL: finalized rounds, settlement, coordinator progress."""
    from cohort.federation.sponsor import study_status as status

    study = _study_file(config)
    try:
        report = status(study)
    except CohortError as exc:
        _fail(str(exc))
    if as_json:
        console.print_json(json.dumps(report))
        return
    _line("study", str(report["study_id"]))
    _line("contract", str(report["contract"]))
    finalized = report["finalized"]
    _line("finalized", f"{len(finalized)} of {report['rounds']} rounds {finalized}")
    _line("settled", "yes" if report["settled"] else "no")
    coordinator = report["coordinator"]
    if coordinator is None:
        _line("coordinator", "not started")
    else:
        _line("coordinator", f"finished round {coordinator['finished_round']}")


# --------------------------------------------------------------------------- deploy local


@deploy_app.command("local")
def deploy_local_command(
    out: Annotated[Path, typer.Option(help="Folder for every party's files, logs and summary.")],
    hospitals: Annotated[int, typer.Option(help="Hospitals (one SuperNode each).")] = 3,
    members: Annotated[int, typer.Option(help="Committee members.")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    secure: Annotated[
        str, typer.Option(help="Secure mode: ckks, mpc (Shamir shares, MPC norm check) or none.")
    ] = "ckks",
    quorum: Annotated[
        int | None, typer.Option(help="Committee quorum (default: a strict majority).")
    ] = None,
    epsilon: Annotated[float, typer.Option(help="Per-hospital (epsilon, delta) budget.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed of the demo split, model and noise.")] = 0,
    superlink_state: Annotated[
        str,
        typer.Option(
            help="Where the SuperLink keeps runs, registered nodes and messages: memory "
            "(Flower's default, for as long as this topology runs) or file (SQLite in "
            "OUT/superlink/state.db, as a long-lived SuperLink runs it; slower)."
        ),
    ] = "memory",
) -> None:
    """Start the whole topology on 127.0.0.1 and run one study through `flwr run`.

    Processes: anvil, the committee, a SuperLink (TLS, SuperNode auth), one SuperNode per
    hospital on its own CSV, the coordinator (ServerApp). All are stopped at the end, also on
    failure or Ctrl-C. Writes OUT/summary.json.
    """
    from cohort.federation.cli import print_summary
    from cohort.federation.deploy_local import LocalPlan, deploy_local
    from cohort.federation.manifest import SecureMode

    try:
        plan = LocalPlan(
            hospitals=hospitals,
            members=members,
            rounds=rounds,
            secure=SecureMode.parse(secure),
            quorum=quorum,
            epsilon=epsilon,
            seed=seed,
            superlink_state=superlink_state,
        )
    except (CohortError, ValueError) as exc:
        _fail(str(exc), code=2)
    try:
        summary = deploy_local(plan, out)
    except CohortError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted: every process started was stopped", code=130)
    print_summary(summary)
    console.print(f"summary: {out / 'summary.json'}", soft_wrap=True)


if __name__ == "__main__":  # the SuperNode child of a warm `cohort node start`
    _supernode_main(sys.argv[1:])
