"""MPC L2-norm check time per update: 2 CrypTen parties + TTP as processes on this machine.

What is timed, per update length (1M and 100k parameters, one client row):

* ``check_s``: wall time of ``check_norms`` as a member sees it (fork the party and TTP
  processes from the forkserver, rendezvous, compute, open one bit, shut down), median of
  the checks after the first; ``check_first_s``: the first check of this bench process,
  which also starts the forkserver (imports torch and CrypTen once);
* ``compute_s``: the MPC work alone inside an initialised party (``norm_bits``), split into
  the sound F_p lift (one secret comparison per element for 2 parties: A2B + B2A) and the
  rest (one TTP square pair, chunk sums, the bound comparisons, the opening);
* communication as CrypTen's communicator counts it for party 0 (rounds, MB).

Goal stated by the project: at most 1 s per 1M-parameter update. No assertion: a figure.

    .venv/bin/python bench/mpc_norm.py               # writes bench/results/mpc_norm.{json,md}
    .venv/bin/python bench/mpc_norm.py --lengths 100000 --no-write
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cohort.aggregator.mpc_validation import check_norms
from cohort.crypto.crypten_norm import NormCheckJob, lift_signed, norm_bits, party_session, run_ttp
from cohort.crypto.fixed_point import FRAC_BITS, PRIME

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_S = 1.0
PARTIES = 2


def _rendezvous() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _jobs(length: int, clients: int, seed: int) -> list[NormCheckJob]:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(scale=1.0 / np.sqrt(length), size=(clients, length)) * 2**FRAC_BITS)
    field = np.mod(x.astype(np.int64), PRIME)
    first = rng.integers(0, PRIME, size=field.shape, dtype=np.int64)
    shares = [first, np.mod(field - first, PRIME)]
    rendezvous = _rendezvous()
    return [
        NormCheckJob(
            rank=r,
            world_size=PARTIES,
            rendezvous=rendezvous,
            prime=PRIME,
            frac_bits=FRAC_BITS,
            bound=1.01,
            shares=shares[r],
            timeout_s=300,
        )
        for r in range(PARTIES)
    ]


def _timed_party(job: NormCheckJob, repeat: int, out: Any) -> None:
    """Party process: time the lift and the whole check ``repeat`` times each."""
    with party_session(job) as crypten:
        crypten.cfg["communicator.verbose"] = True
        shares = torch.from_numpy(job.shares)
        bits = norm_bits(job)  # warm-up
        lift, full = [], []
        crypten.reset_communication_stats()
        for _ in range(repeat):
            started = time.perf_counter()
            bits = norm_bits(job)
            full.append(time.perf_counter() - started)
        stats = crypten.comm.get().get_communication_stats()
        for _ in range(repeat):
            started = time.perf_counter()
            lift_signed(shares, rank=job.rank, world_size=job.world_size, prime=job.prime)
            lift.append(time.perf_counter() - started)
    out.put((job.rank, lift, full, bits, stats))


def bench_compute(length: int, clients: int, repeat: int) -> dict[str, Any]:
    jobs = _jobs(length, clients, seed=length)
    ctx = get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_timed_party, args=(j, repeat, queue)) for j in jobs]
    procs.append(ctx.Process(target=run_ttp, args=(jobs[0].rendezvous, PARTIES, 300.0)))
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=900) for _ in jobs)
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    _, lift, full, bits, stats = results[0]
    compute = statistics.median(full)
    lifted = statistics.median(lift)
    return {
        "length": length,
        "clients": clients,
        "repeat": repeat,
        "accepted": bits,
        "compute_s": compute,
        "compute_s_per_update": compute / clients,
        "lift_s": lifted,
        "rest_s": compute - lifted,
        "rounds_per_check": stats["rounds"] / repeat,
        "mb_sent_party0_per_check": stats["bytes"] / repeat / 1e6,
    }


def bench_check(length: int) -> float:
    jobs, out = _jobs(length, 1, seed=7), {}

    def member(job: NormCheckJob) -> None:
        out[job.rank] = check_norms(job, start_ttp=job.rank == 0)

    started = time.perf_counter()
    threads = [threading.Thread(target=member, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if out.get(0) != [True] or out.get(1) != [True]:
        raise RuntimeError(f"norm check failed for an honest update: {out}")
    return time.perf_counter() - started


def bench_checks(length: int, repeat: int) -> list[float]:
    """``1 + repeat`` whole checks in a row (the first may start the forkserver)."""
    return [bench_check(length) for _ in range(1 + repeat)]


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# MPC L2-norm check (2 CrypTen parties + TTP, this machine)",
        "",
        f"Goal: at most {report['goal_s']:g} s per 1M-parameter update.",
        "",
        "| parameters | clients | MPC compute per update (s) | of which F_p lift (s) | "
        "rest (s) | rounds | MB sent by party 0 | whole check_norms (s) | first check (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['length']:,} | {row['clients']} | {row['compute_s_per_update']:.2f} | "
            f"{row['lift_s'] / row['clients']:.2f} | {row['rest_s'] / row['clients']:.2f} | "
            f"{row['rounds_per_check']:.0f} | {row['mb_sent_party0_per_check']:.0f} | "
            f"{row.get('check_s', float('nan')):.2f} | "
            f"{row.get('check_first_s', float('nan')):.2f} |"
        )
    lines += ["", report["notes"], "", f"Machine: {report['machine']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000_000, 100_000])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--notes", default="")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for length in args.lengths:
        row = bench_compute(length, args.clients, args.repeat)
        checks = bench_checks(length, args.repeat)
        row["check_first_s"] = checks[0]
        row["check_s"] = statistics.median(checks[1:])
        rows.append(row)
        print(json.dumps(row))
    report = {
        "parties": PARTIES,
        "provider": "TTP",
        "goal_s": GOAL_S,
        "rows": rows,
        "notes": args.notes,
        "machine": describe(["torch", "crypten", "numpy"]),
    }
    print(markdown(report))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "mpc_norm.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "mpc_norm.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
