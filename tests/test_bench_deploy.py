"""bench/deploy.py's CPU accounting per party: forks counted once, through their parent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_deploy", ROOT / "bench" / "deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_per_round_counts_each_process_once_and_forks_through_their_runner() -> None:
    bench = _bench()
    runner = bench.Proc("hospital ClientApps", b"cohort\0node\0start", "1", 0.0)
    link = bench.Proc("SuperLink", b"flower-superlink", "1", 0.0)

    def at(proc: Any, cpu: float) -> Any:
        return proc._replace(cpu_s=cpu)

    fork = runner._replace(parent="10")  # same command line, child of the runner (pid 10)
    node = bench.Proc("hospital SuperNodes", b"python\0-m\0cohort.federation.cli_deploy", "10", 0)
    samples = [
        (0.0, {"10": at(runner, 5.0), "20": at(link, 7.0)}),  # before the window
        (1.0, {"10": at(runner, 5.5), "20": at(link, 7.5)}),  # the window opens
        (2.0, {"10": at(runner, 5.6), "20": at(link, 8.5), "11": at(fork, 0.4)}),
        # the fork was reaped: its 0.7 s are in the runner's time now; a SuperNode started
        (3.0, {"10": at(runner, 6.4), "20": at(link, 9.5), "30": at(node, 0.2)}),
        (9.0, {"10": at(runner, 99.0), "20": at(link, 99.0)}),  # after the window
    ]
    got = bench.cpu_per_round(samples, 1.0, 3.0, 2)
    assert got == {
        "SuperLink": 1.0,  # (9.5 - 7.5) / 2
        "hospital ClientApps": 0.45,  # (6.4 - 5.5) / 2, the fork once
        "hospital SuperNodes": 0.1,  # from zero: it started inside the window
    }
    assert bench.cpu_per_round(samples, 20.0, 30.0, 2) == {}  # no sample inside


def test_parameter_count_is_the_models_weights_and_biases_on_the_demo_shape() -> None:
    bench = _bench()
    wide = (30 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 2 + 2)
    assert bench.parameter_count("mlp:1024,1024") == wide
    assert bench.parameter_count("logreg") == 30 * 2 + 2


def _run(rounds: list[float], accuracy: float, cpu: dict[str, float] | None = None) -> Any:
    run: dict[str, Any] = {
        "round_seconds": rounds,
        "median_round_s": sorted(rounds)[len(rounds) // 2],
        "phase_rounds": [{"train": x / 2, "decrypt": x / 4} for x in rounds],
        "accuracy": accuracy,
        "wall_s": 10.0,
    }
    if cpu is not None:
        run["cpu_s_per_round"] = cpu
    return run


def test_pooled_runs_share_their_rounds_and_average_their_cpu() -> None:
    bench = _bench()
    first = _run([5.0, 2.0, 2.2], 0.9, {"SuperLink": 1.0, "SuperNodes": 0.5})
    second = _run([4.0, 3.0, 3.4], 0.9, {"SuperLink": 2.0})
    got = bench.pooled([first, second])
    assert got["runs"] == 2
    assert got["round_seconds"] == [5.0, 2.0, 2.2, 4.0, 3.0, 3.4]
    assert got["median_round_s"] == 3.2  # of the six rounds, not of the two medians
    assert got["median_phase_s"]["train"] == 1.6
    assert got["cpu_s_per_round"] == {"SuperLink": 1.5, "SuperNodes": 0.25}
    assert got["accuracies"] == [0.9, 0.9]
    assert got["wall_s"] == 20.0


def test_pair_ratios_compare_each_deployment_with_the_simulation_run_next_to_it() -> None:
    bench = _bench()
    deployed = [_run([2.0, 2.0, 2.0], 0.9), _run([4.0, 4.0, 4.0], 0.9)]
    simulated = [_run([1.0, 1.0, 1.0], 0.9), _run([2.5, 2.5, 2.5], 0.9)]
    # pooled, the medians would give 3.0 / 1.75 = 1.71x; pair by pair it is 2.0x and 1.6x
    assert bench.pair_ratios(deployed, simulated) == [2.0, 1.6]


def _summary_with_exchanges() -> dict[str, Any]:
    def train(sent: float, replies: list[tuple[str, float]], collected: float) -> Any:
        return {
            "type": "train",
            "sent_at": sent,
            "collected_at": collected,
            "replies": [{"node": "1", "message": m, "replied_at": t} for m, t in replies],
        }

    return {
        "rounds": [
            {"exchanges": [train(0.0, [("warm-up", 5.0)], 6.0)]},  # round 1: left out
            {
                "exchanges": [
                    train(10.0, [("a", 10.8), ("b", 10.9)], 11.2),
                    {
                        "type": "query.keygen",
                        "sent_at": 11.3,
                        "collected_at": 11.4,
                        "replies": [{"node": "1", "message": "k", "replied_at": 11.35}],
                    },
                ]
            },
        ]
    }


def _event(msg: str, ts: float, **extra: Any) -> str:
    return json.dumps({"ts": ts, "msg": msg, **extra})


def test_exchange_hops_follow_one_message_through_each_hospitals_log(tmp_path: Path) -> None:
    bench = _bench()
    log_a = tmp_path / "hospital-1.log"
    log_a.write_text(
        "\n".join(
            [
                "Flower's own text line",
                _event("message pulled", 10.15, started=10.05, seconds=0.1),
                _event(
                    "message handled", 10.8, type="train", message="a", started=10.3, seconds=0.5
                ),
                "{not json",
                _event("reply pushed", 10.95),
                _event("message pulled", 12.0, started=11.9, seconds=0.1),  # a later message
            ]
        )
    )
    log_b = tmp_path / "hospital-2.log"
    log_b.write_text(
        "\n".join(
            [
                _event("reply pushed", 9.0),  # the previous round's
                _event("message pulled", 10.2, started=10.1, seconds=0.1),
                _event(
                    "message handled", 10.9, type="train", message="b", started=10.4, seconds=0.5
                ),
                _event("reply pushed", 11.1),
            ]
        )
    )
    events = [bench.hospital_events(log_a), bench.hospital_events(log_b)]
    assert len(events[0]) == 4
    hops = bench.exchange_hops(_summary_with_exchanges(), events)
    assert set(hops) == {"train"}  # keygen is not a round's exchange; round 1 warms up
    got = {hop: [round(v, 3) for v in values] for hop, values in hops["train"].items()}
    assert got == {
        "exchange": [1.2],
        "answered": [0.8, 0.9],
        "poll": [0.05, 0.1],
        "pull": [0.1, 0.1],
        "task": [0.15, 0.2],
        "handler": [0.5, 0.5],
        "reply": [0.15, 0.2],
        "collect": [0.1],  # after the last reply reached the SuperLink (11.1)
    }
    # the simulation: the coordinator's summary alone
    assert set(bench.exchange_hops(_summary_with_exchanges())["train"]) == {"exchange", "answered"}
    assert bench.hospital_events(tmp_path / "missing.log") == []


def test_the_hop_table_shows_the_deployment_and_the_simulation_side_by_side() -> None:
    bench = _bench()
    result = {
        "deployment": {"hop_samples": {"train": {"handler": [0.4, 0.2, 0.3]}}},
        "simulation": {"hop_samples": {"train": {"answered": [0.1]}}},
    }
    table = "\n".join(bench.hop_table(result))
    assert "| step | train, deployment | train, simulation | decrypt, deployment |" in table
    assert "| **the handler** (the owner's own work) | 0.30 (0.40) | - | - | - |" in table
    assert bench.merge_hops([result["deployment"], result["deployment"]]) == {
        "train": {"handler": [0.4, 0.2, 0.3, 0.4, 0.2, 0.3]}
    }
    assert bench.hop_table({"deployment": {}, "simulation": {}}) == []
