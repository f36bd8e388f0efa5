"""Cost of TLS and signed control calls per round: one round's committee traffic over gRPC.

What runs: two real committees of ``--committee`` members, each member a ``python -m
cohort.aggregator`` process on 127.0.0.1 (:class:`~cohort.aggregator.committee.LocalCommittee`):
one served over TLS with a study CA and pinned certificates (what ships), one served
plaintext (``--insecure``). Each gets its own signed manifest (TLS: ``tls_ca`` and the
members' fingerprints; plaintext: none), approved by every member operator, and is
configured by the coordinator's signed Configure. Both take the same signed control calls;
only the transport differs. Per round, in the order the coordinator and hospitals make them
(one call at a time, so the member work is the same in both variants):

* 3 signed OpenRound calls (one per member) over the coordinator's long-lived channels;
* ``--clients`` hospitals x k envelopes of one CKKS update (~27.5 MB at 1M parameters),
  each over a fresh channel as ``federation/hospital.py`` uploads (TLS: pre-flight pin check
  and handshake per upload); every member accepts (verify, unseal, CKKS check, store);
* 3 signed Status calls (every member holds every upload) and 3 signed Aggregate calls
  (homomorphic sum, signature, attestation; the ~27.5 MB aggregate comes back);
* the coordinator's quorum check, and in round 1 one owner decrypts and compares the sum with
  the sum of the quantised updates (a correctness check, not timed).

The round's committee time is the sum of those calls plus the coordinator's signing. Two
probes isolate the transport: a fresh channel plus one Info call, and one envelope of the
same size sent when no round is open (the member parses it and refuses it at once:
transfer with almost no member work). ``ControlSigner.sign`` and ``SignedControl.verify``
are also timed directly for every call kind (bodies as the round sends them).

Rounds alternate between the variants; medians over ``--repeat`` rounds (every sample is in
the JSON). A figure, not a test: nothing here asserts a time.

    .venv/bin/python bench/control.py                  # 1M parameters, 10 hospitals, k=3
    .venv/bin/python bench/control.py --params 100000 --repeat 2 --no-write
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from eth_account import Account
from machine import describe as describe_machine
from studies import bench_manifest

from cohort.aggregator.client import MemberClient
from cohort.aggregator.committee import Committee, LocalCommittee, MemberRef
from cohort.aggregator.control import (
    AggregateBody,
    ConfigureBody,
    ControlBody,
    ControlSigner,
    OpenRoundBody,
    StatusBody,
)
from cohort.aggregator.modes import CkksSpec, sign_dealt_context
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity
from cohort.crypto.tls import ChannelTls
from cohort.errors import ProtocolAbort
from cohort.federation.manifest import (
    CommitteeEntry,
    Manifest,
    SignedManifest,
)

RESULTS = Path(__file__).resolve().parent / "results"
UPDATE_STD = 0.01
EXAMPLES_RANGE = (30, 120)
VARIANTS = ("tls", "plaintext")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def clock() -> float:
    return time.perf_counter()


# --------------------------------------------------------------------------- inputs


@dataclass
class Hospitals:
    """The data owners: identities, payout addresses and one CKKS update each."""

    identities: list[Identity]
    payouts: list[str]
    payloads: list[bytes]  # one ciphertext per owner, the same for every member and round
    quantized_sum: np.ndarray

    @property
    def ids(self) -> list[str]:
        return [o.party_id for o in self.identities]


def make_hospitals(context: CkksSecretContext, params: int, clients: int, seed: int) -> Hospitals:
    """Synthetic updates weighted by examples / weight_unit, quantised and encrypted once."""
    rng = np.random.default_rng([seed, params])
    examples = [int(n) for n in rng.integers(EXAMPLES_RANGE[0], EXAMPLES_RANGE[1] + 1, clients)]
    unit = max(examples)
    grid = context.params.release_grid
    identities, payloads = [], []
    total = np.zeros(params, dtype=np.float64)
    for i in range(clients):
        update = rng.normal(0.0, UPDATE_STD, params).astype(np.float32)
        weighted = quantize(update.astype(np.float64) * (examples[i] / unit), grid=grid)
        total += weighted
        payloads.append(context.encrypt(weighted))
        owner_seed = seed.to_bytes(8, "big") + i.to_bytes(24, "big")
        identities.append(Identity.generate(f"hospital-{i:02d}", seed=owner_seed))
    payouts = [str(Account.create().address) for _ in range(clients)]
    return Hospitals(identities, payouts, payloads, total)


def study_manifest(
    *,
    committee: Sequence[CommitteeEntry],
    tls_ca: str,
    hospitals: Hospitals,
    coordinator: Identity,
    sponsor: Identity,
    update_length: int,
    rounds: int,
) -> SignedManifest:
    """A CKKS study over real identities and the local committee's endpoints and pins."""
    return bench_manifest(
        name="bench-control",
        committee=committee,
        owners=list(zip(hospitals.identities, hospitals.payouts, strict=True)),
        coordinator=coordinator,
        sponsor=sponsor,
        sponsor_address=str(Account.create().address),
        contract=str(Account.create().address),
        update_length=update_length,
        rounds=rounds,
        tls_ca=tls_ca,
    )


# --------------------------------------------------------------------------- one variant


@dataclass
class RoundSample:
    """One round of one variant: seconds summed over the calls of each kind."""

    open_round_s: float = 0.0
    upload_s: float = 0.0
    status_s: float = 0.0
    aggregate_s: float = 0.0
    sign_s: float = 0.0  # the coordinator's ControlSigner.sign calls inside the round
    quorum_s: float = 0.0
    envelopes_s: float = 0.0  # building the envelopes (hospital side, not committee time)
    upload_calls: list[float] = field(default_factory=list)

    @property
    def control_s(self) -> float:
        return self.open_round_s + self.status_s + self.aggregate_s

    @property
    def committee_s(self) -> float:
        return self.control_s + self.upload_s + self.sign_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "open_round_s": self.open_round_s,
            "upload_s": self.upload_s,
            "status_s": self.status_s,
            "aggregate_s": self.aggregate_s,
            "control_s": self.control_s,
            "sign_s": self.sign_s,
            "committee_s": self.committee_s,
            "quorum_s": self.quorum_s,
            "envelopes_s": self.envelopes_s,
            "upload_calls_s": self.upload_calls,
        }


@dataclass
class Variant:
    """One committee (TLS or plaintext), its study and the coordinator's handle."""

    name: str
    local: LocalCommittee
    signed: SignedManifest
    manifest: Manifest
    signer: ControlSigner
    committee: Committee
    setup: CkksSpec
    configure_s: list[float] = field(default_factory=list)
    rounds: list[RoundSample] = field(default_factory=list)
    channel_s: list[float] = field(default_factory=list)
    wire_s: list[float] = field(default_factory=list)
    envelope_bytes: int = 0
    err_sum: float = float("nan")

    @property
    def study_id(self) -> str:
        return self.manifest.study_id

    def entries(self) -> dict[str, CommitteeEntry]:
        return {e.member_id: e for e in self.manifest.committee}

    def signed_call(
        self, member_id: str, body: ControlBody, send: Callable[..., Any]
    ) -> tuple[Any, float, float]:
        """Sign right before sending (as Committee does); returns (reply, sign s, call s)."""
        start = clock()
        control = self.signer.sign(self.study_id, member_id, body)
        middle = clock()
        reply = send(control)
        return reply, middle - start, clock() - middle


def start_variant(
    name: str,
    local: LocalCommittee,
    hospitals: Hospitals,
    context: CkksSecretContext,
    *,
    params: int,
    rounds: int,
) -> Variant:
    """Sign and approve the study for ``local``; configure every member (signed, timed)."""
    coordinator = Identity.generate(f"coordinator-{name}")
    signed = study_manifest(
        committee=local.entries(),
        tls_ca=local.ca_pem,
        hospitals=hospitals,
        coordinator=coordinator,
        sponsor=Identity.generate("sponsor"),
        update_length=params,
        rounds=rounds,
    )
    manifest = signed.verify()
    local.approve(signed)
    public = context.public().to_bytes()
    setup = CkksSpec(public, sign_dealt_context(hospitals.identities[0], signed.study_id, public))
    signer = ControlSigner(coordinator)
    committee = local.connect(manifest, signer)
    variant = Variant(name, local, signed, manifest, signer, committee, setup)
    body = ConfigureBody(signed.to_bytes(), setup)
    for member_id in committee.member_ids:
        client = committee.client(member_id)
        # The first call opens the coordinator's channel (TLS: pin pre-flight + handshake).
        _, sign_s, call_s = variant.signed_call(member_id, body, client.configure)
        variant.configure_s.append(sign_s + call_s)
    return variant


def member_tls(variant: Variant, entry: CommitteeEntry) -> ChannelTls | None:
    """What federation/hospital.member_tls gives a data owner for ``entry``."""
    return MemberRef.from_entry(entry).channel_tls(variant.manifest.tls_ca)


class Alternation:
    """The order of the two variants for the next call: flips on every call, so neither
    variant always goes first (caches, allocator, page cache)."""

    def __init__(self, variants: Sequence[Variant]) -> None:
        self._variants = list(variants)

    def next(self) -> list[Variant]:
        self._variants.reverse()
        return list(self._variants)


def play_round(
    variants: Sequence[Variant],
    hospitals: Hospitals,
    rnd: int,
    *,
    check: CkksSecretContext | None = None,
) -> dict[str, RoundSample]:
    """One round of committee traffic for every variant, in lockstep: each call is made to
    the TLS and the plaintext committee back to back (alternating which goes first), one call
    at a time, so drift on the machine hits both alike. With ``check`` (the owners' secret
    context) each accepted aggregate is decrypted and compared with the quantised sum."""
    samples = {v.name: RoundSample() for v in variants}
    order = Alternation(variants)
    members = variants[0].committee.member_ids

    def control(member_id: str, body: ControlBody, rpc: str) -> dict[str, Any]:
        replies = {}
        for v in order.next():
            send = getattr(v.committee.client(member_id), rpc)
            reply, sign_s, call_s = v.signed_call(member_id, body, send)
            sample = samples[v.name]
            sample.sign_s += sign_s
            setattr(sample, f"{rpc}_s", getattr(sample, f"{rpc}_s") + call_s)
            replies[v.name] = reply
        return replies

    for member_id in members:
        control(member_id, OpenRoundBody(rnd), "open_round")

    for owner, payload in zip(hospitals.identities, hospitals.payloads, strict=True):
        blobs: dict[tuple[str, str], bytes] = {}
        for v in variants:
            entries = v.entries()
            start = clock()
            for member_id in members:
                blobs[v.name, member_id] = build_envelope(
                    owner, entries[member_id].identity, study_id=v.study_id, round=rnd,
                    payload=payload,
                ).to_bytes()  # fmt: skip
            samples[v.name].envelopes_s += clock() - start
            v.envelope_bytes = len(blobs[v.name, members[0]])
        for member_id in members:
            for v in order.next():
                entry = v.entries()[member_id]
                start = clock()
                with MemberClient(entry.endpoint, tls=member_tls(v, entry)) as client:
                    client.upload(blobs.pop((v.name, member_id)))
                seconds = clock() - start
                samples[v.name].upload_s += seconds
                samples[v.name].upload_calls.append(seconds)

    for member_id in members:
        for name, status in control(member_id, StatusBody(), "status").items():
            if sorted(status.received) != sorted(hospitals.ids):
                raise SystemExit(f"{name}: {member_id} holds {len(status.received)} uploads")

    ids = tuple(hospitals.ids)
    results: dict[str, list[Any]] = {v.name: [] for v in variants}
    for member_id in members:
        for name, result in control(member_id, AggregateBody(rnd, ids), "aggregate").items():
            results[name].append(result)

    for v in variants:
        start = clock()
        decision = v.committee.decide(results[v.name], round=rnd, client_ids=ids)
        samples[v.name].quorum_s = clock() - start
        if len(decision.agreeing) != len(members):
            raise SystemExit(f"{v.name}: only {decision.agreeing} agree in round {rnd}")
        if check is not None:
            total = check.decrypt(decision.aggregate)
            v.err_sum = float(np.max(np.abs(total - hospitals.quantized_sum)))
            if v.err_sum != 0.0:
                raise SystemExit(f"{v.name}: decrypted sum differs by {v.err_sum:.1e}")
    return samples


def probe_transport(
    variants: Sequence[Variant], payload: bytes, owner: Identity, probes: int
) -> None:
    """Channel set-up + Info, and one full-size envelope refused at once (no round is open
    after the last Aggregate), each to both variants back to back, alternating."""
    order = Alternation(variants)
    members = variants[0].committee.member_ids
    blobs = {
        (v.name, e.member_id): build_envelope(
            owner, e.identity, study_id=v.study_id, round=1, payload=payload
        ).to_bytes()
        for v in variants
        for e in v.manifest.committee
    }
    for _ in range(probes):
        for member_id in members:
            for v in order.next():
                entry = v.entries()[member_id]
                start = clock()
                with MemberClient(entry.endpoint, tls=member_tls(v, entry)) as client:
                    client.info()
                v.channel_s.append(clock() - start)
            for v in order.next():
                entry = v.entries()[member_id]
                start = clock()
                try:
                    with MemberClient(entry.endpoint, tls=member_tls(v, entry)) as client:
                        client.upload(blobs[v.name, member_id])
                except ProtocolAbort as exc:
                    if "round_not_open" not in str(exc):
                        raise
                else:
                    raise SystemExit(f"{v.name}: probe upload was accepted")
                v.wire_s.append(clock() - start)


# --------------------------------------------------------------------------- sign / verify


def time_sign_verify(variant: Variant, clients: Sequence[str], repeat: int) -> dict[str, Any]:
    """ControlSigner.sign and SignedControl.verify per call kind, timed directly with the
    study's signer and coordinator key (run after the rounds; nothing is sent)."""
    member_id = variant.committee.member_ids[0]
    signer, coordinator = variant.signer, variant.manifest.coordinator
    bodies: dict[str, ControlBody] = {
        "configure": ConfigureBody(variant.signed.to_bytes(), variant.setup),
        "open_round": OpenRoundBody(1),
        "status": StatusBody(),
        "aggregate": AggregateBody(1, tuple(clients)),
    }
    out: dict[str, Any] = {}
    for kind, body in bodies.items():
        sign_s, verify_s = [], []
        control = signer.sign(variant.study_id, member_id, body)
        for _ in range(repeat):
            start = clock()
            control = signer.sign(variant.study_id, member_id, body)
            middle = clock()
            control.verify(recipient=member_id, coordinator=coordinator, kind=body.KIND)
            end = clock()
            sign_s.append(middle - start)
            verify_s.append(end - middle)
        out[kind] = {
            "body_bytes": len(control.body),
            "sign_s": median(sign_s),
            "verify_s": median(verify_s),
            "samples": repeat,
        }
    return out


# --------------------------------------------------------------------------- report


def summarize(variants: dict[str, Variant], signing: dict[str, Any], k: int) -> dict[str, Any]:
    """Medians per variant, paired TLS - plaintext differences, signing per round."""
    tls, plain = variants["tls"], variants["plaintext"]
    keys = ("upload_s", "open_round_s", "status_s", "aggregate_s", "control_s", "committee_s")

    def med(v: Variant, key: str) -> float:
        return median([r.to_dict()[key] for r in v.rounds])

    def paired(key: str) -> float:
        return median(
            [
                a.to_dict()[key] - b.to_dict()[key]
                for a, b in zip(tls.rounds, plain.rounds, strict=True)
            ]
        )

    round_s = med(tls, "committee_s")
    per_round_kinds = ("open_round", "status", "aggregate")
    sign_round = k * sum(signing[kind]["sign_s"] for kind in per_round_kinds)
    verify_round = k * sum(signing[kind]["verify_s"] for kind in per_round_kinds)
    overhead = {key: paired(key) for key in keys}
    return {
        "median_per_round": {
            name: {key: med(v, key) for key in (*keys, "sign_s", "quorum_s", "envelopes_s")}
            for name, v in variants.items()
        },
        "tls_overhead_s": overhead,
        "tls_overhead_percent_of_round": {
            key: 100.0 * value / round_s for key, value in overhead.items()
        },
        "signing_per_round": {
            "calls": 3 * k,
            "sign_s": sign_round,
            "verify_s": verify_round,
            "total_s": sign_round + verify_round,
            "percent_of_round": 100.0 * (sign_round + verify_round) / round_s,
        },
        "signing_per_study": {
            "calls": k,
            "sign_s": k * signing["configure"]["sign_s"],
            "verify_s": k * signing["configure"]["verify_s"],
        },
        "configure_s": {name: sum(v.configure_s) for name, v in variants.items()},
        "channel_setup_s": {name: median(v.channel_s) for name, v in variants.items()},
        "wire_probe_s": {name: median(v.wire_s) for name, v in variants.items()},
        "upload_call_s": {name: median(upload_calls(v)) for name, v in variants.items()},
        "paired_call_overhead_s": {
            "what": "median over paired calls (same owner and member, back to back) of TLS - "
            "plaintext seconds",
            "upload": paired_calls(upload_calls(tls), upload_calls(plain)),
            "channel_setup": paired_calls(tls.channel_s, plain.channel_s),
            "wire_probe": paired_calls(tls.wire_s, plain.wire_s),
            "pairs": {
                "upload": len(upload_calls(tls)),
                "channel_setup": len(tls.channel_s),
                "wire_probe": len(tls.wire_s),
            },
        },
        "committee_round_s": round_s,
    }


def upload_calls(variant: Variant) -> list[float]:
    return [s for r in variant.rounds for s in r.upload_calls]


def paired_calls(tls: Sequence[float], plain: Sequence[float]) -> float:
    return median([a - b for a, b in zip(tls, plain, strict=True)])


def fmt_s(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "-"
    sign = "-" if seconds < 0 else ""
    a = abs(seconds)
    if a < 1e-3:
        return f"{sign}{a * 1e6:.0f} us"
    if a < 0.01:
        return f"{sign}{a * 1e3:.2f} ms"
    if a < 1:
        return f"{sign}{a * 1e3:.0f} ms"
    return f"{sign}{a:.2f} s"


def fmt_delta(seconds: float) -> str:
    return ("+" if seconds >= 0 else "") + fmt_s(seconds)


def markdown(results: dict[str, Any]) -> str:
    args, s, m = results["parameters"], results["summary"], results["machine"]
    k, clients = args["committee"], args["clients"]
    med_tls, med_plain = s["median_per_round"]["tls"], s["median_per_round"]["plaintext"]
    over, pct = s["tls_overhead_s"], s["tls_overhead_percent_of_round"]
    mb = results["envelope_bytes"] / 1e6
    params = args["params"]
    size = f"{params / 1e6:g}M" if params >= 1_000_000 else f"{params / 1e3:g}k"

    def row(label: str, key: str) -> str:
        return (
            f"| {label} | {fmt_s(med_tls[key])} | {fmt_s(med_plain[key])} | "
            f"{fmt_delta(over[key])} | {pct[key]:+.1f}% |"
        )

    out = [
        f"# Cost of TLS and signed control calls per round ({size} parameters, "
        f"{clients} hospitals, k={k})",
        "",
        "| one round's committee traffic | TLS + signed control (ships) | plaintext gRPC + "
        "signed control | TLS overhead | % of round |",
        "|---|---:|---:|---:|---:|",
        row(
            f"uploads: {clients} x {k} envelopes of {mb:.1f} MB (fresh channel each, "
            "member accept included)",
            "upload_s",
        ),
        row(f"control calls: {k} OpenRound + {k} Status + {k} Aggregate", "control_s"),
        row(f"of which {k} Aggregate ({mb:.1f} MB reply each)", "aggregate_s"),
        row("committee time per round (uploads + control + signing)", "committee_s"),
    ]
    calls = s["paired_call_overhead_s"]
    per_round = clients * k * calls["upload"]
    out.append(
        f"| one upload (median of {calls['pairs']['upload']} paired calls; x {clients * k} "
        f"= {fmt_delta(per_round)} per round) | {fmt_s(s['upload_call_s']['tls'])} | "
        f"{fmt_s(s['upload_call_s']['plaintext'])} | {fmt_delta(calls['upload'])} | "
        f"{100.0 * per_round / s['committee_round_s']:+.1f}% |"
    )
    sign = s["signing_per_round"]
    out += [
        f"| signing + verifying the {sign['calls']} control calls of a round (direct) | "
        f"{fmt_s(sign['total_s'])} | {fmt_s(sign['total_s'])} | - | "
        f"{sign['percent_of_round']:.3f}% |",
        f"| probe: fresh channel + Info (TLS: pin pre-flight + handshake) | "
        f"{fmt_s(s['channel_setup_s']['tls'])} | {fmt_s(s['channel_setup_s']['plaintext'])} | "
        f"{fmt_delta(calls['channel_setup'])} | - |",
        f"| probe: one {mb:.1f} MB envelope, refused at once (transfer only) | "
        f"{fmt_s(s['wire_probe_s']['tls'])} | {fmt_s(s['wire_probe_s']['plaintext'])} | "
        f"{fmt_delta(calls['wire_probe'])} | - |",
        f"| once per study: {k} signed Configure (opens the coordinator's channels) | "
        f"{fmt_s(s['configure_s']['tls'])} | {fmt_s(s['configure_s']['plaintext'])} | "
        f"{fmt_delta(s['configure_s']['tls'] - s['configure_s']['plaintext'])} | - |",
        "",
        "| control call | body | ControlSigner.sign | SignedControl.verify | calls |",
        "|---|---:|---:|---:|---|",
    ]
    per_kind = {
        "configure": f"{k} per study",
        "open_round": f"{k} per round",
        "status": f"{k} per round",
        "aggregate": f"{k} per round",
    }
    for kind, figures in results["signing"].items():
        out.append(
            f"| {kind} | {figures['body_bytes']:,} B | {fmt_s(figures['sign_s'])} | "
            f"{fmt_s(figures['verify_s'])} | {per_kind[kind]} |"
        )
    out.append(
        f"| per round ({sign['calls']} calls) | | {fmt_s(sign['sign_s'])} | "
        f"{fmt_s(sign['verify_s'])} | {sign['percent_of_round']:.3f}% of the round |"
    )
    cpus = m["cpus_usable"] or m["cpu_count"]
    out += [
        "",
        f"Medians over {args['repeat']} rounds per variant after {args['warmup']} warm-up "
        "round(s). The two committees are driven in lockstep: every call goes to the TLS and "
        "the plaintext member back to back, alternating which goes first, one call at a time. "
        "Overhead is the median of the paired TLS - plaintext differences (per round, or per "
        "call for the upload and probe rows), in percent of the TLS round's committee time "
        f"({fmt_s(s['committee_round_s'])}). Members are `python -m cohort.aggregator` "
        "processes on 127.0.0.1 (LocalCommittee); member work (verify, unseal, CKKS check, "
        "SQLite store with fsync, homomorphic sum) is in both columns and only the transport "
        "differs, so per-round differences carry that work's noise. Probes: "
        f"{args['probes_per_member']} per member and variant. Signing is timed directly "
        f"({args['sign_repeat']} calls per kind). Machine: {cpus} CPU cores "
        f"({m['cpu_model'] or m['platform']}), Python {m['python']}, grpcio {m['grpcio']}, "
        f"{m['date'][:10]}; whole run {results['wall_s']:.0f} s. "
        "Regenerate with `.venv/bin/python bench/control.py`.",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--params", type=int, default=1_000_000, help="model size (parameters)")
    parser.add_argument("--clients", type=int, default=10, help="hospitals (data owners)")
    parser.add_argument("--committee", type=int, default=3, help="committee members k")
    parser.add_argument("--repeat", type=int, default=4, help="rounds per variant (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds played first, not counted")
    parser.add_argument(
        "--probes", type=int, default=5, help="transport probes per member and variant"
    )
    parser.add_argument("--sign-repeat", type=int, default=200, help="direct sign/verify calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    if args.params < 1 or args.clients < 2 or args.committee < 1 or args.repeat < 1:
        parser.error("--params >= 1, --clients >= 2, --committee >= 1, --repeat >= 1")
    if args.sign_repeat < 1 or args.warmup < 0 or args.probes < 1:
        parser.error("--sign-repeat >= 1, --warmup >= 0, --probes >= 1")

    started = clock()
    print(f"{args.params:,} parameters, {args.clients} hospitals: encrypting ...", flush=True)
    context = CkksSecretContext.generate()
    hospitals = make_hospitals(context, args.params, args.clients, args.seed)
    variants: dict[str, Variant] = {}
    with tempfile.TemporaryDirectory(prefix="cohort-bench-control-") as tmp:
        tls_committee = LocalCommittee(args.committee, workdir=Path(tmp) / "tls", tls=True)
        plain_committee = LocalCommittee(args.committee, workdir=Path(tmp) / "plain", tls=False)
        with tls_committee as tls_local, plain_committee as plain_local:
            print("committees up; configuring ...", flush=True)
            try:
                for name, local in (("tls", tls_local), ("plaintext", plain_local)):
                    variants[name] = start_variant(
                        name,
                        local,
                        hospitals,
                        context,
                        params=args.params,
                        rounds=args.warmup + args.repeat,
                    )
                pair = [variants[name] for name in VARIANTS]
                for rnd in range(1, args.warmup + args.repeat + 1):
                    warm = rnd <= args.warmup
                    samples = play_round(pair, hospitals, rnd, check=context if rnd == 1 else None)
                    for name, sample in samples.items():
                        if not warm:
                            variants[name].rounds.append(sample)
                        print(
                            f"round {rnd}{' (warm-up)' if warm else ''} {name:9s}: committee "
                            f"{sample.committee_s:6.2f} s (uploads {sample.upload_s:.2f} s, "
                            f"control {sample.control_s:.2f} s)",
                            flush=True,
                        )
                    gc.collect()
                probe_transport(pair, hospitals.payloads[0], hospitals.identities[0], args.probes)
                signing = time_sign_verify(variants["tls"], hospitals.ids, args.sign_repeat)
            finally:
                for variant in variants.values():
                    variant.committee.close()

    envelope_bytes = variants["tls"].envelope_bytes
    results: dict[str, Any] = {
        "machine": describe_machine(("grpcio", "tenseal", "pynacl", "cryptography")),
        "parameters": {
            "params": args.params,
            "clients": args.clients,
            "committee": args.committee,
            "quorum": args.committee // 2 + 1,
            "repeat": args.repeat,
            "sign_repeat": args.sign_repeat,
            "seed": args.seed,
            "warmup": args.warmup,
            "probes_per_member": args.probes,
        },
        "envelope_bytes": envelope_bytes,
        "signing": signing,
        "summary": summarize(variants, signing, args.committee),
        "variants": {
            name: {
                "tls": v.manifest.tls,
                "configure_s": v.configure_s,
                "rounds": [r.to_dict() for r in v.rounds],
                "channel_setup_s": v.channel_s,
                "wire_probe_s": v.wire_s,
                "max_abs_error_sum_vs_quantized": v.err_sum,
            }
            for name, v in variants.items()
        },
    }
    results["wall_s"] = clock() - started
    text = markdown(results)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "control.json").write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "control.md").write_text(text)
        print(f"wrote {RESULTS / 'control.json'} and {RESULTS / 'control.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
