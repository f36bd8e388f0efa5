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
run's FAB once, and polls every ``[superlink] poll-interval`` (0.25 s) when idle, every 50
ms for 3 s after a message or reply; its SuperNode announces each task to the runner on a
pipe instead of being asked every 50 ms (:mod:`cohort.federation.supernode_loop`);
:mod:`cohort.federation.flower_waits` shortens Flower's 1 s, 2 s, 4 s waits for message
objects that have not arrived yet; each message's vector rides inside its config record, so
a message is three content objects, not six (:mod:`cohort.federation.wire`). ``cohort deploy
local`` gives each co-located hospital one torch thread (``[hospital] threads = 1``), as the
simulation gives each ClientApp one CPU. The coordinator times each phase of a round
(summary.json, ``rounds[].phases``); the breakdown table below the figures comes from there.
``--clientapp both`` also runs Flower's plain SuperNode (``subprocess``) for the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cohort.federation.config import DpSettings, StudyConfig
from cohort.federation.deploy_local import LocalPlan, deploy_local
from cohort.federation.manifest import SecureMode
from cohort.federation.simulate import run_study

RESULTS = Path(__file__).resolve().parent / "results"


PHASE_NAMES = {
    "open": "open the round at the committee",
    "train": "train message (send, train, upload, reply)",
    "committee": "committee: replicate uploads, aggregate",
    "chain": "attest and finalize on chain",
    "decrypt": "decrypt message (two owners)",
    "evaluate": "evaluate the new model",
    "other": "coordinator bookkeeping",
}


def _rounds(summary: dict[str, Any]) -> list[float]:
    return [float(r["seconds"]) for r in summary["rounds"]]


def _phases(summary: dict[str, Any]) -> dict[str, float]:
    """Median seconds per phase over the rounds, as the coordinator timed them; ``other``
    is the rest of each round."""
    per_round = []
    for r in summary["rounds"]:
        phases = {k: float(v) for k, v in r.get("phases", {}).items()}
        phases["other"] = max(0.0, float(r["seconds"]) - sum(phases.values()))
        per_round.append(phases)
    return {
        name: round(statistics.median(p.get(name, 0.0) for p in per_round), 3)
        for name in PHASE_NAMES
        if per_round
    }


def _deploy(args: argparse.Namespace, clientapp: str, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    summary = deploy_local(
        LocalPlan(
            hospitals=args.hospitals,
            members=args.members,
            rounds=args.rounds,
            seed=args.seed,
            secure=SecureMode.parse(args.secure),
            clientapp=clientapp,
        ),
        out,
    )
    rounds = _rounds(summary)
    return {
        "clientapp": clientapp,
        "round_seconds": rounds,
        "median_round_s": statistics.median(rounds),
        "median_phase_s": _phases(summary),
        "accuracy": summary["final_accuracy"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    runners = ["warm", "subprocess"] if args.clientapp == "both" else [args.clientapp]
    with tempfile.TemporaryDirectory(prefix="cohort-bench-deploy-") as tmp:
        deployments = [_deploy(args, r, Path(tmp) / f"deploy-{r}") for r in runners]
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
            ),
            Path(tmp) / "simulate",
        )
        simulate_wall = time.perf_counter() - started
    s_rounds = _rounds(simulated)
    s_median = statistics.median(s_rounds)
    d = deployments[0]
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        },
        "config": vars(args),
        "deployment": d,
        "other_deployments": deployments[1:],
        "simulation": {
            "round_seconds": s_rounds,
            "median_round_s": s_median,
            "median_phase_s": _phases(simulated),
            "accuracy": simulated["final_accuracy"],
            "wall_s": round(simulate_wall, 1),
        },
        "ratio_median_round": round(d["median_round_s"] / s_median, 2) if s_median else None,
        "accuracy_difference": abs(d["accuracy"] - simulated["final_accuracy"]),
    }


def _row(name: str, r: dict[str, Any]) -> str:
    return (
        f"| {name} | {r['median_round_s']:.1f} s | "
        f"{', '.join(f'{x:.1f}' for x in r['round_seconds'])} s | {r['accuracy']:.4f} | "
        f"{r['wall_s']:.0f} s |"
    )


def phase_table(result: dict[str, Any]) -> list[str]:
    """Median seconds per phase of a round, one column per runtime."""
    d, s = result["deployment"], result["simulation"]
    runs = [(f"deployment ({d['clientapp']})", d)]
    runs += [(f"deployment ({o['clientapp']})", o) for o in result.get("other_deployments", [])]
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


def markdown(result: dict[str, Any]) -> str:
    d, s = result["deployment"], result["simulation"]
    c = result["config"]
    load = result["machine"].get("load_average")
    return "\n".join(
        [
            f"{c['hospitals']} hospitals, {c['members']} members, {c['rounds']} rounds, "
            f"{c['secure']}, seed {c['seed']}, {result['machine']['cpus']} cores",
            "",
            "| runtime | median round | rounds | final accuracy | whole run |",
            "|---|---|---|---|---|",
            _row(f"deployment (`cohort deploy local`, clientapp {d['clientapp']})", d),
            *(
                _row(f"deployment (clientapp {o['clientapp']})", o)
                for o in result.get("other_deployments", [])
            ),
            f"| simulation (`cohort simulate`) | {s['median_round_s']:.1f} s | "
            f"{', '.join(f'{x:.1f}' for x in s['round_seconds'])} s | {s['accuracy']:.4f} | "
            f"{s['wall_s']:.0f} s |",
            "",
            f"Deployed / simulated median round: **{result['ratio_median_round']}x** "
            "(goal: at most 1.5x); accuracy difference "
            f"{result['accuracy_difference']:.4f} (goal: at most 0.01).",
            "",
            *([f"Load average (1, 5, 15 min) at the end: {load}.", ""] if load else []),
            *phase_table(result),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=3)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secure", default="ckks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clientapp",
        choices=["warm", "subprocess", "both"],
        default="warm",
        help="the hospitals' [hospital] clientapp; both: warm, then Flower's subprocess",
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    result = run(args)
    text = markdown(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "deploy.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "deploy.md").write_text(text)


if __name__ == "__main__":
    main()
