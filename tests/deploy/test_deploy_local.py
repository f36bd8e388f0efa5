"""A deployed study end to end: every role its own OS process, Flower's Deployment Engine.

One deployment (``cohort deploy local``'s :class:`LocalDeployment`: anvil, three committee
members, a SuperLink with TLS and SuperNode authentication, three SuperNodes on their own
CSVs, the ServerApp launched by ``flwr run``) is put through what a real one meets:

* a SuperNode whose key the sponsor never registered tries to join and is refused;
* a committee member is killed after round 1: the study goes on with the other two;
* the coordinator (the ServerApp process) is SIGKILLed once round 2 is played, while its
  sum rides with round 3's training; the member is restarted, a hospital's node restarts,
  and the sponsor launches again: the study resumes from its saved state (round 2's sum
  still to be revealed), the member rejoins, and the study finishes; no round is counted
  twice and no hospital is charged twice (each ledger holds each round once);
  ``cohort study status`` reads it all back from the chain and the coordinator's state;
* the auditor's ``cohort audit`` of what the study published passes, ledger heads checked
  against the chain;
* every command the deployment ran is shown in a role guide;
* no party's log holds a key store's password (every party logs at INFO);
* the result matches ``cohort simulate`` with the same seed within 0.01.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from guidekit import CHECKED, guide_shapes, shown_in_guides
from typer.testing import CliRunner

from cohort.errors import ConfigError, ProtocolAbort
from cohort.federation.cli import app
from cohort.federation.config import DpSettings, StudyConfig
from cohort.federation.deploy_local import (
    LocalDeployment,
    LocalPlan,
    anvil_binary,
    port_open,
    wait_for,
)
from cohort.federation.keyfiles import create_owner_keys
from cohort.federation.manifest import SecureMode
from cohort.federation.simulate import run_study

pytestmark = pytest.mark.slow

ROUNDS = 3
SEED = 0


@pytest.fixture(scope="module")
def anvil() -> Path:
    try:
        return anvil_binary()
    except ConfigError as exc:
        pytest.skip(str(exc))


def _ledger_rounds(path: Path) -> list[int]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [int(e["round"]) for e in data["entries"] if "round" in e]


def _intruder_refused(d: LocalDeployment, tmp_path: Path) -> None:
    """A SuperNode with a key nobody registered is refused by the SuperLink."""
    workdir = tmp_path / "intruder"
    create_owner_keys(workdir, party_id="intruder", password="intruder-password")
    data = d.out / "hospital-1" / "data.csv"
    config = workdir / "hospital.toml"
    config.write_text(
        "[hospital]\n"
        f'party-id = "intruder"\nworkdir = "{workdir}"\ndata = "{data}"\n'
        "[policy]\nepsilon-cap = 3.0\n"
        f'[superlink]\naddress = "127.0.0.1:{d.link_port}"\n'
        f'root-certificates = "{d.out / "certs" / "ca.pem"}"\n',
        encoding="utf-8",
    )
    d.procs.start("intruder", [*d.cohort, "node", "start", "--config", str(config)])
    log = d.logs / "superlink.log"

    def refused() -> bool:
        text = log.read_text(encoding="utf-8", errors="replace")
        return "No SuperNode found with the given public key" in text

    wait_for("the SuperLink's refusal of the unregistered SuperNode", refused, timeout_s=120)
    d.stop("intruder")


def _pending_round(d: LocalDeployment) -> int:
    """The round the coordinator's saved state holds as played, its sum not yet revealed."""
    try:
        pending = json.loads(d.state_file.read_text(encoding="utf-8")).get("pending")
    except (OSError, ValueError):
        return 0
    return int(pending["record"]["round"]) if pending else 0


def _poll(check: Callable[[], bool], timeout_s: float = 900.0) -> None:
    """Check every 20 ms, so that what follows lands right after ``check`` comes true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the study did not get there")
        time.sleep(0.02)


def test_deployed_study_survives_a_dead_member_and_a_coordinator_crash(
    anvil: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COHORT_LOG_LEVEL", "INFO")  # the parties' logs show what they did
    plan = LocalPlan(hospitals=3, members=3, rounds=ROUNDS, seed=SEED, secure=SecureMode.CKKS)
    with LocalDeployment(plan, tmp_path / "deploy") as d:
        d.start()
        _intruder_refused(d, tmp_path)

        events: list[str] = []

        def chaos() -> None:
            # Round 1 saved as played, its sum to be revealed beside round 2's training:
            # member-3 dies before round 2. Round 2 saved the same way: the coordinator dies
            # at once, while round 2's sum rides with round 3 (cohort.federation.reveal).
            _poll(lambda: _pending_round(d) >= 1 or d.finished_round() >= 1)
            d.stop("member-3")
            events.append("member-3 stopped")
            _poll(lambda: _pending_round(d) >= 2 or d.finished_round() >= 2)
            events.append(f"coordinator killed ({d.kill_coordinator()} processes)")

        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        with pytest.raises(ProtocolAbort, match=r"without writing .*summary\.json"):
            d.launch()
        thread.join(timeout=60)
        assert events == ["member-3 stopped", "coordinator killed (1 processes)"]
        assert d.finished_round() < ROUNDS

        d.restart("member-3")  # the member's operator brings it back: it rejoins
        d.restart("hospital-2")  # a hospital's node restarts too: its ledger stays
        port = d.member_ports["member-3"]
        wait_for("member-3 again", lambda: port_open(port), timeout_s=120)
        summary = d.launch()  # the sponsor launches again: the study resumes

        status = CliRunner().invoke(
            app, ["study", "status", "--config", str(d.study_config), "--json"]
        )
        assert status.exit_code == 0, status.output
        report = json.loads(status.output)
        assert report["finalized"] == list(range(1, ROUNDS + 1))
        assert report["settled"]
        assert report["coordinator"]["finished_round"] == ROUNDS

        # the auditor: the published ledgers against the chain's LedgerHead events
        published = d.publish()
        audit = CliRunner().invoke(
            app,
            ["audit", str(published), "--chain-url", d.chain_url, "--contract", report["contract"]],
        )
        assert audit.exit_code == 0, audit.output
        assert "ledger heads and epsilons match contract" in audit.output

    assert summary["runtime"] == "deployment"
    # no party logged a secret: no key store's password is in any log (at INFO, each step)
    passwords = [p.read_text(encoding="utf-8").strip() for p in d.out.glob("**/password")]
    assert len(passwords) == 7  # the sponsor, 3 members, 3 hospitals
    assert all(len(p) >= 16 for p in passwords)
    for party_log in sorted(d.logs.glob("*.log")):
        text = party_log.read_text(encoding="utf-8", errors="replace")
        assert not any(p in text for p in passwords), f"{party_log.name} holds a password"
    launched = (d.logs / "launch.log").read_text(encoding="utf-8", errors="replace")
    assert "resuming with a round to reveal" in launched  # round 2, played before the crash
    rounds = [r["round"] for r in summary["rounds"]]
    assert rounds == list(range(1, ROUNDS + 1)), rounds  # each round once
    assert all(r["aggregate_hash"] for r in summary["rounds"])
    assert summary["rounds"][-1]["faulty_members"] == {}
    log = (d.logs / "member-3.log").read_text(encoding="utf-8", errors="replace")
    assert re.search(rf'"msg": "round opened".*"round": {ROUNDS}}}', log), (
        "the restarted member did not open the last round"
    )
    assert summary["chain"]["finalized_rounds"] == ROUNDS
    assert summary["chain"]["settled"]
    handled: set[str] = set()
    for h in ("hospital-1", "hospital-2", "hospital-3"):
        ledgers = list((d.out / h).glob("ledger-*.json"))
        assert len(ledgers) == 1
        assert sorted(_ledger_rounds(ledgers[0])) == list(range(1, ROUNDS + 1))  # charged once
        # the node's runner logs each message's task (COHORT_LOG_LEVEL reaches `cohort node`)
        node_log = (d.logs / f"{h}.log").read_text(encoding="utf-8", errors="replace")
        tasks = re.findall(r'"msg": "clientapp task finished".*"exit_code": (-?\d+)', node_log)
        assert tasks.count("0") >= ROUNDS, f"{h}: finished tasks {tasks}"
        # ... and the hops of each message (bench/deploy.py's table): pulled, handled, pushed
        for line in ("message pulled", "reply pushed"):
            assert node_log.count(f'"msg": "{line}"') >= ROUNDS, f"{h}: few {line!r} lines"
        handled |= set(re.findall(r'"msg": "message handled".*?"message": "(\w+)"', node_log))
    replied = {
        x["message"] for r in summary["rounds"] for e in r["exchanges"] for x in e["replies"]
    }
    assert replied, "the summary lists no replies"
    assert replied <= handled, f"replies no hospital logged: {sorted(replied - handled)}"

    # the guides show every command the deployment ran (and test_deploy_guides that each
    # guide command parses)
    shapes = guide_shapes()
    ran = json.loads((d.out / "commands.json").read_text(encoding="utf-8"))
    checked = {n: a for n, a in ran.items() if Path(a[0]).name in CHECKED}
    assert {Path(a[0]).name for a in checked.values()} >= {"cohort", "flower-superlink", "flwr"}
    missing = {n: a for n, a in checked.items() if not shown_in_guides(a, shapes)}
    assert not missing, f"commands deploy local ran that no guide shows: {missing}"

    simulated = run_study(
        StudyConfig(
            clients=3, rounds=ROUNDS, committee=3, quorum=2, seed=SEED, dp=DpSettings(epsilon=3.0)
        ),
        tmp_path / "simulate",
    )
    assert abs(summary["final_accuracy"] - simulated["final_accuracy"]) <= 0.01
    deployed_eps = {c["id"]: c["epsilon_spent"] for c in summary["clients"]}
    simulated_eps = {c["id"]: c["epsilon_spent"] for c in simulated["clients"]}
    assert deployed_eps == pytest.approx(simulated_eps, abs=1e-6)


def test_deployed_mpc_study_finalizes_and_matches_the_simulation(
    anvil: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cohort deploy local --secure mpc``: shares to members that are separate processes,
    the norm check as CrypTen parties between them, the sum attested on anvil."""
    monkeypatch.setenv("COHORT_LOG_LEVEL", "INFO")  # the members' logs show their checks
    plan = LocalPlan(
        hospitals=3, members=3, rounds=2, seed=SEED, secure=SecureMode.MPC, superlink_state="file"
    )
    with LocalDeployment(plan, tmp_path / "deploy") as d:
        d.start()
        summary = d.launch()
        study = tomllib.loads(d.study_config.read_text(encoding="utf-8"))
    assert (d.out / "superlink" / "state.db").is_file()  # the SuperLink's SQLite state
    assert summary["runtime"] == "deployment"
    assert summary["config"]["secure"] == "mpc"
    assert summary["config"]["mpc"]["threshold"] == 2
    assert len(study["study"]["mpc"]["rendezvous"]) == 3
    assert [r["finalized"] for r in summary["rounds"]] == [True, True]
    assert all(r["rejected"] == {} for r in summary["rounds"])
    assert summary["chain"]["settled"]
    for member in ("member-1", "member-2"):
        log = (d.logs / f"{member}.log").read_text(encoding="utf-8", errors="replace")
        assert '"msg": "norm check done"' in log
    simulated = run_study(
        StudyConfig(clients=3, rounds=2, seed=SEED, secure=SecureMode.MPC),
        tmp_path / "simulate",
    )
    assert abs(summary["final_accuracy"] - simulated["final_accuracy"]) <= 0.01


def test_the_subprocess_runner_runs_each_message_in_a_new_interpreter(
    anvil: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[hospital] clientapp = "subprocess"``: each task in a new interpreter that
    ``cohort node start`` starts (cohort.federation.task_process, with the FAB check), never
    Flower's SuperExec; the study finalizes with every hospital and matches the simulation."""
    monkeypatch.setenv("COHORT_LOG_LEVEL", "INFO")  # the runner logs each task it started
    plan = LocalPlan(
        hospitals=3, members=3, rounds=2, seed=SEED, secure=SecureMode.CKKS, clientapp="subprocess"
    )
    with LocalDeployment(plan, tmp_path / "deploy") as d:
        d.start()
        summary = d.launch()
    assert [r["finalized"] for r in summary["rounds"]] == [True, True]
    for r in summary["rounds"]:
        assert r["clients_included"] == ["hospital-1", "hospital-2", "hospital-3"]
    for h in ("hospital-1", "hospital-2", "hospital-3"):
        node_log = (d.logs / f"{h}.log").read_text(encoding="utf-8", errors="replace")
        # logged by cohort node start's runner for each task process it started and reaped
        tasks = re.findall(r'"msg": "clientapp task finished".*"exit_code": (-?\d+)', node_log)
        assert tasks.count("0") >= 2, f"{h}: finished tasks {tasks}"  # enroll ... train
    simulated = run_study(
        StudyConfig(
            clients=3, rounds=2, committee=3, quorum=2, seed=SEED, dp=DpSettings(epsilon=3.0)
        ),
        tmp_path / "simulate",
    )
    assert abs(summary["final_accuracy"] - simulated["final_accuracy"]) <= 0.01
