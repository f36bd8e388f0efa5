"""One data owner's round, split: DP-SGD training, protection (CKKS or MPC) and upload.

What runs is what ``federation/hospital.py`` ``train`` runs for one owner, step by step:

* prepare: the liveness ping of every committee member (``owner_net.reachable_members``,
  Info over TLS), which the secure mode's ``prepare`` makes before any budget is spent;
* DP-SGD training: ``build_model`` + ``set_flat`` of the global model, ``train_dp`` on the
  largest hospital of the breast-cancer demo split (``demo_split(num_hospitals=5, seed=0)``,
  213 examples) with the DP config the demo study's manifest gives (``dp_config``: epsilon 3
  over 5 rounds, delta 1e-5, 1 local epoch, batch 32, C 1, lr 1; the ledger written to
  disk as in a real round), then the weighted delta ``(trained - global) * examples /
  weight_unit``;
* protection. CKKS (``modes/ckks/owner.py``): ``quantize`` to the release grid,
  ``CkksSecretContext.encrypt``, the payload hash. MPC (``modes/mpc/owner.py``):
  ``share_payloads`` (``FieldEncoding.encode``, Shamir ``share`` with t - 1 seeded shares,
  one ``SharePayload`` per member) and one payload hash per member;
* upload over real gRPC with TLS to a real committee: ``k`` ``python -m cohort.aggregator``
  processes on 127.0.0.1 (:class:`~cohort.aggregator.committee.LocalCommittee`, study CA and
  pinned certificates), configured by the coordinator's signed Configure for a signed,
  approved study manifest per mode and model (the owner is in its roster and is the CKKS
  key dealer). CKKS: ``owner_net.upload``, ONE committee upload (sign for the committee +
  seal to the first member of the upload order + serialize, fresh TLS channel, the member's
  accept: verify, unseal, CKKS check, store with fsync, signed receipt, checked by the owner).
  MPC: ``owner_net.upload_to`` for every member in a thread pool, as ``MpcOwner.deliver``.

The same trained update feeds both modes in a round (training does not depend on the mode).
Each round the coordinator opens the round on every member first (not timed). With
``--repeat R`` the round runs R times per model after ``--warmup`` rounds; the table shows
medians (every sample is in the JSON). The sign + seal + serialize part of the upload is
also timed alone (``build_upload``, outside the round) to separate it from the transfer and
the member's accept. Members run on this machine, so the upload time includes their work
on the same cores. A figure, not a test: nothing here asserts a time.

    .venv/bin/python bench/client_split.py           # mlp and mlp:352,256 (~100k), 3 repeats
    .venv/bin/python bench/client_split.py --models mlp --repeat 2 --no-write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from eth_account import Account
from machine import describe as describe_machine
from studies import bench_manifest

from cohort.aggregator.committee import Committee, LocalCommittee
from cohort.aggregator.control import ControlSigner
from cohort.aggregator.modes import CkksSpec, sign_dealt_context
from cohort.aggregator.modes.mpc import MpcSpec
from cohort.aggregator.mpc_records import mpc_terms_digest
from cohort.aggregator.replication import upload_order
from cohort.clients.data import Dataset, demo_split
from cohort.clients.model import build_model, get_flat, num_parameters, set_flat
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import train_dp
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.fixed_point import FRAC_BITS, PRIME
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import share
from cohort.crypto.share_payload import SharePayload
from cohort.crypto.upload import build_upload
from cohort.federation.deploy_local import free_ports
from cohort.federation.dp_terms import dp_config
from cohort.federation.manifest import DpTerms, Manifest, MpcTerms, SecureMode, SignedManifest
from cohort.federation.modes.mpc.owner import scheme_of, share_payloads
from cohort.federation.owner_net import Delivered, reachable_members, upload, upload_to

RESULTS = Path(__file__).resolve().parent / "results"
HOSPITALS = 5  # the demo split
ROUNDS = 5  # the demo study's rounds: calibrates the DP noise
# The demo study's DP terms (federation/config.py DpSettings = DpConfig defaults).
DEMO_DP = DpTerms(epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=32, max_grad_norm=1.0, lr=1.0)
MPC_NORM_BOUND = 10.0  # checked inside MPC at aggregation only; no effect on the owner's side
MODES = ("ckks", "mpc")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def clock() -> float:
    return time.perf_counter()


# --------------------------------------------------------------------------- the study


@dataclass
class Study:
    """One signed, approved, configured study (one mode, one model) on the local committee."""

    mode: str
    signed: SignedManifest
    manifest: Manifest
    committee: Committee


@dataclass
class Parties:
    owners: list[Identity]
    payouts: list[str]
    coordinator: Identity
    sponsor: Identity
    signer: ControlSigner


def make_parties(seed: int) -> Parties:
    owners = [
        Identity.generate(f"hospital-{i}", seed=seed.to_bytes(8, "big") + i.to_bytes(24, "big"))
        for i in range(HOSPITALS)
    ]
    coordinator = Identity.generate("coordinator")
    return Parties(
        owners,
        [str(Account.create().address) for _ in owners],
        coordinator,
        Identity.generate("sponsor"),
        ControlSigner(coordinator),
    )


def start_study(
    mode: str,
    local: LocalCommittee,
    parties: Parties,
    context: CkksSecretContext,
    *,
    model: str,
    params: int,
    rounds: int,
) -> Study:
    """Sign the study's manifest (demo DP terms, ``model``), have every member operator
    approve it and the coordinator configure every member (signed Configure)."""
    base = bench_manifest(
        name=f"bench-client-split-{mode}-{model}",
        committee=local.entries(),
        owners=list(zip(parties.owners, parties.payouts, strict=True)),
        coordinator=parties.coordinator,
        sponsor=parties.sponsor,
        sponsor_address=str(Account.create().address),
        contract=str(Account.create().address),
        update_length=params,
        rounds=rounds,
        tls_ca=local.ca_pem,
    ).manifest
    changes: dict[str, Any] = {"dp": DEMO_DP, "model": model}
    if mode == "mpc":
        ports = free_ports(local.size)
        changes["secure"] = SecureMode.MPC
        changes["mpc"] = MpcTerms(
            PRIME, FRAC_BITS, MPC_NORM_BOUND, tuple(f"127.0.0.1:{p}" for p in ports)
        )
    signed = SignedManifest.sign(dataclasses.replace(base, **changes), parties.sponsor)
    manifest = signed.verify()
    local.approve(signed)
    committee = local.connect(manifest, parties.signer)
    if mode == "ckks":
        public = context.public().to_bytes()
        setup: CkksSpec | MpcSpec = CkksSpec(
            public, sign_dealt_context(parties.owners[0], manifest.study_id, public)
        )
    else:
        setup = MpcSpec(mpc_terms_digest(manifest))
    errors = committee.configure(signed, setup)
    if errors:
        raise SystemExit(f"{mode} {model}: configure failed: {errors}")
    return Study(mode, signed, manifest, committee)


# --------------------------------------------------------------------------- one round


@dataclass
class ModeSamples:
    """Per-round samples of one mode at one model size (seconds, bytes)."""

    prepare_s: list[float] = field(default_factory=list)
    protect_s: list[float] = field(default_factory=list)
    upload_s: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # prepare + train + protect + upload
    steps: dict[str, list[float]] = field(default_factory=dict)  # parts of protect
    envelope_s: list[float] = field(default_factory=list)  # build_upload alone, per round
    payload_bytes: list[int] = field(default_factory=list)  # per upload
    upload_bytes: list[int] = field(default_factory=list)  # per upload
    uploads: int = 0  # per round

    def step(self, name: str, seconds: float) -> None:
        self.steps.setdefault(name, []).append(seconds)


def train_round(
    data: Dataset, manifest: Manifest, ledger: PrivacyLedger, global_model: np.ndarray, rnd: int
) -> tuple[np.ndarray, int]:
    """hospital.train between prepare and deliver: DP-SGD and the weighted delta."""
    model = build_model(
        manifest.model, in_features=manifest.features, num_classes=manifest.num_classes
    )
    set_flat(model, global_model)
    result = train_dp(
        model,
        data,
        config=dp_config(manifest),
        ledger=ledger,
        round=rnd,
        noise_seed=None,
        study_id=manifest.study_id,
    )
    weight = result.examples / len(data)  # this owner is the largest: weight unit = its count
    delta = get_flat(model).astype(np.float64) - global_model.astype(np.float64)
    return delta * weight, result.examples


def ckks_deliver(
    study: Study, owner: Identity, context: CkksSecretContext, update: np.ndarray, rnd: int,
    alive: Sequence[str], samples: ModeSamples,
) -> float:  # fmt: skip
    """CkksOwner.deliver, timed step by step; returns the protection seconds."""
    manifest = study.manifest
    t0 = clock()
    quantized = quantize(update, grid=context.params.release_grid)
    t1 = clock()
    payload = context.encrypt(quantized)
    t2 = clock()
    payload_hash = tagged_hash(Tag.PAYLOAD, payload)
    t3 = clock()
    delivered = upload(
        owner, manifest, round=rnd, payload=payload, payload_hash=payload_hash, prefer=alive
    )
    t4 = clock()
    if delivered is None:
        raise SystemExit(f"ckks round {rnd}: no member accepted the upload")
    samples.step("quantize", t1 - t0)
    samples.step("encrypt", t2 - t1)
    samples.step("hash", t3 - t2)
    samples.upload_s.append(t4 - t3)
    samples.uploads = 1
    # The sign + seal + serialize part of that upload, alone (outside the round).
    holder = manifest.member(delivered.member_id)
    if holder is None:
        raise SystemExit(f"ckks round {rnd}: {delivered.member_id!r} is not in the manifest")
    committee = [e.identity for e in manifest.committee]
    start = clock()
    blob = build_upload(
        owner, committee, holder.identity, study_id=manifest.study_id, round=rnd,
        payload=payload, payload_hash=payload_hash,
    ).to_bytes()  # fmt: skip
    samples.envelope_s.append(clock() - start)
    samples.payload_bytes.append(len(payload))
    samples.upload_bytes.append(len(blob))
    return t3 - t0


def mpc_deliver(
    study: Study, owner: Identity, update: np.ndarray, rnd: int, alive: Sequence[str],
    samples: ModeSamples,
) -> float:  # fmt: skip
    """MpcOwner.deliver, timed; returns the protection seconds."""
    manifest = study.manifest
    t0 = clock()
    payloads = share_payloads(manifest, sender=owner.party_id, round=rnd, update=update)
    t1 = clock()
    hashes = {m: tagged_hash(Tag.PAYLOAD, p) for m, p in payloads.items()}
    t2 = clock()

    def send(member_id: str) -> Delivered | None:
        return upload_to(
            owner, manifest, member_id, round=rnd, payload=payloads[member_id],
            payload_hash=hashes[member_id],
        )  # fmt: skip

    targets = [m for m in manifest.member_ids if m in alive]
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        delivered = [d for d in pool.map(send, targets) if d is not None]
    t3 = clock()
    if len(delivered) < len(targets):
        raise SystemExit(f"mpc round {rnd}: {len(delivered)} of {len(targets)} members took it")
    samples.step("share_payloads", t1 - t0)
    samples.step("hash", t2 - t1)
    samples.upload_s.append(t3 - t2)
    samples.uploads = len(targets)
    mpc_parts(manifest, owner, update, rnd, samples)
    committee = [e.identity for e in manifest.committee]
    start = clock()
    for member_id in targets:
        entry = manifest.member(member_id)
        if entry is None:
            raise SystemExit(f"mpc round {rnd}: {member_id!r} is not in the manifest")
        blob = build_upload(
            owner, committee, entry.identity, study_id=manifest.study_id, round=rnd,
            payload=payloads[member_id], payload_hash=hashes[member_id],
        ).to_bytes()  # fmt: skip
        samples.payload_bytes.append(len(payloads[member_id]))
        samples.upload_bytes.append(len(blob))
    samples.envelope_s.append(clock() - start)
    return t2 - t0


def mpc_parts(
    manifest: Manifest, owner: Identity, update: np.ndarray, rnd: int, samples: ModeSamples
) -> None:
    """share_payloads' three stages timed alone (outside the round), with the primitives
    it calls: encode, Shamir share, one SharePayload per member."""
    encoding, scheme = scheme_of(manifest)
    t0 = clock()
    secret = encoding.encode(update, clients=len(manifest.owners))
    t1 = clock()
    members = manifest.member_ids
    domains = [share_domain(manifest.study_id, rnd, m, owner.party_id) for m in members]
    order = upload_order(members, study_id=manifest.study_id, round=rnd, sender=owner.party_id)
    seeded = [members.index(m) for m in order[: scheme.threshold - 1]]
    shares = share(secret, scheme, domains=domains, seeded=seeded)
    t2 = clock()
    for s in shares:
        SharePayload(scheme, int(secret.size), s).to_bytes()
    t3 = clock()
    samples.step("part: encode", t1 - t0)
    samples.step("part: share", t2 - t1)
    samples.step("part: payloads", t3 - t2)


def run_model(
    model: str, local: LocalCommittee, parties: Parties, context: CkksSecretContext,
    data: Dataset, *, warmup: int, repeat: int, home: Path,
) -> dict[str, Any]:  # fmt: skip
    torch.manual_seed(0)
    init = build_model(model, in_features=data.features.shape[1], num_classes=2)
    params = num_parameters(init)
    global_model = get_flat(init)
    rounds = max(ROUNDS, warmup + repeat)
    studies = {
        mode: start_study(mode, local, parties, context, model=model, params=params, rounds=rounds)
        for mode in MODES
    }
    owner = parties.owners[0]
    ckks_manifest = studies["ckks"].manifest
    ledger = PrivacyLedger.open(
        home / f"ledger-{model.replace(':', '_').replace(',', '-')}.json",
        owner=owner.party_id,
        epsilon_cap=100.0,
        delta=ckks_manifest.dp.delta,
    )
    train_s: list[float] = []
    samples = {mode: ModeSamples() for mode in MODES}
    try:
        for rnd in range(1, warmup + repeat + 1):
            for study in studies.values():
                errors = study.committee.open_round(rnd)
                if errors:
                    raise SystemExit(f"{study.mode} round {rnd}: open_round failed: {errors}")
            start = clock()
            update, _ = train_round(data, ckks_manifest, ledger, global_model, rnd)
            trained = clock() - start
            counted = rnd > warmup
            row = [f"round {rnd}{' (warm-up)' if not counted else ''}: train {trained:.3f} s"]
            for mode, study in studies.items():
                target = samples[mode] if counted else ModeSamples()
                start = clock()
                alive = reachable_members(study.manifest)
                prepare = clock() - start
                if mode == "ckks":
                    protect = ckks_deliver(study, owner, context, update, rnd, alive, target)
                else:
                    protect = mpc_deliver(study, owner, update, rnd, alive, target)
                target.prepare_s.append(prepare)
                target.protect_s.append(protect)
                target.round_s.append(prepare + trained + protect + target.upload_s[-1])
                row.append(f"{mode}: protect {protect:.3f} s, upload {target.upload_s[-1]:.3f} s")
            if counted:
                train_s.append(trained)
            print("  " + "; ".join(row), flush=True)
    finally:
        for study in studies.values():
            study.committee.close()
    return {
        "model": model,
        "params": params,
        "train_s": {"median": median(train_s), "samples": train_s},
        "modes": {mode: summarize(s, train_s) for mode, s in samples.items()},
    }


def summarize(s: ModeSamples, train_s: Sequence[float]) -> dict[str, Any]:
    round_med = median(s.round_s)
    parts = {
        "prepare_s": s.prepare_s,
        "train_s": list(train_s),
        "protect_s": s.protect_s,
        "upload_s": s.upload_s,
    }
    out: dict[str, Any] = {
        name: {
            "median": median(v),
            "share_of_round": median(v) / round_med,
            "samples": v,
        }
        for name, v in parts.items()
    }
    out["round_s"] = {"median": round_med, "samples": s.round_s}
    out["protect_steps_s"] = {k: {"median": median(v), "samples": v} for k, v in s.steps.items()}
    out["build_upload_s"] = {"median": median(s.envelope_s), "samples": s.envelope_s}
    out["uploads_per_round"] = s.uploads
    out["payload_bytes"] = s.payload_bytes[: s.uploads]
    out["upload_bytes"] = s.upload_bytes[: s.uploads]
    return out


# --------------------------------------------------------------------------- report


def fmt_s(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_bytes(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n:.0f} B"


def fmt_range(sizes: Sequence[int]) -> str:
    """One size, or "least-most" when uploads differ (MPC: t - 1 members get a seed)."""
    low, high = min(sizes), max(sizes)
    return fmt_bytes(low) if low == high else f"{fmt_bytes(low)}-{fmt_bytes(high)}"


def markdown(results: dict[str, Any]) -> str:
    args = results["parameters"]
    m = results["machine"]
    cols = [(size, mode) for size in results["models"] for mode in MODES]
    header = ["one owner's round (median)"] + [
        f"{mode.upper()} `{size['model']}` ({size['params']:,} params)" for size, mode in cols
    ]
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(cols)]

    def line(label: str, cell: Any) -> None:
        out.append("| " + label + " | " + " | ".join(cell(s["modes"][mo]) for s, mo in cols) + " |")

    def part(key: str) -> Any:
        return lambda c: f"{fmt_s(c[key]['median'])} ({100 * c[key]['share_of_round']:.0f}%)"

    line("prepare: liveness ping of k members (TLS Info)", part("prepare_s"))
    line("DP-SGD training (train_dp, 1 epoch, + weighted delta)", part("train_s"))
    line("protection (CKKS: quantize + encrypt + hash; MPC: share_payloads + hashes)",
         part("protect_s"))  # fmt: skip
    line("upload (sign + seal + gRPC/TLS + member accept + receipt)", part("upload_s"))
    line("**round total**", lambda c: f"**{fmt_s(c['round_s']['median'])}**")

    def step(name: str) -> Any:
        def cell(c: dict[str, Any]) -> str:
            v = c["protect_steps_s"].get(name)
            return fmt_s(v["median"]) if v else "-"

        return cell

    for name in ("quantize", "encrypt", "share_payloads", "hash"):
        line(f"of protection: {name}", step(name))
    for name in ("encode", "share", "payloads"):
        line(f"of share_payloads, alone: {name}", step(f"part: {name}"))
    line("of upload, alone: build_upload (sign + seal + serialize), all uploads",
         lambda c: fmt_s(c["build_upload_s"]["median"]))  # fmt: skip
    line("uploads per round", lambda c: str(c["uploads_per_round"]))
    line("bytes per upload (payload)", lambda c: fmt_range(c["payload_bytes"]))
    line("bytes per upload (on the wire, sealed)", lambda c: fmt_range(c["upload_bytes"]))
    line("bytes per round (all uploads)", lambda c: fmt_bytes(sum(c["upload_bytes"])))
    out.append(
        "| bytes per round / float32 bytes of the update | "
        + " | ".join(
            f"{sum(s['modes'][mo]['upload_bytes']) / (4 * s['params']):.1f}x" for s, mo in cols
        )
        + " |"
    )
    cpus = m["cpus_usable"] or m["cpu_count"]
    note = (
        f"Medians of {args['repeat']} round(s) after {args['warmup']} warm-up round(s); "
        "percentages are shares of the round total (prepare + training + protection + upload). "
        f"Owner: hospital 0 of the demo split ({args['examples']} examples), demo DP terms "
        "(epsilon 3 over 5 rounds, delta 1e-5, batch 32, C 1, lr 1, 1 local epoch). Committee: "
        f"k={args['committee']} `python -m cohort.aggregator` processes on 127.0.0.1 over "
        "TLS with pinned certificates (LocalCommittee), configured by signed Configure for "
        "approved manifests; the members run on the same cores as the owner, so upload time "
        "includes their accept (verify, unseal, check, SQLite store). CKKS sends one "
        "committee upload (the members relay copies among themselves); MPC sends one share "
        "per member in parallel threads (t - 1 of the shares are 32-byte seeds, hence the "
        "range of sizes). The 'alone' rows are timed outside the round. "
        f"Machine: {cpus} CPU cores ({m['cpu_model'] or m['platform']}, shared with other "
        f"work), Python {m['python']}, torch {m['torch']}, TenSEAL {m['tenseal']}, "
        f"grpcio {m['grpcio']}, {m['date'][:10]}; whole run {results['wall_s']:.0f} s. "
        "Regenerate with `.venv/bin/python bench/client_split.py`."
    )
    title = "# One data owner's round: DP-SGD training, protection and upload\n\n"
    return title + "\n".join(out) + "\n\n" + note + "\n"


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--models",
        default="mlp,mlp:352,256",
        help="model specs separated by ';' or by ',' between specs (default: the demo's mlp "
        "and mlp:352,256, 101,794 parameters)",
    )
    parser.add_argument("--committee", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per model (medians)")
    parser.add_argument("--warmup", type=int, default=1, help="rounds first, not counted")
    parser.add_argument("--hospital", type=int, default=0, help="demo hospital (0 is largest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    if args.committee < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--committee >= 1, --repeat >= 1, --warmup >= 0")
    if args.warmup + args.repeat > ROUNDS:
        parser.error(f"--warmup + --repeat at most {ROUNDS} (the demo study's rounds)")
    models = parse_models(args.models)

    started = clock()
    hospitals, _ = demo_split(num_hospitals=HOSPITALS, seed=0)
    if not 0 <= args.hospital < len(hospitals):
        parser.error(f"--hospital 0..{len(hospitals) - 1}")
    data = hospitals[args.hospital]
    if len(data) != max(len(h) for h in hospitals):
        print("note: not the largest hospital; its weight is still taken as 1", flush=True)
    context = CkksSecretContext.generate()
    parties = make_parties(args.seed)
    sizes: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cohort-bench-client-split-") as tmp,
        LocalCommittee(args.committee, workdir=Path(tmp) / "committee", tls=True) as local,
    ):
        for model in models:
            print(f"{model}: {args.warmup} + {args.repeat} rounds ...", flush=True)
            sizes.append(
                run_model(
                    model,
                    local,
                    parties,
                    context,
                    data,
                    warmup=args.warmup,
                    repeat=args.repeat,
                    home=Path(tmp),
                )
            )
    results: dict[str, Any] = {
        "machine": describe_machine(("torch", "opacus", "tenseal", "grpcio", "pynacl")),
        "parameters": {
            "models": models,
            "committee": args.committee,
            "quorum": args.committee // 2 + 1,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "hospital": args.hospital,
            "examples": len(data),
            "dp": dataclasses.asdict(DEMO_DP) | {"rounds": ROUNDS},
            "transport": "gRPC over TLS (LocalCommittee, pinned certificates), 127.0.0.1",
            "torch_threads": torch.get_num_threads(),
        },
        "models": sizes,
    }
    results["wall_s"] = clock() - started
    text = markdown(results)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "client_split.json").write_text(json.dumps(results, indent=1) + "\n")
        (RESULTS / "client_split.md").write_text(text)
        print(f"wrote {RESULTS / 'client_split.json'} and {RESULTS / 'client_split.md'}")
    return 0


def parse_models(text: str) -> list[str]:
    """``"mlp,mlp:352,256"`` -> ["mlp", "mlp:352,256"]: a comma starts a new spec unless
    the next item is a number (a hidden width of the previous ``mlp:`` spec)."""
    specs: list[str] = []
    for item in (p.strip() for p in text.replace(";", ",").split(",")):
        if not item:
            continue
        if item.isdigit() and specs and ":" in specs[-1]:
            specs[-1] += "," + item
        else:
            specs.append(item)
    if not specs:
        raise SystemExit("--models: at least one model spec")
    return specs


if __name__ == "__main__":
    sys.exit(main())
