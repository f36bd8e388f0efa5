"""One round's secure aggregation, four ways, on the same update vectors: plaintext FedAvg,
Cohort CKKS, Cohort MPC (Shamir shares, k members, threshold t) and Flower's SecAgg+.

Inputs: ``--clients`` fixed float32 vectors ~ N(0, 0.01), client ``i``'s seeded by
``[seed, size, i]`` (``bench/secagg.py``'s :func:`~secagg.client_vector`, so SecAgg+'s Ray
clients return the very same vectors), unweighted (``num_examples = 1``): the released
figure is the plain mean, compared with the float64 mean of the raw vectors.

What runs, in-process (no envelopes, no gRPC, no SQLite, no chain; envelopes add about
200 bytes per upload, ``bench/round.py`` measures them):

1. **plaintext**: each client rounds its vector to the 2^-16 grid (``quantize``); the
   coordinator sums the float64 values and divides by the client count (the reference);
2. **CKKS**: each client quantises and encrypts (``CkksSecretContext.encrypt``); each of
   the k members accepts all uploads (``CkksMode.accept``: parse once, coefficients kept in
   a temporary folder) and sums them (``combine_kept``); one owner decrypts;
3. **MPC**: each client does what ``federation/modes/mpc/owner.py:share_payloads`` does
   (``FieldEncoding.encode``, ``share`` with the seeded members rotated by ``upload_order``,
   ``SharePayload.to_bytes``); each member runs ``MpcMode.accept`` on its share of every
   upload (checked, then added to the round's running sum), then ``combine_kept`` (its
   packed partial); the coordinator opens all k partials
   (``MpcMode.open_partials``, which checks them against each other) and decodes. The norm
   check inside MPC is not run here (``bench/mpc_norm.py``);
4. **SecAgg+**: ``bench/secagg.py``'s :func:`~secagg.measure_secagg` (a Ray simulation),
   once with the workflow defaults and once with ``max_weight=1``.

Times are wall clock (``time.perf_counter``), medians over ``--repeat`` runs (every sample
is in the JSON). Client time is per client, member time per member (members run on their
own machines, in parallel), coordinator time is the decrypt or reconstruct + decode. What a
secure way *adds* is its client + member + coordinator time minus the plaintext way's
client + server time (as SecAgg+'s is its round minus a plain Flower round).
Where MPC's time goes is profiled (``cProfile``) in one extra run per size.

    .venv/bin/python bench/mpc.py                               # 100k and 1M parameters
    .venv/bin/python bench/mpc.py --sizes 100000 --repeat 1 --no-write
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
from machine import describe as describe_machine
from numpy.typing import NDArray
from secagg import client_vector, measure_secagg, parse_sizes, reference_mean

from cohort.aggregator.modes import CkksMode, MpcMode
from cohort.aggregator.replication import upload_order
from cohort.crypto.ckks import DEFAULT_PARAMS, CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.fixed_point import FieldEncoding
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import ShamirScheme, share
from cohort.crypto.share_payload import SharePayload, unpack_field

T = TypeVar("T")
P = ParamSpec("P")
RESULTS = Path(__file__).resolve().parent / "results"
ROUND = 1
ENVELOPE_NOTE_BYTES = 200
#: A seed share payload is a 34-byte header and a 4-byte-prefixed 32-byte seed.
SEED_PAYLOAD_MAX = 128
#: The project's goals for MPC at 1M parameters, 10 clients, k = 3, t = 2.
GOAL_ADDED_S = 0.1
GOAL_SPEEDUP = 5.0
GOAL_RATIO = 1.5
GOAL_ERROR = 1e-5
#: Functions whose time the profile reports, by (module file suffix, name).
PROFILED = (
    ("fixed_point.py", "encode"),
    ("fixed_point.py", "decode"),
    ("shamir.py", "share"),
    ("shamir.py", "_combine"),
    ("shamir.py", "robust_reconstruct"),
    ("prg.py", "expand_field"),
    ("share_payload.py", "pack_field"),
    ("share_payload.py", "unpack_field"),
    ("share_payload.py", "from_bytes"),
    ("share_payload.py", "to_bytes"),
    ("modes/mpc.py", "accept"),
    ("modes/mpc.py", "combine_kept"),
    ("modes/mpc.py", "open_partials"),
)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {"median": median(values), "samples": list(values)}


def timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    """Run ``fn(*args, **kwargs)`` once; return its result and the seconds it took."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def max_error(mean: NDArray[np.float64], reference: NDArray[np.float64]) -> float:
    return float(np.max(np.abs(mean - reference)))


# --------------------------------------------------------------------------- plaintext


def run_plain(
    vectors: Sequence[NDArray[np.float32]], reference: NDArray[np.float64], repeat: int
) -> dict[str, Any]:
    """Quantise per client; the coordinator sums float64 and divides (the reference)."""
    grid = DEFAULT_PARAMS.release_grid
    client_s: list[float] = []
    server_s: list[float] = []
    mean: NDArray[np.float64] = np.empty(0)
    for _ in range(repeat):
        quantised = []
        for vector in vectors:
            q, seconds = timed(quantize, vector, grid=grid)
            quantised.append(q)
            client_s.append(seconds)
        start = time.perf_counter()
        total = np.zeros(vectors[0].size, dtype=np.float64)
        for q in quantised:  # a running sum, as a server folds in replies
            total += q
        mean = total / len(vectors)
        server_s.append(time.perf_counter() - start)
    n = int(vectors[0].size)
    return {
        "client_s": summary(client_s),
        "member_s": summary(server_s),
        "coordinator_s": summary([0.0]),
        "upload_bytes_per_client": 4 * n,
        "upload_ratio": 1.0,
        "max_abs_error": max_error(mean, reference),
        "note": "member time is the coordinator's running numpy sum of the quantised vectors",
    }


def plain_round_s(plain: dict[str, Any]) -> float:
    """The plaintext round that a secure way's "added" time is counted over: the client's
    quantise plus the server's sum."""
    return float(plain["client_s"]["median"] + plain["member_s"]["median"])


# --------------------------------------------------------------------------- ckks


def run_ckks(
    vectors: Sequence[NDArray[np.float32]],
    reference: NDArray[np.float64],
    repeat: int,
    committee: int,
    context: CkksSecretContext,
) -> dict[str, Any]:
    """Encrypt per client; every member accepts (parse once) and sums; one owner decrypts."""
    grid = context.params.release_grid
    public = context.public()
    clients = len(vectors)
    keys = [i.to_bytes(32, "big") for i in range(clients)]
    senders = [f"owner-{i}" for i in range(clients)]
    client_s: list[float] = []
    accept_s: list[float] = []
    combine_s: list[float] = []
    member_s: list[float] = []
    decrypt_s: list[float] = []
    payload_bytes: list[int] = []
    mean = np.empty(0)
    for _ in range(repeat):
        payloads: list[bytes] = []
        for vector in vectors:
            start = time.perf_counter()
            payload = context.encrypt(quantize(vector, grid=grid))
            client_s.append(time.perf_counter() - start)
            payloads.append(payload)
            payload_bytes.append(len(payload))
        aggregate = b""
        for _member in range(committee):
            mode = CkksMode(public)
            start = time.perf_counter()
            for key, payload, sender in zip(keys, payloads, senders, strict=True):
                mode.accept(
                    payload, length=int(vectors[0].size), round=ROUND, key=key, sender=sender
                )
            middle = time.perf_counter()
            aggregate = mode.combine_kept(ROUND, keys, payloads.__getitem__, senders=senders)
            end = time.perf_counter()
            accept_s.append(middle - start)
            combine_s.append(end - middle)
            member_s.append(end - start)
        del payloads
        total, seconds = timed(context.decrypt, aggregate)
        decrypt_s.append(seconds)
        mean = total / clients
    n = int(vectors[0].size)
    upload = statistics.fmean(payload_bytes)
    return {
        "client_s": summary(client_s),
        "member_accept_s": summary(accept_s),
        "member_combine_s": summary(combine_s),
        "member_s": summary(member_s),
        "coordinator_s": summary(decrypt_s),
        "upload_bytes_per_client": upload,
        "upload_ratio": upload / (4 * n),
        "max_abs_error": max_error(mean, reference),
        "note": "coordinator time is one owner's decrypt (the owner holds the key)",
    }


# --------------------------------------------------------------------------- mpc


class MpcRound:
    """The three roles of one MPC round over fixed parameters (no envelopes)."""

    def __init__(self, *, clients: int, committee: int, threshold: int, length: int) -> None:
        self.study_id = tagged_hash(Tag.PAYLOAD, b"bench/mpc.py").hex()
        self.members = tuple(f"member-{j}" for j in range(committee))
        self.senders = tuple(f"hospital-{i:02d}" for i in range(clients))
        self.encoding = FieldEncoding()
        self.scheme = ShamirScheme(committee, threshold, self.encoding.prime)
        self.length = length
        self.modes = {
            m: MpcMode(
                study_id=self.study_id, members=self.members, member_id=m, scheme=self.scheme
            )
            for m in self.members
        }

    def client(self, sender: str, vector: NDArray[np.float32]) -> dict[str, bytes]:
        """As ``share_payloads``: encode, share (seeded members rotated), serialise."""
        secret = self.encoding.encode(vector.astype(np.float64), clients=len(self.senders))
        domains = [share_domain(self.study_id, ROUND, m, sender) for m in self.members]
        order = upload_order(self.members, study_id=self.study_id, round=ROUND, sender=sender)
        seeded = [self.members.index(m) for m in order[: self.scheme.threshold - 1]]
        shares = share(secret, self.scheme, domains=domains, seeded=seeded)
        return {
            self.members[s.index]: SharePayload(self.scheme, int(secret.size), s).to_bytes()
            for s in shares
        }

    def member(self, member_id: str, uploads: Sequence[bytes]) -> tuple[bytes, float, float]:
        """Accept every upload's share (checked, its values added to the round's running
        sum), then the packed partial from that sum; (partial, accept s, combine s)."""
        mode = self.modes[member_id]
        keys = [i.to_bytes(32, "big") for i in range(len(uploads))]
        start = time.perf_counter()
        for payload, key, sender in zip(uploads, keys, self.senders, strict=True):
            mode.accept(payload, length=self.length, round=ROUND, key=key, sender=sender)
        middle = time.perf_counter()
        partial = mode.combine_kept(ROUND, keys, uploads.__getitem__, senders=self.senders)
        return partial, middle - start, time.perf_counter() - middle

    def coordinator(self, partials: dict[str, bytes]) -> tuple[NDArray[np.float64], float, float]:
        """Open all partials (checked against each other) and decode; (sum, open s, decode s)."""
        mode = self.modes[self.members[0]]
        start = time.perf_counter()
        opened = mode.open_partials(partials, length=self.length)
        middle = time.perf_counter()
        if opened.wrong:
            raise RuntimeError(f"mpc: partials off the polynomial: {opened.wrong}")
        total = self.encoding.decode(unpack_field(opened.aggregate, self.length, self.scheme.prime))
        return total, middle - start, time.perf_counter() - middle


def mpc_once(
    rnd: MpcRound, vectors: Sequence[NDArray[np.float32]], samples: dict[str, list[float]]
) -> tuple[NDArray[np.float64], list[int], dict[str, int]]:
    """One MPC round; appends timings to ``samples``; returns (mean, bytes per client,
    full shares per member)."""
    inbox: dict[str, list[bytes]] = {m: [] for m in rnd.members}
    upload: list[int] = []
    full = dict.fromkeys(rnd.members, 0)
    for sender, vector in zip(rnd.senders, vectors, strict=True):
        payloads, seconds = timed(rnd.client, sender, vector)
        samples["client_s"].append(seconds)
        upload.append(sum(len(p) for p in payloads.values()))
        for m, p in payloads.items():
            inbox[m].append(p)
            full[m] += len(p) > SEED_PAYLOAD_MAX
    partials: dict[str, bytes] = {}
    for m in rnd.members:
        partials[m], check_s, combine_s = rnd.member(m, inbox[m])
        samples["member_check_s"].append(check_s)
        samples["member_combine_s"].append(combine_s)
        samples["member_s"].append(check_s + combine_s)
    del inbox
    total, open_s, decode_s = rnd.coordinator(partials)
    samples["coordinator_open_s"].append(open_s)
    samples["coordinator_decode_s"].append(decode_s)
    samples["coordinator_s"].append(open_s + decode_s)
    return total / len(vectors), upload, full


def profile_mpc(rnd: MpcRound, vectors: Sequence[NDArray[np.float32]]) -> dict[str, Any]:
    """Cumulative seconds per role inside the functions of :data:`PROFILED` (one run)."""
    out: dict[str, Any] = {}
    inbox: dict[str, list[bytes]] = {m: [] for m in rnd.members}
    partials: dict[str, bytes] = {}

    def clients() -> None:
        for sender, vector in zip(rnd.senders, vectors, strict=True):
            for m, p in rnd.client(sender, vector).items():
                inbox[m].append(p)

    def members() -> None:
        for m in rnd.members:
            partials[m] = rnd.member(m, inbox[m])[0]

    def coordinator() -> None:
        rnd.coordinator(partials)

    for role, fn, per in (
        ("client", clients, len(rnd.senders)),
        ("member", members, len(rnd.members)),
        ("coordinator", coordinator, 1),
    ):
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.runcall(fn)
        wall = time.perf_counter() - start
        profiler.create_stats()
        rows: dict[str, Any] = {"wall_s_per_party": wall / per}
        for (filename, _line, name), (
            _cc,
            ncalls,
            _tt,
            cumtime,
            _callers,
        ) in profiler.stats.items():
            for suffix, wanted in PROFILED:
                if name == wanted and filename.endswith(suffix):
                    key = f"{suffix.removesuffix('.py')}.{name}"
                    if key in rows:
                        continue
                    rows[key] = {
                        "calls_per_party": ncalls / per,
                        "s_per_party": float(cumtime) / per,
                    }
        out[role] = rows
    return out


def run_mpc(
    vectors: Sequence[NDArray[np.float32]],
    reference: NDArray[np.float64],
    repeat: int,
    committee: int,
    threshold: int,
    plain: dict[str, Any],
) -> dict[str, Any]:
    """MPC's figures; ``added_s`` is its round minus the plaintext round ``plain`` (client
    quantise + server sum), as SecAgg+'s is its round minus a plain Flower round."""
    n = int(vectors[0].size)
    rnd = MpcRound(clients=len(vectors), committee=committee, threshold=threshold, length=n)
    names = (
        "client_s",
        "member_check_s",
        "member_combine_s",
        "member_s",
        "coordinator_open_s",
        "coordinator_decode_s",
        "coordinator_s",
    )
    samples: dict[str, list[float]] = {name: [] for name in names}
    mean = np.empty(0)
    upload: list[int] = []
    full: dict[str, int] = {}
    per_member_max: list[float] = []
    for _ in range(repeat):
        mean, upload, full = mpc_once(rnd, vectors, samples)
        per_member_max.append(max(samples["member_s"][-committee:]))
        gc.collect()
    bytes_per_client = statistics.fmean(upload)
    figures: dict[str, Any] = {name: summary(samples[name]) for name in names}
    client = figures["client_s"]["median"]
    member = median(per_member_max)
    coordinator = figures["coordinator_s"]["median"]
    gross = client + member + coordinator
    plain_round = plain_round_s(plain)
    figures.update(
        {
            "member_s_slowest": summary(per_member_max),
            "full_shares_per_member": full,
            "upload_bytes_per_client": bytes_per_client,
            "upload_ratio": bytes_per_client / (4 * n),
            "max_abs_error": max_error(mean, reference),
            "round_s": gross,
            "round_note": "client share time + slowest member's time + coordinator time",
            "plain_round_s": plain_round,
            "added_s": gross - plain_round,
            "added_note": "round_s minus the plaintext round (client quantise + server sum)",
            "profile": profile_mpc(rnd, vectors),
        }
    )
    return figures


# --------------------------------------------------------------------------- secagg+


def run_secagg(size: int, clients: int, seed: int, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, weight in (("default", None), ("max_weight_1", 1.0)):
        figures, seconds = timed(
            measure_secagg, size, clients, seed, repeat=repeat, max_weight=weight
        )
        out[label] = {**figures, "wall_s": seconds}
        gc.collect()
    return out


# --------------------------------------------------------------------------- report


def fmt_s(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def fmt_params(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def added_over_plain(round_s: float, plain: dict[str, Any]) -> str:
    """``round - plain round (round)`` for the table's "added" column."""
    plain_round = plain_round_s(plain)
    return f"{fmt_s(round_s - plain_round)} ({fmt_s(round_s)} - {fmt_s(plain_round)})"


def size_table(size: dict[str, Any]) -> list[str]:
    plain, ckks, mpc = size["plain"], size["ckks"], size["mpc"]
    sec, sec1 = size["secagg"]["default"], size["secagg"]["max_weight_1"]
    header = [
        "way",
        "client s (per client)",
        "member / server s",
        "coordinator s",
        "added s",
        "upload per client",
        "ratio to float32",
        "max abs err of mean",
    ]
    rows = [
        [
            "plaintext FedAvg (reference)",
            fmt_s(plain["client_s"]["median"]),
            fmt_s(plain["member_s"]["median"]) + " (numpy sum)",
            "-",
            "-",
            fmt_bytes(plain["upload_bytes_per_client"]),
            "1.00x",
            f"{plain['max_abs_error']:.1e}",
        ],
        [
            "Cohort CKKS",
            fmt_s(ckks["client_s"]["median"]),
            fmt_s(ckks["member_s"]["median"])
            + f" (accept {fmt_s(ckks['member_accept_s']['median'])}"
            + f" + sum {fmt_s(ckks['member_combine_s']['median'])})",
            fmt_s(ckks["coordinator_s"]["median"]) + " (decrypt)",
            added_over_plain(
                ckks["client_s"]["median"]
                + ckks["member_s"]["median"]
                + ckks["coordinator_s"]["median"],
                plain,
            ),
            fmt_bytes(ckks["upload_bytes_per_client"]),
            f"{ckks['upload_ratio']:.2f}x",
            f"{ckks['max_abs_error']:.1e}",
        ],
        [
            "Cohort MPC (no norm check)",
            fmt_s(mpc["client_s"]["median"]),
            fmt_s(mpc["member_s_slowest"]["median"])
            + f" slowest (accept {fmt_s(mpc['member_check_s']['median'])}"
            + f" + combine {fmt_s(mpc['member_combine_s']['median'])})",
            fmt_s(mpc["coordinator_s"]["median"])
            + f" (open {fmt_s(mpc['coordinator_open_s']['median'])}"
            + f" + decode {fmt_s(mpc['coordinator_decode_s']['median'])})",
            added_over_plain(mpc["round_s"], plain),
            fmt_bytes(mpc["upload_bytes_per_client"]),
            f"{mpc['upload_ratio']:.2f}x",
            f"{mpc['max_abs_error']:.1e}",
        ],
    ]
    for label, s in (("Flower SecAgg+ (defaults)", sec), ("Flower SecAgg+ (max_weight=1)", sec1)):
        rows.append(
            [
                label,
                fmt_s(s["secagg_client_s_mean"]),
                fmt_s(s["secagg_server_s"]) + " (server)",
                "(in server)",
                fmt_s(s["added_round_s"]) + " (round - plain round)",
                fmt_bytes(s["secagg_upload_bytes_per_client"]),
                f"{s['secagg_upload_bytes_per_client'] / s['plaintext_float32_bytes']:.2f}x",
                f"{s['secagg_max_abs_error']:.1e}",
            ]
        )
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def profile_table(size: dict[str, Any]) -> list[str]:
    prof = size["mpc"]["profile"]
    out = [
        "| role | function | calls per party | s per party |",
        "|---|---|---:|---:|",
    ]
    for role in ("client", "member", "coordinator"):
        rows = prof[role]
        out.append(f"| {role} | (whole role, profiled) | | {fmt_s(rows['wall_s_per_party'])} |")
        items = [(k, v) for k, v in rows.items() if k != "wall_s_per_party"]
        for key, v in sorted(items, key=lambda kv: -kv[1]["s_per_party"]):
            out.append(
                f"| {role} | `{key}` | {v['calls_per_party']:.1f} | {fmt_s(v['s_per_party'])} |"
            )
    return out


def goals(results: dict[str, Any]) -> list[str]:
    size = max(results["sizes"], key=lambda s: s["params"])
    mpc = size["mpc"]
    sec = size["secagg"]["default"]
    sec1 = size["secagg"]["max_weight_1"]
    added = mpc["added_s"]
    speedup = sec["added_round_s"] / added
    speedup1 = sec1["added_round_s"] / added

    def verdict(ok: bool) -> str:
        return "**meets**" if ok else "**misses**"

    return [
        f"Goals at {fmt_params(size['params'])} parameters (MPC, aggregation only, "
        "without the norm check):",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
        f"| MPC added to a plaintext round <= {GOAL_ADDED_S:g} s | {fmt_s(added)}: client "
        f"{fmt_s(mpc['client_s']['median'])} + slowest member "
        f"{fmt_s(mpc['member_s_slowest']['median'])} + coordinator "
        f"{fmt_s(mpc['coordinator_s']['median'])} = {fmt_s(mpc['round_s'])}, minus the "
        f"plaintext round's {fmt_s(mpc['plain_round_s'])} (quantise + sum) | "
        f"{verdict(added <= GOAL_ADDED_S)} |",
        f"| >= {GOAL_SPEEDUP:g}x faster than SecAgg+'s added time | SecAgg+ adds "
        f"{fmt_s(sec['added_round_s'])} (defaults) / {fmt_s(sec1['added_round_s'])} "
        f"(max_weight=1): {speedup:.1f}x / {speedup1:.1f}x | "
        f"{verdict(min(speedup, speedup1) >= GOAL_SPEEDUP)} |",
        f"| upload <= {GOAL_RATIO:g}x float32 | {mpc['upload_ratio']:.4f}x "
        f"({fmt_bytes(mpc['upload_bytes_per_client'])}) | "
        f"{verdict(mpc['upload_ratio'] <= GOAL_RATIO)} |",
        f"| error <= {GOAL_ERROR:g} | {mpc['max_abs_error']:.1e} | "
        f"{verdict(mpc['max_abs_error'] <= GOAL_ERROR)} |",
    ]


def analysis(results: dict[str, Any]) -> str:
    """Where MPC's time goes at the largest size, from the profile (see the table)."""
    size = max(results["sizes"], key=lambda s: s["params"])
    mpc = size["mpc"]
    prof = mpc["profile"]
    full = statistics.fmean(mpc["full_shares_per_member"].values())

    def part(role: str, *keys: str) -> float:
        return float(sum(prof[role].get(k, {}).get("s_per_party", 0.0) for k in keys))

    def share(role: str, *keys: str) -> str:
        return f"{part(role, *keys) / prof[role]['wall_s_per_party']:.0%}"

    unpacks = prof["member"].get("share_payload.unpack_field", {}).get("calls_per_party", 0.0)
    seconds_per_unpack = part("member", "share_payload.unpack_field") / max(unpacks, 1.0)
    return (
        "Reading the profile. "
        f"Client: the Lagrange interpolation (`shamir._combine`) is "
        f"{share('client', 'shamir._combine')} of its time, `pack_field` (2 full shares) "
        f"{share('client', 'share_payload.pack_field')}, `expand_field` (1 seed) "
        f"{share('client', 'prg.expand_field')}. "
        f"Member: `unpack_field` is {share('member', 'share_payload.unpack_field')} of its "
        f"time ({unpacks:.0f} calls for {full:.1f} full shares on average: each full share is "
        "parsed once, at acceptance, and added to the round's running sum; one unpack of "
        f"{fmt_params(size['params'])} values costs "
        f"{fmt_s(seconds_per_unpack)}), and expanding the seeded shares "
        f"(`expand_field`) {share('member', 'prg.expand_field')}. Coordinator: the robust "
        f"reconstruction is {share('coordinator', 'shamir.robust_reconstruct')} of its time "
        "(with three partials it interpolates once and checks the third point against it), "
        "unpacking the partials and packing the sum "
        f"{share('coordinator', 'share_payload.unpack_field', 'share_payload.pack_field')}."
    )


def norm_reference() -> str:
    path = RESULTS / "mpc_norm.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "The norm check's figures (`bench/results/mpc_norm.json`) were not found."
    parts = [
        f"{fmt_params(int(r['length']))}: {r['compute_s_per_update']:.2f} s of MPC compute "
        f"per update, {r['check_s']:.1f} s for the whole check_norms call"
        for r in sorted(data.get("rows", []), key=lambda r: r["length"])
    ]
    return (
        "Not included above: the L2-norm check inside MPC (CrypTen, "
        f"{data.get('parties')} parties + {data.get('provider')}), measured by "
        "`bench/mpc_norm.py` (`bench/results/mpc_norm.json`, "
        f"{data.get('machine', {}).get('date', '?')[:10]}): " + "; ".join(parts) + f" (goal "
        f"{data.get('goal_s')} s per update). A round with the norm check adds those seconds "
        "to the MPC figures here: the 0.1 s goal is for the aggregation (share, sum, "
        "reconstruct), which is what is measured above."
    )


def markdown(results: dict[str, Any]) -> str:
    args = results["parameters"]
    m = results["machine"]
    out = [
        "# Secure aggregation, four ways, on the same vectors (bench/mpc.py)",
        "",
        f"{args['clients']} clients, fixed float32 vectors ~ N(0, 0.01) (`secagg.client_vector`, "
        f"seed {args['seed']}), unweighted mean; committee k={args['committee']}, threshold "
        f"t={args['threshold']}; medians of {args['repeat']} run(s). Client time is per client, "
        "member time per member (the slowest member for MPC: members differ in how many full "
        "shares they hold), coordinator time is the decrypt (CKKS) or open + decode (MPC). "
        '"Added" is what a secure round costs over a plaintext one: for Cohort its client + '
        "member + coordinator time minus the plaintext row's client + server time; for "
        "SecAgg+ its round minus a plain Flower round in the same simulation. Upload: CKKS "
        "the payload, MPC the "
        f"sum of the {args['committee']} share payloads, SecAgg+ the protobuf replies; "
        f"Cohort's envelopes (signature + seal) add about {ENVELOPE_NOTE_BYTES} bytes per "
        "upload, not counted.",
        "",
    ]
    for size in results["sizes"]:
        out += [f"## {fmt_params(size['params'])} parameters", ""]
        out += size_table(size)
        out.append("")
    out += goals(results)
    out.append("")
    big = max(results["sizes"], key=lambda s: s["params"])
    out += [
        f"## Where MPC's time goes at {fmt_params(big['params'])} (cProfile, one extra run; "
        "cumulative, so nested rows overlap)",
        "",
    ]
    out += profile_table(big)
    out += ["", analysis(results), "", norm_reference(), ""]
    cpus = m["cpus_usable"] or m["cpu_count"]
    out.append(
        f"Machine: {cpus} CPU cores ({m['cpu_model'] or m['platform']}), Python {m['python']}, "
        f"numpy {m['numpy']}, TenSEAL {m['tenseal']}, Flower {m['flwr']}, {m['date'][:10]}; "
        f"whole run {results['wall_s']:.0f} s; other jobs shared the cores (load average "
        f"{results['load_average']['start']:.1f} at the start, "
        f"{results['load_average']['end']:.1f} at the end), so times vary between runs "
        "(several-fold for the 100k rows, which take tens of milliseconds)."
    )
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=parse_sizes, default=[100_000, 1_000_000])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--committee", type=int, default=3)
    parser.add_argument("--threshold", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (medians shown)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-secagg", action="store_true", help="skip Flower SecAgg+")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.repeat < 1 or not 1 <= args.threshold <= args.committee:
        parser.error("--clients >= 2, --repeat >= 1, 1 <= --threshold <= --committee")

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    results: dict[str, Any] = {
        "machine": describe_machine(("numpy", "tenseal", "flwr", "pynacl")),
        "parameters": {
            "sizes": args.sizes,
            "clients": args.clients,
            "committee": args.committee,
            "threshold": args.threshold,
            "repeat": args.repeat,
            "seed": args.seed,
            "vectors": "secagg.client_vector: float32 N(0, 0.01) seeded [seed, size, client]",
            "goals_at_largest": {
                "mpc_added_s": GOAL_ADDED_S,
                "speedup_vs_secagg": GOAL_SPEEDUP,
                "upload_ratio": GOAL_RATIO,
                "max_abs_error": GOAL_ERROR,
            },
        },
        "sizes": [],
    }
    context = CkksSecretContext.generate()
    for params in args.sizes:
        vectors = [client_vector(params, args.seed, i) for i in range(args.clients)]
        reference = reference_mean(params, args.clients, args.seed)
        row: dict[str, Any] = {"params": params}
        print(f"{params:,} parameters: plaintext ...", flush=True)
        row["plain"] = run_plain(vectors, reference, args.repeat)
        print(f"{params:,} parameters: mpc ...", flush=True)
        row["mpc"] = run_mpc(
            vectors, reference, args.repeat, args.committee, args.threshold, row["plain"]
        )
        print(f"{params:,} parameters: ckks ...", flush=True)
        row["ckks"] = run_ckks(vectors, reference, args.repeat, args.committee, context)
        del vectors, reference
        gc.collect()
        if not args.no_secagg:
            print(f"{params:,} parameters: secagg+ (Ray simulation) ...", flush=True)
            row["secagg"] = run_secagg(params, args.clients, args.seed, args.repeat)
        results["sizes"].append(row)
        print(json.dumps({k: v for k, v in row["mpc"].items() if k != "profile"}, indent=1))
    results["wall_s"] = time.perf_counter() - started
    results["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    if args.no_secagg:
        print(json.dumps(results, indent=1, default=str))
        return 0
    text = markdown(results)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "mpc.json").write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "mpc.md").write_text(text)
        print(f"wrote {RESULTS / 'mpc.json'} and {RESULTS / 'mpc.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
