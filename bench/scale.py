"""Many simulated hospitals: time per round and every process's peak memory.

Runs ``cohort simulate --data synthetic`` (Flower's simulation runtime on Ray, one ClientApp
actor per core; the committee as k gRPC+TLS processes; the embedded chain; the coordinator in
this process) for each ``--clients`` count, with a ~100k-parameter MLP (``mlp:300,300``,
100,202 parameters on 30 features), CKKS mode, 3 rounds. A sampler thread reads every
process's peak resident set (``VmHWM`` in ``/proc/<pid>/status``, the kernel's own counter)
once a second and keeps the largest per role: the coordinator (this process), each committee
member, the ClientApp actors (Ray workers) and Ray's own daemons. Writes
``bench/results/scale.json`` and ``bench/results/scale.md``.

Figures the issues name: 200 hospitals complete 3 rounds with peak memory under 8 GB (issue
6); 100, 300 and 1,000 hospitals at 100k parameters, time per round, member and coordinator
peak memory, 1,000 hospitals completing 3 rounds on 2 cores with every process under 4 GB
(issue 9). The default runs 100, 200, 300 and 1,000; ``--keep`` keeps the rows of
``scale.json`` for the counts not run now (each row says when it was measured). The study
contract's roster holds at
most 1,024 data owners (``MAX_DATA_OWNERS``: a finalizing attestation counts every contributor
in one transaction, docs/contract.md "Large rosters").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cohort.federation.config import DpSettings, SecureMode, StudyConfig
from cohort.federation.simulate import run_study

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "mlp:300,300"


def _role(cmdline: str, pid: int) -> str | None:
    if pid == os.getpid():
        return "coordinator"
    if "cohort.aggregator" in cmdline:
        return "member"
    if "ClientAppActor" in cmdline or ("ray::" in cmdline and "Actor" in cmdline):
        return "clientapp"
    if "ray" in cmdline and ("raylet" in cmdline or "gcs_server" in cmdline or "ray/" in cmdline):
        return "ray"
    return None


def _peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class PeakSampler(threading.Thread):
    """Largest VmHWM seen per role (KiB), and per process."""

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self.processes: dict[int, tuple[str, int]] = {}
        self._halt = threading.Event()

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            role = _role(cmdline, pid)
            if role is None:
                continue
            peak = _peak_kib(pid)
            self.peaks[role] = max(self.peaks.get(role, 0), peak)
            old = self.processes.get(pid, (role, 0))[1]
            self.processes[pid] = (role, max(old, peak))

    def run(self) -> None:
        while not self._halt.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self._halt.set()


def one(clients: int, *, rounds: int, seed: int) -> dict[str, Any]:
    config = StudyConfig(
        clients=clients,
        rounds=rounds,
        secure=SecureMode.CKKS,
        dp=DpSettings(epsilon=3.0),
        seed=seed,
        model=MODEL,
        data="synthetic",
    )
    sampler = PeakSampler()
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="cohort-bench-scale-") as tmp:
        started = time.perf_counter()
        summary = run_study(config, Path(tmp))
        wall = time.perf_counter() - started
    sampler.stop()
    gib = 1024 * 1024
    return {
        "clients": clients,
        "rounds": rounds,
        "round_seconds": [r["seconds"] for r in summary["rounds"]],
        "included": [len(r["clients_included"]) for r in summary["rounds"]],
        "accuracy": summary["final_accuracy"],
        "finalized_rounds": summary["chain"]["finalized_rounds"],
        "wall_s": round(wall, 1),
        "peak_gib": {role: round(kib / gib, 3) for role, kib in sorted(sampler.peaks.items())},
        "max_process_gib": round(max(p for _, p in sampler.processes.values()) / gib, 3),
        "measured": time.strftime("%Y-%m-%d"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"`{MODEL}` (100,202 parameters), CKKS, k=3, synthetic records, {os.cpu_count()} cores",
        "",
        "| hospitals | rounds done | median round | included per round | coordinator peak | "
        "member peak | ClientApp actor peak | largest process | accuracy | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        times = sorted(r["round_seconds"])
        median = times[len(times) // 2] if times else float("nan")
        peak = r["peak_gib"]
        lines.append(
            f"| {r['clients']} | {len(r['round_seconds'])}/{r['rounds']} | {median:.1f} s | "
            f"{', '.join(map(str, r['included']))} | {peak.get('coordinator', 0):.2f} GiB | "
            f"{peak.get('member', 0):.2f} GiB | {peak.get('clientapp', 0):.2f} GiB | "
            f"{r['max_process_gib']:.2f} GiB | {r['accuracy']:.4f} | "
            f"{r.get('measured', 'earlier')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 200, 300, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--keep", action="store_true", help="keep scale.json's rows for other client counts"
    )
    args = parser.parse_args()
    kept: list[dict[str, Any]] = []
    if args.keep and (RESULTS / "scale.json").exists():
        old = json.loads((RESULTS / "scale.json").read_text())["rows"]
        kept = [r for r in old if r["clients"] not in args.clients]
    rows = list(kept)
    for clients in args.clients:
        rows.append(one(clients, rounds=args.rounds, seed=args.seed))
        rows.sort(key=lambda r: int(r["clients"]))
        print(json.dumps(next(r for r in rows if r["clients"] == clients)), flush=True)
        if not args.no_write:
            RESULTS.mkdir(exist_ok=True)
            result = {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "model": MODEL,
                "rows": rows,
            }
            (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
            (RESULTS / "scale.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
