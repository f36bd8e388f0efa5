"""DP-SGD time per epoch against non-private training on the demo model.

Setting: the 5 hospitals of the breast-cancer demo split (``demo_split(num_hospitals=5,
seed=0)``), study defaults (``DpConfig()``: batch 32, C 1), the demo model ``mlp``, one
local epoch per hospital per repetition, set-up included (copy of the model, wrapping,
optimizer, sampler). Every side trains the same initial model on Poisson batches drawn by
the same :class:`PoissonSampler` (ChaCha20 sampling stream) under the same round key:

* ``plain``: non-private SGD on those batches (no per-example gradients, no clipping, no
  noise): the reference;
* ``opacus``: what ``train_dp`` ran before this figure, and still runs for models that are
  not MLPs (``prepare_private(fused=False)`` + ``run_epochs``): Opacus's
  ``GradSampleModule`` hooks materialise per-example gradients, ``SecureNoiseDPOptimizer``
  clips each to C and adds ChaCha20 noise sigma * C;
* ``ghost``: Opacus's fast gradient clipping (``GradSampleModuleFastGradientClipping`` with
  ghost norms, ``DPLossFastGradientClipping``'s two backward passes) and the same ChaCha20
  noise (:class:`GhostSecureNoiseOptimizer`);
* ``fused``: what ``train_dp`` runs now for MLPs (``prepare_private`` + ``run_epochs``):
  :class:`cohort.clients.dp_sgd.FusedLinearClipping`, one backward pass that computes the
  layers' output gradients only (no parameter gradients), per-example norms from the
  identity ``|g a^T| = |g| |a|``, the clipped sum as one matmul per layer into one flat
  gradient buffer, and the same ChaCha20 noise (each step's draw, computed for the round's
  steps in one pass: :class:`cohort.clients.dp_sgd.StepNoise`) added and scaled in one
  operation each, with Opacus's accountant hook.

Privacy is the same on the three DP sides (per-example clipping to C with Opacus's factor
``min(1, C / (norm + 1e-6))``, Gaussian noise sigma * C from the ChaCha20 noise stream,
Poisson batches, loss averaged over the expected batch size). The script checks it: under
one round key, ``ghost`` and ``fused`` must end on the same parameters as ``opacus`` up to
float rounding (``max_param_diff``). Repetitions rotate the order of the sides; medians.
No assertion on time: a figure.

    .venv/bin/python bench/dp_speed.py             # writes bench/results/dp_speed.{json,md}
    .venv/bin/python bench/dp_speed.py --repeat 5 --no-write
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch import nn

from cohort.clients.data import Dataset, demo_split
from cohort.clients.dp_sgd import (
    FusedLinearClipping,
    PoissonBatches,
    prepare_private,
    run_epochs,
)
from cohort.clients.model import build_model, get_flat
from cohort.clients.noise import NOISE, SAMPLING, ChaChaStream, PoissonSampler, random_key
from cohort.clients.training import DpConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import rotating_times, summary

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 2.0
CPU = torch.device("cpu")
Epoch = Callable[[nn.Module, Dataset, DpConfig, bytes], nn.Module]


def _batches(data: Dataset, config: DpConfig, round_key: bytes) -> PoissonBatches:
    event = config.event(len(data), round=1)
    sampler = PoissonSampler(
        num_examples=len(data),
        sample_rate=event.sample_rate,
        steps=config.steps_per_epoch(len(data)),
        stream=ChaChaStream.derive(round_key, SAMPLING),
    )
    return PoissonBatches(torch.from_numpy(data.features), torch.from_numpy(data.labels), sampler)


def plain_epoch(model: nn.Module, data: Dataset, config: DpConfig, round_key: bytes) -> nn.Module:
    """Non-private SGD on the same Poisson batches (mean loss over each batch)."""
    work = copy.deepcopy(model)
    optimizer = torch.optim.SGD(work.parameters(), lr=config.lr, momentum=config.momentum)
    criterion = nn.CrossEntropyLoss()
    for x, y in _batches(data, config, round_key):
        if y.numel() == 0:
            continue
        optimizer.zero_grad(set_to_none=True)
        criterion(work(x), y).backward()
        optimizer.step()
    return work


def opacus_epoch(model: nn.Module, data: Dataset, config: DpConfig, round_key: bytes) -> nn.Module:
    """What train_dp ran before (and runs for non-MLP models): Opacus's GradSampleModule."""
    work = copy.deepcopy(model)
    event = config.event(len(data), round=1)
    run = prepare_private(work, data, config=config, event=event, round_key=round_key, fused=False)
    try:
        run_epochs(run.module, run.optimizer, run.batches, epochs=1, device=CPU)
    finally:
        run.close()
    return work


class GhostSecureNoiseOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's fast-gradient-clipping optimizer with SecureNoiseDPOptimizer's noise."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, stream: ChaChaStream, **kw: Any):
        super().__init__(optimizer, loss_reduction="mean", **kw)
        self._stream = stream

    def add_noise(self) -> None:
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        sizes = [int(p.summed_grad.numel()) for p in params]
        std = float(self.noise_multiplier) * float(self.max_grad_norm)
        flat = torch.from_numpy(self._stream.gaussian(sum(sizes), std=std))
        for p, chunk in zip(params, torch.split(flat, sizes), strict=True):
            summed = p.summed_grad
            p.grad = (summed + chunk.view(summed.shape).to(summed.dtype)).view_as(p)
            _mark_as_processed(summed)


def ghost_epoch(model: nn.Module, data: Dataset, config: DpConfig, round_key: bytes) -> nn.Module:
    """Opacus ghost clipping (two backward passes) with ChaCha20 noise."""
    work = copy.deepcopy(model)
    event = config.event(len(data), round=1)
    module = GradSampleModuleFastGradientClipping(
        work,
        batch_first=True,
        loss_reduction="mean",
        max_grad_norm=float(config.max_grad_norm),
        use_ghost_clipping=True,
    )
    optimizer = GhostSecureNoiseOptimizer(
        torch.optim.SGD(work.parameters(), lr=config.lr, momentum=config.momentum),
        stream=ChaChaStream.derive(round_key, NOISE),
        noise_multiplier=event.noise_multiplier,
        max_grad_norm=float(config.max_grad_norm),
        expected_batch_size=max(1, int(len(data) * event.sample_rate)),
    )
    criterion = DPLossFastGradientClipping(
        module, optimizer, nn.CrossEntropyLoss(reduction="mean"), loss_reduction="mean"
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for x, y in _batches(data, config, round_key):
                optimizer.zero_grad(set_to_none=True)
                logits = module(x)
                if y.numel() == 0:
                    # Noise-only step, as run_epochs takes it (zero gradients, then noise).
                    for p in work.parameters():
                        p.grad = torch.zeros_like(p)
                else:
                    criterion(logits, y).backward()
                optimizer.step()
    finally:
        module.cleanup()
    return work


def fused_epoch(model: nn.Module, data: Dataset, config: DpConfig, round_key: bytes) -> nn.Module:
    """What train_dp runs now: prepare_private (FusedLinearClipping for MLPs) + run_epochs."""
    work = copy.deepcopy(model)
    event = config.event(len(data), round=1)
    run = prepare_private(work, data, config=config, event=event, round_key=round_key)
    if not isinstance(run.module, FusedLinearClipping):
        raise TypeError(f"{type(model).__name__}: not an MLP that FusedLinearClipping takes")
    try:
        run_epochs(run.module, run.optimizer, run.batches, epochs=1, device=CPU)
    finally:
        run.close()
    return work


SIDES: dict[str, Epoch] = {
    "plain": plain_epoch,
    "opacus": opacus_epoch,
    "ghost": ghost_epoch,
    "fused": fused_epoch,
}


def equivalence(model: nn.Module, hospitals: list[Dataset], config: DpConfig) -> dict[str, float]:
    """Max |param - opacus param| after one epoch per hospital under the same round keys."""
    worst = dict.fromkeys(("ghost", "fused", "plain"), 0.0)
    for h, data in enumerate(hospitals):
        key = bytes([h]) * 32
        ref = get_flat(opacus_epoch(model, data, config, key)).astype(np.float64)
        for name in worst:
            got = get_flat(SIDES[name](model, data, config, key)).astype(np.float64)
            worst[name] = max(worst[name], float(np.abs(got - ref).max()))
    return worst


def bench(spec: str, repeat: int) -> dict[str, Any]:
    config = DpConfig()
    hospitals, test = demo_split(num_hospitals=5, seed=0)
    torch.manual_seed(0)
    model = build_model(spec, in_features=test.num_features, num_classes=2)
    for fn in SIDES.values():  # warm-up: imports, calibration cache, allocator
        for data in hospitals:
            fn(model, data, config, random_key())

    def prepare(name: str) -> Callable[[], object]:
        keys = [random_key() for _ in hospitals]
        return lambda: [
            SIDES[name](model, data, config, key) for data, key in zip(hospitals, keys, strict=True)
        ]

    times = rotating_times(list(SIDES), prepare, repeat=repeat)
    plain = statistics.median(times["plain"])
    return {
        "model": spec,
        "parameters": sum(p.numel() for p in model.parameters()),
        "sides": {
            name: {
                **{f"{k}_s": s for k, s in summary(v).items()},
                "ratio_to_plain": statistics.median(v) / plain,
            }
            for name, v in times.items()
        },
        "max_param_diff_vs_opacus": equivalence(model, hospitals, config),
        "raw_s": times,
    }


LABELS = {
    "plain": "non-private SGD, same Poisson batches",
    "opacus": "DP-SGD before: Opacus per-example gradients (`fused=False`)",
    "ghost": "Opacus fast gradient clipping (ghost norms, 2 backward passes)",
    "fused": "DP-SGD now (`train_dp`): `FusedLinearClipping`",
}


def markdown(report: dict[str, Any]) -> str:
    row = report["models"][0]
    lines = [
        "# DP-SGD time per epoch against non-private training (demo model)",
        "",
        f"Breast-cancer demo split (seed 0, 5 hospitals, {report['examples']} examples, "
        f"{report['steps']} steps per epoch in all), `DpConfig()` defaults, model "
        f"`{row['model']}` ({row['parameters']} parameters), set-up plus one epoch per "
        f"hospital; {report['repeat']} rotating repetitions, {report['threads']} torch "
        "thread. Seconds per epoch (all five hospitals), median (min-max).",
        "",
        "| training | seconds per epoch | ratio to non-private | max param diff vs Opacus |",
        "|---|---:|---:|---:|",
    ]
    diffs = row["max_param_diff_vs_opacus"]
    for name, side in row["sides"].items():
        diff = "-" if name == "opacus" else f"{diffs[name]:.1e}"
        if name == "plain":
            diff += " (no DP)"
        lines.append(
            f"| {LABELS[name]} | {side['median_s']:.4f} ({side['min_s']:.4f}-"
            f"{side['max_s']:.4f}) | {side['ratio_to_plain']:.2f}x | {diff} |"
        )
    before = row["sides"]["opacus"]["ratio_to_plain"]
    fused = row["sides"]["fused"]["ratio_to_plain"]
    lines += [
        "",
        f"Goal: DP-SGD at most {GOAL:g}x non-private. `train_dp` now: **{fused:.2f}x** "
        f"({'met' if fused <= GOAL else 'not met'}); Opacus per-example gradients, as before: "
        f"{before:.2f}x. The three DP rows are the same "
        "mechanism (per-example clipping to C, ChaCha20 noise sigma * C, Poisson batches): "
        "under one round key they end on the same parameters up to float rounding (last "
        "column).",
        "",
        f"Machine: {report['machine']}. Regenerate with `.venv/bin/python bench/dp_speed.py`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    logging.getLogger("cohort").setLevel(logging.ERROR)
    config = DpConfig()
    hospitals, _ = demo_split(num_hospitals=5, seed=0)
    load = os.getloadavg()[0]
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "examples": sum(len(h) for h in hospitals),
        "steps": sum(config.steps_per_epoch(len(h)) for h in hospitals),
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "goal": GOAL,
        "models": [bench(args.model, args.repeat)],
    }
    report["machine"] = (
        f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {load:.1f} at start (shared machine)"
    )
    print(markdown(report))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "dp_speed.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "dp_speed.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
