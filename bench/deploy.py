"""A deployed study against the simulation of the same study: time per round, accuracy.

Runs ``cohort deploy local`` (every role its own OS process: anvil, the committee, a SuperLink
with TLS and SuperNode authentication, one SuperNode per hospital, the ServerApp through
``flwr run``) and ``cohort simulate`` with the same seed, hospitals, committee and rounds,
and records each round's wall time as the coordinator measured it (from opening the round
at the committee to the evaluated model), the accuracy and every hospital's epsilon. Writes
``bench/results/deploy.json`` and ``bench/results/deploy.md``.

The figure issue 6 names: a deployed round at most 1.5x the simulated one. A deployed round
pays what the simulation does not: every message crosses three processes (ServerApp,
SuperLink, SuperNode) and a ClientApp process, as a message plus one request per content
object. Flower's own SuperNode polls the SuperLink every 3 s when idle and starts a cold
``flwr-clientapp`` process for each message (which imports torch, Opacus and TenSEAL);
Cohort's default ``[hospital] clientapp = "warm"`` runs each message in a fork of a process
that has the ClientApp (and what training imports on its first step) imported, installs a
run's FAB once, and polls every ``[superlink] poll-interval`` (0.25 s) when idle, every
0.05 s for 3 s after a message or reply; its SuperNode tells the runner of each whole
message on a pipe instead of being asked every 50 ms (:mod:`cohort.federation.supernode_loop`);
:mod:`cohort.federation.flower_waits` shortens Flower's 1 s, 2 s, 4 s waits for message
objects that have not arrived yet; each message's vector rides inside its config record, so
a message is three content objects, not six (:mod:`cohort.federation.wire`). ``cohort deploy
local`` gives each co-located hospital one torch thread (``[hospital] threads = 1``), as the
simulation gives each ClientApp one CPU. The coordinator times each phase of a round
(summary.json, ``rounds[].phases``); the breakdown table below the figures comes from there.
In CKKS a round's sum rides with the next round's train message
(:mod:`cohort.federation.reveal`), so a round is one message exchange; only the last round
also has decryption messages. The hop table follows each train and decrypt message from the
coordinator's send to its collected reply: the coordinator's ``rounds[].exchanges`` (when it
sent each message and had every reply, when each owner created its reply) and, deployed,
each hospital's own log
lines at INFO (its SuperNode's ``message pulled`` and ``reply pushed``, its ClientApp's
``message handled``), all on this host's clock (:func:`exchange_hops`).
``--clientapp both`` also runs the ``subprocess`` runner (a new interpreter per message) for
the comparison.

Every process shares this machine's cores, so a deployed round's time is mostly CPU: the
bench samples ``/proc`` every 0.25 s during each deployment and reports each party's CPU
seconds per round (every round but the first, which warms up, and the last). The figure's
deployment keeps the SuperLink's state in memory, as ``cohort deploy local`` does by
default; ``--superlink-state both`` (the default) also runs it on SQLite (``file``), as a
long-lived SuperLink runs it, for the comparison.

The default study's model is the demo's small MLP (about a thousand parameters), where a
round is mostly message handling. ``--model mlp:1024,1024 --results deploy_1m`` runs the same
comparison at about 1.1M parameters, the size of the upload figure; ``--results`` names the
output files. It shows whether the deployment's extra time is a fixed cost per message (the
ratio falls as the model grows) or grows with the bytes each message carries (it does not).

This machine's speed drifts between runs (a shared host: the same deployment's median round
has differed by half from one run to the next), more than by the deployment's own changes.
``--repeat N`` runs N pairs, each the figure's deployment and then the simulation, pools each
runtime's rounds for the tables, and reports each pair's ratio of median rounds; the figure
is the median of those ratios, so that each ratio compares two runs of the same moment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from cohort.federation.config import DpSettings, StudyConfig
from cohort.federation.deploy_local import LocalPlan, deploy_local
from cohort.federation.manifest import SecureMode
from cohort.federation.simulate import run_study

RESULTS = Path(__file__).resolve().parent / "results"


PHASE_NAMES = {
    "open": "open the round at the committee",
    "train": "train message (send, reveal the last sum, train, upload, reply)",
    "committee": "committee: replicate uploads, aggregate",
    "chain": "attest and finalize on chain",
    "decrypt": "decrypt message (two owners; the last round only)",
    "evaluate": "evaluate the new model",
    "other": "coordinator bookkeeping",
}


#: The hops of one message exchange, per owner, from the parties' own log lines at INFO
#: (the SuperNode's ``message pulled`` and ``reply pushed``, the ClientApp's ``message
#: handled``) and the coordinator's ``rounds[].exchanges``; every party on this host's clock.
HOP_NAMES = {
    "poll": "the coordinator sends it; the SuperNode's next poll finds it",
    "pull": "the SuperNode pulls the message and its objects",
    "task": "the runner's fork starts the handler (fork, Flower's runtime requests)",
    "handler": "**the handler** (the owner's own work)",
    "reply": "the reply reaches the SuperNode and the SuperLink",
    "collect": "the coordinator's next pull collects the last reply",
    "answered": "sent until the owner's reply is created (per owner)",
    "exchange": "the whole exchange, sent to every reply in",
}
HOP_LINES = ("message pulled", "message handled", "reply pushed")
EXCHANGES = {"train": "train", "query.decrypt": "decrypt"}


def hospital_events(log: Path) -> list[dict[str, Any]]:
    """The hop log lines of one hospital's log (``cohort deploy local``'s
    OUT/logs/hospital-N.log), oldest first; other lines are skipped."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("msg") in HOP_LINES:
                events.append(event)
    return sorted(events, key=lambda e: float(e["ts"]))


def _handled_at(events: list[dict[str, Any]], message: str) -> tuple[int, dict[str, Any]] | None:
    for i, e in enumerate(events):
        if e["msg"] == "message handled" and e.get("message") == message:
            return i, e
    return None


def exchange_hops(
    summary: dict[str, Any], hospitals: list[list[dict[str, Any]]] | None = None
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each hop (:data:`HOP_NAMES`) of every train and decrypt exchange in every
    round but the first (which warms up): {exchange: {hop: [samples]}}.

    ``hospitals``: each hospital's :func:`hospital_events`; None (the simulation) gives the
    coordinator's own rows alone (``answered``, ``exchange``). A node handles one message at
    a time, so the message an owner handled was the one its node pulled last before and its
    reply the next one pushed after.
    """
    hops: dict[str, dict[str, list[float]]] = {}
    for rnd in summary["rounds"][1:]:
        for ex in rnd.get("exchanges", []):
            name = EXCHANGES.get(ex["type"])
            if name is None or not ex["replies"]:
                continue
            got = hops.setdefault(name, {})
            sent, collected = float(ex["sent_at"]), float(ex["collected_at"])
            got.setdefault("exchange", []).append(collected - sent)
            pushed_last = None
            for reply in ex["replies"]:
                got.setdefault("answered", []).append(float(reply["replied_at"]) - sent)
                for events in hospitals or []:
                    found = _handled_at(events, reply["message"])
                    if found is None:
                        continue
                    i, handled = found
                    start = float(handled["started"])
                    end = start + float(handled["seconds"])
                    pulls = [e for e in events[:i] if e["msg"] == "message pulled"]
                    pushes = [e for e in events[i + 1 :] if e["msg"] == "reply pushed"]
                    if not pulls or not pushes:
                        continue
                    pulled, pushed = pulls[-1], float(pushes[0]["ts"])
                    pull_end = float(pulled["started"]) + float(pulled["seconds"])
                    for hop, value in (
                        ("poll", float(pulled["started"]) - sent),
                        ("pull", float(pulled["seconds"])),
                        ("task", start - pull_end),
                        ("handler", end - start),
                        ("reply", pushed - end),
                    ):
                        got.setdefault(hop, []).append(value)
                    pushed_last = pushed if pushed_last is None else max(pushed_last, pushed)
            if pushed_last is not None:
                got.setdefault("collect", []).append(collected - pushed_last)
    return hops


def merge_hops(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """The runs' hop samples pooled."""
    merged: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, hops in run.get("hop_samples", {}).items():
            for hop, values in hops.items():
                merged.setdefault(name, {}).setdefault(hop, []).extend(values)
    return merged


def _rounds(summary: dict[str, Any]) -> list[float]:
    return [float(r["seconds"]) for r in summary["rounds"]]


def _round_phases(summary: dict[str, Any]) -> list[dict[str, float]]:
    """Seconds per phase of each round, as the coordinator timed them; ``other`` is the
    rest of the round."""
    per_round = []
    for r in summary["rounds"]:
        phases = {k: float(v) for k, v in r.get("phases", {}).items()}
        phases["other"] = max(0.0, float(r["seconds"]) - sum(phases.values()))
        per_round.append(phases)
    return per_round


def _median_phases(per_round: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of each phase over ``per_round``."""
    return {
        name: round(statistics.median(p.get(name, 0.0) for p in per_round), 3)
        for name in PHASE_NAMES
        if per_round
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One runtime's runs as one: their rounds pooled (median round and phases over all of
    them), CPU per round averaged over the runs that measured it, wall times summed."""
    first = runs[0]
    rounds = [x for r in runs for x in r["round_seconds"]]
    phases = [p for r in runs for p in r.get("phase_rounds", [])]
    measured = [r["cpu_s_per_round"] for r in runs if r.get("cpu_s_per_round")]
    roles = sorted({role for cpu in measured for role in cpu})
    merged = {
        **first,
        "runs": len(runs),
        "round_seconds": rounds,
        "median_round_s": statistics.median(rounds),
        "median_phase_s": _median_phases(phases) if phases else first.get("median_phase_s", {}),
        "phase_rounds": phases,
        "hop_samples": merge_hops(runs),
        "accuracies": [r["accuracy"] for r in runs],
        "wall_s": round(sum(r["wall_s"] for r in runs), 1),
    }
    if "cpu_s_per_round" in first:
        merged["cpu_s_per_round"] = {
            role: round(sum(cpu.get(role, 0.0) for cpu in measured) / len(measured), 3)
            for role in roles
        }
    return merged


def pair_ratios(deployed: list[dict[str, Any]], simulated: list[dict[str, Any]]) -> list[float]:
    """Each repeat's deployed median round over the simulated median round run next to it."""
    return [
        round(d["median_round_s"] / s["median_round_s"], 2)
        for d, s in zip(deployed, simulated, strict=True)
        if s["median_round_s"]
    ]


#: Which party a process of ``cohort deploy local`` is, by a part of its command line; the
#: first that matches. A hospital's ClientApp forks are counted in their runner (``cohort
#: node start``), whose reaped children's CPU time the kernel adds to its own.
ROLES = (
    ("flower-superlink", "SuperLink"),
    ("flwr-serverapp", "coordinator (ServerApp)"),
    ("cohort.federation.cli_deploy", "hospital SuperNodes"),
    ("node start", "hospital ClientApps (runner and its forks)"),
    ("cohort.aggregator", "committee members"),
    ("committee serve", "committee members"),
    ("anvil", "chain (anvil)"),
)
SAMPLE_S = 0.25


class Proc(NamedTuple):
    role: str
    argv: bytes
    parent: str
    cpu_s: float  # its own and its reaped children's user + system time


Sample = tuple[float, dict[str, Proc]]  # (time, {pid: process})


def _proc(pid: str) -> Proc | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    text = argv.replace(b"\0", b" ").decode(errors="replace")
    role = next((role for part, role in ROLES if part in text), None)
    if role is None:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return Proc(role, argv, fields[1], cpu)


def sample_roles() -> Sample:
    """Every running process of a known role, with its CPU seconds so far."""
    now = time.time()
    found: dict[str, Proc] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (proc := _proc(entry.name)) is not None:
            found[entry.name] = proc
    return now, found


def cpu_per_round(samples: list[Sample], start: float, end: float, rounds: int) -> dict[str, float]:
    """CPU seconds per round of each role between ``start`` and ``end`` (``rounds`` whole
    rounds): each process's growth from the sample nearest ``start`` to the last sample it
    appears in before ``end``; a process that started in between counts from zero. A fork
    (the same command line as its parent's) is left out: its time reaches its parent's once
    the parent reaps it, and counting both would count it twice."""
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside or rounds < 1:
        return {}
    first = min(samples, key=lambda s: abs(s[0] - start))[1]
    last: dict[str, Proc] = {}
    for _, found in inside:
        for pid, proc in found.items():
            parent = found.get(proc.parent)
            if parent is None or parent.argv != proc.argv:
                last[pid] = proc
    per_role: dict[str, float] = {}
    for pid, proc in last.items():
        before = first[pid].cpu_s if pid in first and first[pid].argv == proc.argv else 0.0
        per_role[proc.role] = per_role.get(proc.role, 0.0) + max(0.0, proc.cpu_s - before)
    return {role: round(cpu / rounds, 3) for role, cpu in sorted(per_role.items())}


def _round_openings(out: Path) -> list[float]:
    """When member-1 opened each round (its JSON log lines), oldest first."""
    try:
        lines = (out / "logs" / "member-1.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    opened = []
    for line in lines:
        if '"msg": "round opened"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                opened.append(float(json.loads(line)["ts"]))
    return sorted(opened)


def _deploy(
    args: argparse.Namespace, clientapp: str, superlink_state: str, out: Path
) -> dict[str, Any]:
    samples: list[Sample] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_S):
            samples.append(sample_roles())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        summary = deploy_local(
            LocalPlan(
                hospitals=args.hospitals,
                members=args.members,
                rounds=args.rounds,
                seed=args.seed,
                secure=SecureMode.parse(args.secure),
                clientapp=clientapp,
                superlink_state=superlink_state,
                model=args.model,
            ),
            out,
        )
    finally:
        stop.set()
        sampler.join()
    rounds = _rounds(summary)
    opened = _round_openings(out)
    # from the second round's opening to the last one's: every round but the first (warm-up)
    # and the last (whose end has no opening after it)
    cpu = cpu_per_round(samples, opened[1], opened[-1], len(opened) - 2) if len(opened) > 2 else {}
    return {
        "clientapp": clientapp,
        "superlink_state": superlink_state,
        "round_seconds": rounds,
        "median_round_s": statistics.median(rounds),
        "median_phase_s": _median_phases(_round_phases(summary)),
        "phase_rounds": _round_phases(summary),
        "hop_samples": exchange_hops(
            summary,
            [hospital_events(log) for log in sorted((out / "logs").glob("hospital-*.log"))],
        ),
        "cpu_s_per_round": cpu,
        "accuracy": summary["final_accuracy"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    runners = ["warm", "subprocess"] if args.clientapp == "both" else [args.clientapp]
    states = ["memory", "file"] if args.superlink_state == "both" else [args.superlink_state]
    plans = [(runners[0], state) for state in states] + [(r, states[0]) for r in runners[1:]]
    # Repeat r runs the figure's deployment and then the simulation, so that each pair
    # shares the machine's state of the moment; the other deployments run in repeat 0 only.
    figure: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    simulations: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cohort-bench-deploy-") as tmp:
        for repeat in range(args.repeat):
            for i, (runner, state) in enumerate(plans if repeat == 0 else plans[:1]):
                out = Path(tmp) / f"deploy-{runner}-{state}-{repeat}"
                (others if i else figure).append(_deploy(args, runner, state, out))
            simulations.append(_simulate(args, Path(tmp) / f"simulate-{repeat}"))
    d, s = pooled(figure), pooled(simulations)
    ratios = pair_ratios(figure, simulations)
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "config": vars(args),
        "deployment": d,
        "other_deployments": others,
        "simulation": s,
        "parameters": parameter_count(args.model),
        "pair_ratios": ratios,
        "ratio_median_round": round(statistics.median(ratios), 2) if ratios else None,
        "accuracy_difference": max(abs(a - b) for a in d["accuracies"] for b in s["accuracies"]),
    }


def _simulate(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    simulated = run_study(
        StudyConfig(
            clients=args.hospitals,
            rounds=args.rounds,
            committee=args.members,
            quorum=args.members // 2 + 1,
            seed=args.seed,
            secure=SecureMode.parse(args.secure),
            dp=DpSettings(epsilon=3.0),
            model=args.model,
        ),
        out,
    )
    rounds = _rounds(simulated)
    return {
        "round_seconds": rounds,
        "median_round_s": statistics.median(rounds),
        "median_phase_s": _median_phases(_round_phases(simulated)),
        "phase_rounds": _round_phases(simulated),
        "hop_samples": exchange_hops(simulated),
        "accuracy": simulated["final_accuracy"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def parameter_count(model: str) -> int:
    """The number of parameters of ``model`` on the demo data (30 features, 2 classes)."""
    from cohort.clients.model import build_model

    return sum(p.numel() for p in build_model(model, in_features=30, num_classes=2).parameters())


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['median_round_s']:.1f} s | "
        f"{', '.join(f'{x:.1f}' for x in r['round_seconds'])} s | {r['accuracy']:.4f} | "
        f"{r['wall_s']:.0f} s |"
    )


def _label(d: dict[str, Any]) -> str:
    """A deployment's settings: its hospitals' ClientApp runner, the SuperLink's state."""
    return f"{d['clientapp']}, {d.get('superlink_state', 'file')} state"


def _deployments(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [result["deployment"], *result.get("other_deployments", [])]


def phase_table(result: dict[str, Any]) -> list[str]:
    """Median seconds per phase of a round, one column per runtime."""
    s = result["simulation"]
    runs = [(f"deployment ({_label(d)})", d) for d in _deployments(result)]
    runs.append(("simulation", s))
    if not all("median_phase_s" in r for _, r in runs):
        return []
    lines = [
        "Median seconds per phase of a round, as the coordinator timed them:",
        "",
        "| phase | " + " | ".join(name for name, _ in runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for key, label in PHASE_NAMES.items():
        cells = " | ".join(f"{r['median_phase_s'].get(key, 0.0):.2f}" for _, r in runs)
        lines.append(f"| {label} | {cells} |")
    return [*lines, ""]


def _hop_cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({max(values):.2f})"


def hop_table(result: dict[str, Any]) -> list[str]:
    """Median (and longest) seconds of each hop of a train and a decrypt exchange, for the
    figure's deployment and the simulation."""
    d, s = result["deployment"].get("hop_samples"), result["simulation"].get("hop_samples")
    if not d:
        return []
    columns = [
        (f"{label}, {runtime}", (hops or {}).get(label, {}))
        for label in EXCHANGES.values()
        for runtime, hops in (("deployment", d), ("simulation", s))
    ]
    lines = [
        "One message exchange hop by hop (all rounds but the first; median, longest in "
        "brackets, in seconds; per owner unless named), from the coordinator's "
        "`rounds[].exchanges` and, deployed, each hospital's log lines at INFO:",
        "",
        "| step | " + " | ".join(c for c, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for hop, label in HOP_NAMES.items():
        cells = " | ".join(_hop_cell(hops.get(hop, [])) for _, hops in columns)
        lines.append(f"| {label} | {cells} |")
    return [*lines, ""]


def cpu_table(result: dict[str, Any]) -> list[str]:
    """CPU seconds per round of each party, one column per deployment."""
    runs = [d for d in _deployments(result) if d.get("cpu_s_per_round")]
    if not runs:
        return []
    roles = sorted({role for d in runs for role in d["cpu_s_per_round"]})
    lines = [
        "CPU seconds per round of each party's processes (all rounds but the first and the "
        "last, sampled from /proc every 0.25 s):",
        "",
        "| party | " + " | ".join(f"deployment ({_label(d)})" for d in runs) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for role in roles:
        cells = " | ".join(f"{d['cpu_s_per_round'].get(role, 0.0):.2f}" for d in runs)
        lines.append(f"| {role} | {cells} |")
    totals = " | ".join(f"**{sum(d['cpu_s_per_round'].values()):.2f}**" for d in runs)
    return [*lines, f"| all | {totals} |", ""]


def markdown(result: dict[str, Any]) -> str:
    d, s = result["deployment"], result["simulation"]
    c = result["config"]
    load = result["machine"].get("load_average")
    return "\n".join(
        [
            f"{c['hospitals']} hospitals, {c['members']} members, {c['rounds']} rounds, "
            f"{c['secure']}, model {c.get('model', 'mlp')} ({result.get('parameters', '?')} "
            f"parameters), seed {c['seed']}, {result['machine']['cpus']} cores",
            "",
            "| runtime | median round | rounds | final accuracy | whole run |",
            "|---|---|---|---|---|",
            _row(f"deployment (`cohort deploy local`, {_label(d)})", d),
            *(_row(f"deployment ({_label(o)})", o) for o in result.get("other_deployments", [])),
            f"| simulation (`cohort simulate`) | {s['median_round_s']:.1f} s | "
            f"{', '.join(f'{x:.1f}' for x in s['round_seconds'])} s | {s['accuracy']:.4f} | "
            f"{s['wall_s']:.0f} s |",
            "",
            *_repeats(result),
            f"Deployed / simulated median round: **{result['ratio_median_round']}x** "
            "(goal: at most 1.5x); accuracy difference "
            f"{result['accuracy_difference']:.4f} (goal: at most 0.01).",
            "",
            *([f"Load average (1, 5, 15 min) at the end: {load}.", ""] if load else []),
            *phase_table(result),
            *hop_table(result),
            *cpu_table(result),
        ]
    )


def _repeats(result: dict[str, Any]) -> list[str]:
    """The per-pair ratios, when the bench ran more than one pair."""
    ratios = result.get("pair_ratios", [])
    if len(ratios) < 2:
        return []
    return [
        f"{len(ratios)} pairs (the deployment, then the simulation), rounds pooled above; "
        f"each pair's ratio of median rounds: {', '.join(f'{r:.2f}x' for r in ratios)}; "
        "the figure is their median.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=3)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--secure", default="ckks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        default="mlp",
        help="the study's model, e.g. mlp:1024,1024 (about 1.1M parameters)",
    )
    parser.add_argument(
        "--results",
        default="deploy",
        help="file stem under bench/results (deploy.json, deploy.md)",
    )
    parser.add_argument(
        "--clientapp",
        choices=["warm", "subprocess", "both"],
        default="warm",
        help="the hospitals' [hospital] clientapp; both: warm, then subprocess",
    )
    parser.add_argument(
        "--superlink-state",
        choices=["memory", "file", "both"],
        default="both",
        help="cohort deploy local --superlink-state; both: memory (the figure), then file",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of (deployment, simulation) run one after the other; the figure is the "
        "median of the pairs' ratios (this machine's speed drifts between runs)",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    result = run(args)
    text = markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.results}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{args.results}.md").write_text(text)


if __name__ == "__main__":
    main()
