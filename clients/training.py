"""DP-SGD training of one round by one data owner, with budget guard and ledger.

Run by a data owner (hospital) on its own machine, once per round it takes part in:

1. build the round's :class:`DpEvent` (noise multiplier calibrated once per study, sample
   rate and steps from the local dataset size and the study's batch size);
2. :meth:`PrivacyLedger.guard` - refuse a (study, round) the ledger already holds
   (:class:`RoundReplayed`) and decline with :class:`BudgetExhausted` if the round would
   take the owner past its cap, before touching the model;
3. train a private copy of the model with per-example clipping to C (MLPs: without
   per-example gradient tensors, :class:`cohort.clients.dp_sgd.FusedLinearClipping`; other
   models: Opacus's per-sample gradients), Poisson sampling and Gaussian noise sigma * C
   per step both drawn from ChaCha20 streams (:mod:`cohort.clients.noise`);
4. :meth:`PrivacyLedger.record` the event durably;
5. only then copy the trained parameters into the caller's model (the release).

A failure before step 4 leaves the caller's model untouched and nothing recorded: nothing
trained on the records has left this function, so no privacy was spent.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cohort.clients.data import Dataset
from cohort.clients.noise import (
    random_key,
    seeded_key,
)
from cohort.clients.privacy import (
    NOISE_GENERATOR,
    DpEvent,
    PrivacyLedger,
    calibrate_noise_multiplier,
)
from cohort.errors import BadInputError, ConfigError, ProtocolAbort
from cohort.logs import fields, get_logger

log = get_logger(__name__)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class DpConfig:
    """DP-SGD settings of a study, identical for every data owner; checked when built.

    Defaults were tuned on the breast-cancer demo (5 hospitals, Dirichlet alpha 1,
    epsilon 3 over 5 rounds of 1 local epoch, model "mlp"): over 10 splits x 8 noise draws
    of the ChaCha20 generator the held-out accuracy averaged 0.966 (minimum 0.912, on the
    hardest split); see bench/results/dp_accuracy.md and docs/privacy.md.
    """

    #: Per-owner (epsilon, delta) budget for the whole study; calibrates the noise.
    target_epsilon: float = 3.0
    #: Rounds the study plans; with ``local_epochs`` fixes the number of DP-SGD steps.
    total_rounds: int = 5
    #: Passes over the local data per round (in expectation, under Poisson sampling).
    local_epochs: int = 1
    #: Expected examples per Poisson batch; sample rate = 1 / ceil(n / batch_size).
    batch_size: int = 32
    #: Per-example L2 clipping bound C.
    max_grad_norm: float = 1.0
    #: delta of the (epsilon, delta) guarantee; well below 1 / (examples per owner).
    delta: float = 1e-5
    #: Local SGD learning rate.
    lr: float = 1.0
    #: Local SGD momentum (fresh optimizer each round, so nothing carries over).
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if not _number(self.target_epsilon) or not self.target_epsilon > 0:
            raise ConfigError(
                f"target_epsilon must be > 0 (per-owner epsilon budget for the study), "
                f"got {self.target_epsilon!r}"
            )
        if not _integer(self.total_rounds) or self.total_rounds < 1:
            raise ConfigError(
                f"total_rounds must be an integer >= 1 (rounds), got {self.total_rounds!r}"
            )
        if not _integer(self.local_epochs) or self.local_epochs < 1:
            raise ConfigError(
                f"local_epochs must be an integer >= 1 (passes over local data per round), "
                f"got {self.local_epochs!r}"
            )
        if not _integer(self.batch_size) or self.batch_size < 1:
            raise ConfigError(
                f"batch_size must be an integer >= 1 (expected examples per Poisson batch), "
                f"got {self.batch_size!r}"
            )
        if not _number(self.max_grad_norm) or not self.max_grad_norm > 0:
            raise ConfigError(
                f"max_grad_norm must be > 0 (L2 clipping bound C), got {self.max_grad_norm!r}"
            )
        if not _number(self.delta) or not 0 < self.delta < 1:
            raise ConfigError(
                f"delta must be in (0, 1) (probability the epsilon bound fails), got {self.delta!r}"
            )
        if not _number(self.lr) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (local SGD step size), got {self.lr!r}")
        if not _number(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(
                f"momentum must be in [0, 1) (SGD momentum factor), got {self.momentum!r}"
            )

    def steps_per_epoch(self, examples: int) -> int:
        """DP-SGD steps per local epoch: ceil(examples / batch_size), as Opacus counts."""
        return math.ceil(examples / self.batch_size)

    def sample_rate(self, examples: int) -> float:
        """Poisson inclusion probability for a dataset of ``examples`` (Opacus's rule)."""
        return 1.0 / self.steps_per_epoch(examples)

    def noise_multiplier(self, examples: int) -> float:
        """sigma / C calibrated once per study: ``target_epsilon`` at ``delta`` over
        ``total_rounds * local_epochs`` epochs at this owner's sample rate (PRV)."""
        per_epoch = self.steps_per_epoch(examples)
        return calibrate_noise_multiplier(
            target_epsilon=float(self.target_epsilon),
            delta=float(self.delta),
            sample_rate=1.0 / per_epoch,
            steps=self.total_rounds * self.local_epochs * per_epoch,
        )

    def event(self, examples: int, *, round: int) -> DpEvent:
        """The :class:`DpEvent` one round of training on ``examples`` records."""
        return DpEvent(
            round=round,
            noise_multiplier=self.noise_multiplier(examples),
            sample_rate=self.sample_rate(examples),
            steps=self.local_epochs * self.steps_per_epoch(examples),
            max_grad_norm=float(self.max_grad_norm),
            delta=float(self.delta),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DpConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"DP config: unknown field(s) {', '.join(unknown)}")
        return cls(**dict(data))


@dataclass(frozen=True)
class TrainResult:
    """What one round of local DP training produced (the model itself is updated in place).

    ``examples`` (local dataset size) is the FedAvg weight; it is not protected by DP.
    ``epsilon`` is the owner's total spend after this round. ``loss`` is the mean training
    loss over this round's non-empty batches: a local diagnostic computed from the records
    without noise, so publishing it is not covered by the DP guarantee.
    """

    examples: int
    epsilon: float
    event: DpEvent
    loss: float
    empty_batches: int


SEEDED_DOMAIN = "cohort/seeded-dp-sgd"


def derive_noise_key(noise_seed: int, *, owner: str, round: int) -> bytes:
    """256-bit round key for seeded noise and sampling: :func:`cohort.clients.noise.seeded_key`.

    Reproducible runs only: anyone who knows the local seed can regenerate the noise and
    strip it from an update, so a seeded round gives no privacy to real patients (its ledger
    entry says so). The key depends on the seed, the owner and the round only, not on the
    study: the same seed replays the same noise in every study, which is what makes a CKKS
    study and its plaintext twin comparable bit for bit, and one more reason a seeded run is
    unfit for real data.
    """
    return seeded_key(noise_seed, owner=owner, domain=SEEDED_DOMAIN, round=round)


def _check_inputs(model: nn.Module, dataset: Dataset, round: int, noise_seed: int | None) -> None:
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model must be a torch Module, got {type(model).__name__}")
    if not isinstance(dataset, Dataset):
        raise BadInputError(f"dataset must be a Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.source}: no examples to train on")
    if not _integer(round) or round < 0:
        raise BadInputError(f"round must be an integer >= 0, got {round!r}")
    if noise_seed is not None and (not _integer(noise_seed) or not 0 <= noise_seed < 2**256):
        raise BadInputError(
            f"noise_seed must be an integer in [0, 2^256) or None, got {noise_seed!r}"
        )
    param = next(model.parameters(), None)
    if param is None:
        raise BadInputError("model has no parameters to train")
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            out = model(torch.from_numpy(dataset.features[:1]).to(param.device))
        finally:
            model.train(was_training)
    if out.ndim != 2 or out.shape[1] <= int(dataset.labels.max()):
        raise BadInputError(
            f"{dataset.source}: labels go beyond the model's output classes "
            f"(model output shape {tuple(out.shape)})"
        )


def train_dp(
    model: nn.Module,
    dataset: Dataset,
    *,
    config: DpConfig,
    ledger: PrivacyLedger,
    round: int,
    noise_seed: int | None,
    study_id: str,
) -> TrainResult:
    """One round of DP-SGD on ``dataset`` for study ``study_id``; ``model`` is trained in
    place. Data owner only.

    Guards the ledger before training (:class:`RoundReplayed` if it already holds this
    study's round; :class:`BudgetExhausted` past the ledger's cap over all studies, or
    past ``config.target_epsilon`` for this study alone; model untouched) and
    records the event after it, before the caller's model changes. Noise and Poisson
    sampling come from two ChaCha20 streams under one 256-bit round key: ``os.urandom(32)``
    by default, or, when ``noise_seed`` (the owner's LOCAL seed) is given,
    :func:`derive_noise_key` so the round is reproducible (the ledger entry is marked
    seeded: not for real patient data). Empty Poisson batches still take a step (noise
    only), as the accountant assumes. The caller's module keeps its class and state_dict
    keys: Opacus wraps and hooks a private copy only.
    """
    _check_inputs(model, dataset, round, noise_seed)
    if not isinstance(config, DpConfig):
        raise BadInputError(f"config must be a DpConfig, got {type(config).__name__}")
    if not isinstance(study_id, str) or not study_id:
        raise BadInputError(f"study_id must be a non-empty string, got {study_id!r}")
    examples = len(dataset)
    event = config.event(examples, round=round)
    ledger.guard(event, study_id=study_id, study_cap=float(config.target_epsilon))

    device = next(model.parameters()).device
    seeded = noise_seed is not None
    if noise_seed is None:
        round_key = random_key()
    else:
        log.warning(
            "seeded DP noise: reproducible, not private",
            extra=fields(owner=ledger.owner, round=round),
        )
        round_key = derive_noise_key(noise_seed, owner=ledger.owner, round=round)

    work = copy.deepcopy(model)
    work.train()
    from cohort.clients.dp_sgd import prepare_private, run_epochs

    run = prepare_private(work, dataset, config=config, event=event, round_key=round_key)
    try:
        if len(run.batches) != config.steps_per_epoch(examples):
            raise ProtocolAbort(
                f"sampler plans {len(run.batches)} steps per epoch, the ledger event "
                f"{config.steps_per_epoch(examples)}"
            )
        loss_sum, loss_examples, empty_batches = run_epochs(
            run.module, run.optimizer, run.batches, epochs=config.local_epochs, device=device
        )
        # Cross-check: Opacus's own accountant saw exactly the mechanism the ledger records.
        counted = [(float(s), float(q), int(n)) for s, q, n in run.accountant.history]
        planned = [(event.noise_multiplier, event.sample_rate, event.steps)]
        if counted != planned:
            raise ProtocolAbort(
                f"Opacus accounted {counted} (sigma, sample rate, steps) but the ledger "
                f"event says {planned}"
            )
    finally:
        run.close()

    epsilon = ledger.projected_epsilon(event)
    # Noise and batches both came from ChaCha20 streams (SecureNoiseDPOptimizer, PoissonSampler).
    ledger.record(
        event, study_id=study_id, epsilon=epsilon, seeded=seeded, noise_generator=NOISE_GENERATOR
    )
    with torch.no_grad():
        model.load_state_dict(work.state_dict())
    loss_mean = loss_sum / loss_examples if loss_examples else float("nan")
    log.info(
        "round trained",
        extra=fields(
            owner=ledger.owner,
            round=round,
            steps=event.steps,
            sigma=_r4(event.noise_multiplier),
            epsilon=_r4(epsilon),
            empty_batches=empty_batches,
            seeded=seeded,
        ),
    )
    return TrainResult(
        examples=examples, epsilon=epsilon, event=event, loss=loss_mean, empty_batches=empty_batches
    )


def _r4(value: float) -> float:
    """Four decimals, for log fields."""
    return float(f"{value:.4f}")
