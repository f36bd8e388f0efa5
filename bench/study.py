"""The whole study, as `make demo` runs it: accuracy and wall time per seed.

Runs :func:`cohort.federation.simulate.run_study` (Flower simulation runtime, committee as gRPC
processes, embedded EVM) for each seed and records the held-out accuracy after the last round,
every hospital's epsilon, the finalized rounds and the wall time. Writes
``bench/results/study.json`` and ``bench/results/study.md``.

Figures the foundation issue names: accuracy >= 0.93 after 5 rounds at epsilon 3 for 5
hospitals; the demo finishing in under 2 minutes once installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from cohort.federation.config import DpSettings, SecureMode, StudyConfig
from cohort.federation.simulate import run_study

RESULTS = Path(__file__).resolve().parent / "results"


def one(seed: int, *, clients: int, rounds: int, epsilon: float, secure: str) -> dict[str, Any]:
    config = StudyConfig(
        clients=clients,
        rounds=rounds,
        secure=SecureMode.parse(secure),
        dp=DpSettings(epsilon=epsilon),
        seed=seed,
    )
    with tempfile.TemporaryDirectory(prefix="cohort-bench-") as tmp:
        started = time.perf_counter()
        summary = run_study(config, Path(tmp))
        seconds = time.perf_counter() - started
    return {
        "seed": seed,
        "accuracy": summary["final_accuracy"],
        "accuracy_per_round": [r["accuracy"] for r in summary["rounds"]],
        "max_epsilon": max(c["epsilon_spent"] for c in summary["clients"]),
        "finalized_rounds": summary["chain"]["finalized_rounds"],
        "seconds": round(seconds, 1),
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| seed | accuracy after last round | max epsilon | finalized rounds | wall time |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['accuracy']:.4f} | {r['max_epsilon']:.3f} | "
            f"{r['finalized_rounds']}/{args.rounds} | {r['seconds']:.0f} s |"
        )
    accs = [r["accuracy"] for r in rows]
    lines.append(
        f"| mean | {sum(accs) / len(accs):.4f} (min {min(accs):.4f}) | | | "
        f"{sum(r['seconds'] for r in rows) / len(rows):.0f} s |"
    )
    lines.append("")
    lines.append(
        f"`python bench/study.py` on {os.cpu_count()} cores: {args.clients} hospitals, "
        f"{args.rounds} rounds, epsilon {args.epsilon} per hospital, --secure {args.secure}, "
        "committee 3 (quorum 2); wall time includes starting Ray, the committee processes and "
        "the embedded chain."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated study seeds")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--secure", default="ckks")
    args = parser.parse_args()
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(
            one(
                seed,
                clients=args.clients,
                rounds=args.rounds,
                epsilon=args.epsilon,
                secure=args.secure,
            )
        )
        print(json.dumps(rows[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "parameters": vars(args),
        "runs": rows,
    }
    (RESULTS / "study.json").write_text(json.dumps(payload, indent=2) + "\n")
    table = markdown(rows, args)
    (RESULTS / "study.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
