"""Flower's own SecAgg+ on fixed update vectors: the baseline for Cohort's MPC mode.

What runs: ``flwr.simulation.run_simulation`` (Ray, in-process) with ``--clients`` virtual
SuperNodes, each a legacy :class:`~flwr.client.NumPyClient` whose ``fit`` returns one FIXED
float32 vector of ``size`` parameters ~ N(0, 0.01) (seeded by ``[seed, size, partition]``)
with ``num_examples=1``, so the aggregate is the plain mean. One ServerApp (legacy API:
:class:`~flwr.server.LegacyContext`, legacy ``FedAvg``) alternates rounds of Flower's plain
``default_fit_workflow`` and of :class:`~flwr.server.workflow.SecAggPlusWorkflow`; the
ClientApp runs ``secaggplus_mod`` on SecAgg+ messages (inside a timing mod, which passes
plain fit messages straight to the client). The first plain and the first SecAgg+ round
warm up the Ray actors and are left out of the figures.

SecAgg+ parameters: ``SecAggPlusWorkflow`` has no default for ``num_shares`` and
``reconstruction_threshold``; this uses 3 and 2, the values of Flower's own
``examples/flower-secure-aggregation``, and the workflow's defaults for everything else
(``max_weight``, ``clipping_range``, ``quantization_range``, ``modulus_range``), read from
the constructed workflow and written to the results.

What is counted:

- round time: wall clock around one fit workflow call on the ServerApp (SecAgg+: all four
  stages, i.e. four ``send_and_receive`` exchanges; plain: one);
- server time: the round time minus the time spent inside ``grid.send_and_receive``, i.e.
  the ServerApp's own work (building messages, summing masked vectors, combining Shamir
  shares, regenerating masks, dequantising, ``aggregate_fit``);
- client time: per client and round, the time inside the ClientApp's mods summed over the
  messages of the round, minus the time of the wrapped ClientApp call (legacy conversion
  of the global parameters and the ``fit`` that returns the vector), i.e. SecAgg+'s own
  client work; 0 for plain rounds by construction. ``client_fit_s`` is that wrapped call;
- bytes uploaded per client: the protobuf size (``recorddict_to_proto(...).ByteSize()``)
  of every reply RecordDict the client sends in the round, summed over the stages (the
  timing record this bench adds is removed before counting);
- error: max |aggregate - float64 mean of the same float32 vectors|.

    .venv/bin/python bench/secagg.py                        # 100k and 1M parameters
    .venv/bin/python bench/secagg.py --sizes 100000 --repeat 3 --no-write
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
)
from flwr.common.serde import recorddict_to_proto
from flwr.compat.client.client import Client
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import (
    default_fit_workflow,
    default_init_params_workflow,
)
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from flwr.supercore.run import Run
from machine import describe as describe_machine

RESULTS = Path(__file__).resolve().parent / "results"
UPDATE_STD = 0.01
NUM_SHARES = 3  # Flower's examples/flower-secure-aggregation; the workflow has no default
RECONSTRUCTION_THRESHOLD = 2  # same source
BENCH_RECORD = "cohort.bench.timing"  # the timing record the client mod adds, removed on arrival
PLAIN = "plain"
SECAGG = "secagg"
CPUS = 2  # Ray CPUs; one per client actor, so two actors run at a time

# --------------------------------------------------------------------------- inputs


def client_vector(size: int, seed: int, partition: int) -> np.ndarray:
    """The fixed float32 update of client ``partition``."""
    rng = np.random.default_rng([seed, size, partition])
    return rng.normal(0.0, UPDATE_STD, size).astype(np.float32)


def reference_mean(size: int, clients: int, seed: int) -> np.ndarray:
    """float64 mean of the clients' float32 vectors."""
    acc = np.zeros(size, dtype=np.float64)
    for partition in range(clients):
        acc += client_vector(size, seed, partition)
    return acc / clients


def make_workflow(max_weight: float | None = None) -> SecAggPlusWorkflow:
    """SecAgg+ with NUM_SHARES / RECONSTRUCTION_THRESHOLD and the workflow's defaults
    (``max_weight`` overrides its default of 1000 when given)."""
    if max_weight is None:
        return SecAggPlusWorkflow(NUM_SHARES, RECONSTRUCTION_THRESHOLD)
    return SecAggPlusWorkflow(NUM_SHARES, RECONSTRUCTION_THRESHOLD, max_weight=max_weight)


def secagg_parameters(max_weight: float | None = None) -> dict[str, float]:
    """The SecAgg+ parameters this bench runs with (workflow defaults read back)."""
    workflow = make_workflow(max_weight)
    return {
        "num_shares": float(workflow.num_shares),
        "reconstruction_threshold": float(workflow.reconstruction_threshold),
        "max_weight": float(workflow.max_weight),
        "clipping_range": float(workflow.clipping_range),
        "quantization_range": float(workflow.quantization_range),
        "modulus_range": float(workflow.modulus_range),
    }


# --------------------------------------------------------------------------- client side


class FixedClient(NumPyClient):
    """Legacy client whose fit returns its fixed vector with ``num_examples=1``."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        return [self.vector]

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        return [self.vector], 1, {}


def make_client_app(size: int, seed: int) -> ClientApp:
    """ClientApp: fixed-vector client behind a timing mod that runs ``secaggplus_mod``
    on SecAgg+ messages and passes plain fit messages to the client."""

    vectors: dict[int, np.ndarray] = {}  # per copy of the app (Ray pickles it by value)

    def client_fn(context: Context) -> Client:
        partition = int(cast(int, context.node_config["partition-id"]))
        if partition not in vectors:
            vectors[partition] = client_vector(size, seed, partition)
        return FixedClient(vectors[partition]).to_client()

    def timing_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        secure = configs is not None and Key.STAGE in configs
        fit_s = 0.0

        def timed_next(inner: Message, inner_ctxt: Context) -> Message:
            nonlocal fit_s
            start = time.perf_counter()
            out = call_next(inner, inner_ctxt)
            fit_s += time.perf_counter() - start
            return out

        start = time.perf_counter()
        reply = secaggplus_mod(msg, ctxt, timed_next) if secure else timed_next(msg, ctxt)
        total_s = time.perf_counter() - start
        if reply.has_content():
            reply.content.metric_records[BENCH_RECORD] = MetricRecord(
                {"total_s": total_s, "fit_s": fit_s}
            )
        return reply

    return ClientApp(client_fn=client_fn, mods=[timing_mod])


# --------------------------------------------------------------------------- server side


@dataclass
class Exchange:
    """One ``send_and_receive``: its wall time and, per replying node, what came back."""

    wait_s: float
    bytes_by_node: dict[int, int]
    vector_bytes_by_node: dict[int, int]
    client_s_by_node: dict[int, float]  # mods' time minus the client's fit
    fit_s_by_node: dict[int, float]
    errors: int


def vector_bytes(content: RecordDict) -> int:
    """Bytes of the update itself: the masked vector (SecAgg+) or the ArrayRecords."""
    total = sum(len(a.data) for record in content.array_records.values() for a in record.values())
    configs = content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and Key.MASKED_PARAMETERS in configs:
        total += sum(len(b) for b in cast(list[bytes], configs[Key.MASKED_PARAMETERS]))
    return total


class RecordingGrid(Grid):
    """Delegates to the simulation's grid; times ``send_and_receive`` and sizes replies."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.exchanges: list[Exchange] = []

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        start = time.perf_counter()
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        wait_s = time.perf_counter() - start
        exchange = Exchange(wait_s, {}, {}, {}, {}, 0)
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                exchange.errors += 1
                continue
            node = reply.metadata.src_node_id
            timing = reply.content.metric_records.pop(BENCH_RECORD, None)
            if timing is not None:
                fit_s = float(cast(float, timing["fit_s"]))
                total_s = float(cast(float, timing["total_s"]))
                exchange.fit_s_by_node[node] = fit_s
                exchange.client_s_by_node[node] = total_s - fit_s
            exchange.bytes_by_node[node] = recorddict_to_proto(reply.content).ByteSize()
            exchange.vector_bytes_by_node[node] = vector_bytes(reply.content)
        self.exchanges.append(exchange)
        return replies


@dataclass
class RoundRecord:
    mode: str
    round_s: float
    exchanges: list[Exchange]
    aggregate: np.ndarray

    @property
    def server_s(self) -> float:
        return self.round_s - sum(e.wait_s for e in self.exchanges)

    def per_node(self, attr: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for exchange in self.exchanges:
            for node, value in cast(dict[int, float], getattr(exchange, attr)).items():
                out[node] = out.get(node, 0.0) + value
        return out


@dataclass
class Holder:
    rounds: list[RoundRecord] = field(default_factory=list)


def make_server_app(
    size: int,
    clients: int,
    schedule: Sequence[str],
    holder: Holder,
    max_weight: float | None = None,
) -> ServerApp:
    """ServerApp running ``schedule`` (a list of PLAIN / SECAGG rounds) on one LegacyContext."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_evaluate_clients=0,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(size, dtype=np.float32)]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=len(schedule)), strategy=strategy
        )
        thread, f_stop, c_done = start_update_client_manager_thread(grid, legacy.client_manager)
        c_done.wait()
        try:
            default_init_params_workflow(grid, legacy)
            cfg = ConfigRecord()
            cfg[WorkflowKey.START_TIME] = time.perf_counter()
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = cfg
            secagg = make_workflow(max_weight)
            for number, mode in enumerate(schedule, start=1):
                cfg[WorkflowKey.CURRENT_ROUND] = number
                recorder = RecordingGrid(grid)
                start = time.perf_counter()
                if mode == SECAGG:
                    secagg(recorder, legacy)
                else:
                    default_fit_workflow(recorder, legacy)
                round_s = time.perf_counter() - start
                params = compat.arrayrecord_to_parameters(
                    legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True
                )
                aggregate = np.asarray(parameters_to_ndarrays(params)[0], dtype=np.float64)
                holder.rounds.append(RoundRecord(mode, round_s, recorder.exchanges, aggregate))
        finally:
            f_stop.set()
            thread.join()

    return app


# --------------------------------------------------------------------------- measurement


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(
    rounds: Sequence[RoundRecord], reference: np.ndarray, clients: int
) -> dict[str, float]:
    """Medians over ``rounds`` (all one mode) of the per-round figures."""
    out: dict[str, float] = {}
    client_mean: list[float] = []
    fit_mean: list[float] = []
    client_max: list[float] = []
    up_mean: list[float] = []
    up_max: list[float] = []
    vec_mean: list[float] = []
    errors: list[float] = []
    replies: list[float] = []
    for record in rounds:
        client = record.per_node("client_s_by_node")
        fit_mean.append(statistics.fmean(record.per_node("fit_s_by_node").values() or [0.0]))
        upload = record.per_node("bytes_by_node")
        vector = record.per_node("vector_bytes_by_node")
        if len(upload) != clients or len(client) != clients:
            raise RuntimeError(
                f"{record.mode} round: replies from {len(upload)} of {clients} clients"
            )
        client_mean.append(statistics.fmean(client.values()))
        client_max.append(max(client.values()))
        up_mean.append(statistics.fmean(upload.values()))
        up_max.append(max(upload.values()))
        vec_mean.append(statistics.fmean(vector.values()))
        errors.append(float(np.max(np.abs(record.aggregate - reference))))
        replies.append(float(sum(len(e.bytes_by_node) for e in record.exchanges)))
    out["round_s"] = median([r.round_s for r in rounds])
    out["server_s"] = median([r.server_s for r in rounds])
    out["client_s_mean"] = median(client_mean)
    out["client_s_max"] = median(client_max)
    out["client_fit_s_mean"] = median(fit_mean)
    out["upload_bytes_per_client"] = median(up_mean)
    out["upload_bytes_per_client_max"] = median(up_max)
    out["vector_bytes_per_client"] = median(vec_mean)
    out["replies_per_round"] = median(replies)
    out["max_abs_error"] = max(errors)
    return out


def measure_secagg(
    size: int,
    clients: int = 10,
    seed: int = 0,
    *,
    repeat: int = 1,
    max_weight: float | None = None,
) -> dict[str, float]:
    """One simulation: a warm-up plain and SecAgg+ round, then ``repeat`` of each.

    Returns flat float figures (medians over the measured rounds), keys prefixed
    ``secagg_`` / ``plain_``, plus ``added_round_s`` (SecAgg+ round minus plain round),
    ``upload_ratio`` (SecAgg+ bytes / plain bytes per client), the warm-up round times,
    the simulation's wall time, and the SecAgg+ parameters as ``param_*``.
    ``max_weight`` None keeps the workflow's default (1000); with ``num_examples=1`` each
    update is scaled by 1 / max_weight before quantisation, which sets the error.
    """
    if size < 1 or clients < 2 or repeat < 1:
        raise ValueError("size >= 1 parameters, clients >= 2, repeat >= 1 rounds")
    schedule = [PLAIN, SECAGG] * (1 + repeat)
    holder = Holder()
    backend_config: dict[str, Any] = {
        "init_args": {"num_cpus": CPUS, "include_dashboard": False},
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    }
    start = time.perf_counter()
    run_simulation(
        server_app=make_server_app(size, clients, schedule, holder, max_weight),
        client_app=make_client_app(size, seed),
        num_supernodes=clients,
        backend_config=backend_config,
    )
    simulation_s = time.perf_counter() - start
    if len(holder.rounds) != len(schedule):
        raise RuntimeError(
            f"simulation finished {len(holder.rounds)} of {len(schedule)} rounds (see its log)"
        )
    reference = reference_mean(size, clients, seed)
    warm, measured = holder.rounds[:2], holder.rounds[2:]
    figures: dict[str, float] = {"size": float(size), "clients": float(clients)}
    for mode in (PLAIN, SECAGG):
        part = summarise([r for r in measured if r.mode == mode], reference, clients)
        figures.update({f"{mode}_{k}": v for k, v in part.items()})
    figures["added_round_s"] = figures["secagg_round_s"] - figures["plain_round_s"]
    figures["added_server_s"] = figures["secagg_server_s"] - figures["plain_server_s"]
    figures["added_client_s"] = figures["secagg_client_s_mean"] - figures["plain_client_s_mean"]
    figures["upload_ratio"] = (
        figures["secagg_upload_bytes_per_client"] / figures["plain_upload_bytes_per_client"]
    )
    figures["plaintext_float32_bytes"] = float(4 * size)
    figures["warmup_plain_round_s"] = warm[0].round_s
    figures["warmup_secagg_round_s"] = warm[1].round_s
    figures["simulation_s"] = simulation_s
    figures["repeat"] = float(repeat)
    figures.update({f"param_{k}": v for k, v in secagg_parameters(max_weight).items()})
    return figures


# --------------------------------------------------------------------------- report


def human_bytes(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def markdown(report: dict[str, Any]) -> str:
    params = report["secagg_parameters"]
    lines = [
        "# Flower SecAgg+ baseline (bench/secagg.py)",
        "",
        f"{report['clients']} clients, fixed float32 vectors ~ N(0, {UPDATE_STD}), "
        f"num_examples=1; Flower {report['machine'].get('flwr')}, Ray simulation, "
        f"{CPUS} CPUs (1 per client actor); medians of {report['repeat']} measured "
        "round(s) after one warm-up round per mode.",
        "",
        "SecAgg+ parameters: "
        + ", ".join(f"{k}={int(v) if float(v).is_integer() else v}" for k, v in params.items())
        + " (num_shares and reconstruction_threshold: Flower's example values; "
        "the workflow has no default for them).",
        "",
        "| params | plain round s | SecAgg+ round s | added s | SecAgg+ server s "
        "| SecAgg+ client s (mean/max) | upload/client plain | upload/client SecAgg+ "
        "| ratio | max abs err SecAgg+ | max abs err plain |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["sizes"]:
        lines.append(
            f"| {int(row['size']):,} | {row['plain_round_s']:.3f} | {row['secagg_round_s']:.3f} "
            f"| {row['added_round_s']:.3f} | {row['secagg_server_s']:.3f} "
            f"| {row['secagg_client_s_mean']:.3f} / {row['secagg_client_s_max']:.3f} "
            f"| {human_bytes(row['plain_upload_bytes_per_client'])} "
            f"| {human_bytes(row['secagg_upload_bytes_per_client'])} "
            f"| {row['upload_ratio']:.2f} | {row['secagg_max_abs_error']:.2e} "
            f"| {row['plain_max_abs_error']:.2e} |"
        )
    lines += [
        "",
        "Round s: wall clock around one fit workflow on the ServerApp. Server s: round minus "
        "time inside grid.send_and_receive. Client s: per client, time in the ClientApp's mods "
        "over the round's four SecAgg+ messages minus its fit. Upload: protobuf size of every "
        "reply RecordDict a client sends in the round. Error: against the float64 mean.",
        "",
        "Precision: with num_examples=1 the client multiplies its update by "
        "round(2^22 / max_weight) / 2^22 before quantising it to the grid "
        "2 * clipping_range / quantization_range (3.8e-6), and the server divides by the "
        "summed factor, so the mean's error is about max_weight times the grid step; "
        "`--max-weight 1` runs the same rounds with the weight range fitted to the weights.",
        "",
    ]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part]
    except ValueError as exc:
        raise argparse.ArgumentTypeError("sizes: comma-separated positive integers") from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes: comma-separated positive integers")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=parse_sizes, default=[100_000, 1_000_000])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="measured rounds per mode")
    parser.add_argument(
        "--max-weight",
        type=float,
        default=None,
        help="SecAgg+ max_weight (default: the workflow's own, 1000)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    rows = [
        measure_secagg(
            size, args.clients, args.seed, repeat=args.repeat, max_weight=args.max_weight
        )
        for size in args.sizes
    ]
    report: dict[str, Any] = {
        "clients": args.clients,
        "seed": args.seed,
        "repeat": args.repeat,
        "update_std": UPDATE_STD,
        "secagg_parameters": secagg_parameters(args.max_weight),
        "bytes_note": "protobuf ByteSize of each reply RecordDict (recorddict_to_proto), "
        "summed over the round's replies per client; vector_bytes: the masked vector's "
        "npy bytes (SecAgg+, int64) or the ArrayRecord's bytes (plain, float32)",
        "sizes": rows,
        "machine": describe_machine(["flwr", "ray", "numpy"]),
    }
    text = markdown(report)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "secagg.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "secagg.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
