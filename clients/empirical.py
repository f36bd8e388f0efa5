"""Empirical privacy audit in one training run (Steinke, Nasr and Jagielski 2023).

"Privacy Auditing with One (1) Training Run" (NeurIPS 2023, arXiv:2305.08846): insert m
canaries into a data owner's training set, each independently with probability 1/2, train
once with the real DP-SGD (:func:`cohort.clients.training.train_dp`, production noise),
score every canary (here: its loss under the trained model, lower = more likely trained
on), guess "in" for the k+ lowest scores and "out" for the k- highest, abstain on the rest,
and count the correct guesses. Under (epsilon, delta)-DP the number of correct guesses is
stochastically dominated by a Binomial(r, e^eps / (1 + e^eps)) plus a delta term (the
paper's Theorem 3 and its Appendix D p-value), so the largest epsilon that the observed
count rejects at confidence 1 - beta is an empirical lower bound on the true epsilon.

That lower bound can never exceed the theoretical epsilon of the same run unless the DP
implementation (or its accounting) is broken: :meth:`EmpiricalAudit.check` fails loudly
(:class:`EmpiricalAuditFailed`, one line naming both numbers) when it does.

Caveats: the bound is statistical (it holds with probability 1 - beta over the canary
coin flips); with a few dozen canaries it is small (perfect guesses on 16 canaries give at
most about 1.6 at beta 0.05), so a bound of 0 says "no leak found", not "no leak"; and the
local dataset size, hence the sample rate, depends on how many canaries were included (a
side channel the accountant does not cover; it is not used by the loss-based guesses).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cohort.clients.accounting import compute_epsilon
from cohort.clients.data import Dataset
from cohort.clients.model import build_model
from cohort.clients.noise import ChaChaStream, random_key
from cohort.clients.privacy import PrivacyLedger
from cohort.clients.training import DpConfig, train_dp
from cohort.errors import BadInputError, VerificationError

#: 1 - confidence of the lower bound (the paper's examples use 0.05: 95% confidence).
DEFAULT_BETA = 0.05
#: L2 norm of an out-of-distribution canary, in standardised feature units (a typical
#: standardised record of d features has norm about sqrt(d)).
CANARY_NORM = 20.0
AUDIT_OWNER = "empirical-audit"
AUDIT_STUDY = "cohort/empirical-audit"

_CANARIES = b"audit/canaries"
_INCLUSION = b"audit/inclusion"
_NOISE_SEED = b"audit/noise-seed"
_INIT_SEED = b"audit/init-seed"


class EmpiricalAuditFailed(VerificationError):
    """The empirical epsilon lower bound exceeds the theoretical epsilon: a DP bug."""


# --------------------------------------------------------------------------- the bound


def _binomial_pmf(trials: int, p: float) -> np.ndarray:
    """P[Binomial(trials, p) = j] for j = 0..trials, via log-gamma (no cancellation)."""
    j = np.arange(trials + 1, dtype=np.float64)
    if p <= 0.0 or p >= 1.0:
        out = np.zeros(trials + 1)
        out[0 if p <= 0.0 else trials] = 1.0
        return out
    log_choose = np.array(
        [math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1) for k in j]
    )
    pmf: np.ndarray = np.exp(log_choose + j * math.log(p) + (trials - j) * math.log1p(-p))
    return pmf


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    for name, value in (("canaries", canaries), ("guesses", guesses), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInputError(f"{name} must be an integer >= 0, got {value!r}")
    if not correct <= guesses <= canaries:
        raise BadInputError(
            f"need correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}"
        )


def audit_p_value(
    *, canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """Probability of at least ``correct`` right guesses out of ``guesses`` (over
    ``canaries`` canaries) if the training run were (``epsilon``, ``delta``)-DP.

    The paper's bound: P[W >= v] <= P[B >= v] + 2 m delta max_{1 <= i <= v}
    P[v - i <= B < v] / i, with B ~ Binomial(r, e^eps / (1 + e^eps)), r guesses, v correct,
    m canaries; capped at 1.
    """
    _check_counts(canaries, guesses, correct)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise BadInputError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    if not 0 <= delta <= 1:
        raise BadInputError(f"delta must be in [0, 1], got {delta!r}")
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of eps-DP randomized response
    pmf = _binomial_pmf(guesses, q)
    tail = float(pmf[correct:].sum())
    slack = 0.0
    if delta > 0 and correct > 0:
        # below[i - 1] = P[v - i <= B < v] for i = 1..v
        below = np.cumsum(pmf[:correct][::-1])
        slack = float(np.max(below / np.arange(1, correct + 1)))
    return min(1.0, tail + 2.0 * canaries * delta * slack)


def epsilon_lower_bound(
    *,
    canaries: int,
    guesses: int,
    correct: int,
    delta: float,
    beta: float = DEFAULT_BETA,
    tolerance: float = 1e-6,
) -> float:
    """The largest epsilon that ``correct`` right guesses out of ``guesses`` (over
    ``canaries``) rejects at confidence 1 - ``beta``: with probability at least 1 - beta,
    a run that is (epsilon, ``delta``)-DP does not produce this many correct guesses, so
    the run is not (eps, delta)-DP for any eps below the returned value. 0 when nothing is
    rejected. Bisection on :func:`audit_p_value`, which grows with epsilon; the result is
    rounded down to ``tolerance``.
    """
    _check_counts(canaries, guesses, correct)
    if not 0 < beta < 1:
        raise BadInputError(f"beta must be in (0, 1), got {beta!r}")

    def rejected(eps: float) -> bool:
        return (
            audit_p_value(
                canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta
            )
            < beta
        )

    if not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2.0 * high
        if high > 1e4:
            return low
    while high - low > tolerance:
        mid = (low + high) / 2.0
        if rejected(mid):
            low = mid
        else:
            high = mid
    return low


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class EmpiricalAudit:
    """One one-run audit: counts, the empirical lower bound and the theoretical epsilon."""

    canaries: int
    included: int
    guesses: int
    correct: int
    rounds: int
    beta: float
    delta: float
    epsilon_lower: float
    epsilon_theoretical: float

    @property
    def ok(self) -> bool:
        """The verdict: the empirical lower bound does not exceed the theoretical epsilon."""
        return verdict(self.epsilon_lower, self.epsilon_theoretical)

    def check(self) -> None:
        """Raise :class:`EmpiricalAuditFailed` unless :attr:`ok`."""
        check_verdict(self.epsilon_lower, self.epsilon_theoretical)

    def to_dict(self) -> dict[str, Any]:
        return {
            "canaries": self.canaries,
            "included": self.included,
            "guesses": self.guesses,
            "correct": self.correct,
            "rounds": self.rounds,
            "beta": self.beta,
            "delta": self.delta,
            "epsilon_lower": self.epsilon_lower,
            "epsilon_theoretical": self.epsilon_theoretical,
            "ok": self.ok,
        }


def verdict(epsilon_lower: float, epsilon_theoretical: float) -> bool:
    """Whether a measured lower bound is consistent with the theoretical epsilon."""
    return epsilon_lower <= epsilon_theoretical


def check_verdict(epsilon_lower: float, epsilon_theoretical: float) -> None:
    """Fail loudly (one line naming both numbers) if the lower bound passes the theory."""
    if not verdict(epsilon_lower, epsilon_theoretical):
        raise EmpiricalAuditFailed(
            f"empirical audit failed: empirical epsilon lower bound {epsilon_lower:.4f} "
            f"exceeds the theoretical epsilon {epsilon_theoretical:.4f} (a DP bug)"
        )


def make_canaries(dataset: Dataset, count: int, *, key: bytes) -> Dataset:
    """``count`` out-of-distribution canaries: random directions at norm
    :data:`CANARY_NORM`, each with a uniformly random label; drawn from ChaCha20 under
    ``key``."""
    stream = ChaChaStream.derive(key, _CANARIES)
    d = dataset.num_features
    num_classes = max(2, int(dataset.labels.max()) + 1)
    directions = stream.standard_normal(count * d).reshape(count, d)
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    features = (directions / np.maximum(norms, 1e-12) * CANARY_NORM).astype(np.float32)
    labels = np.minimum(
        (stream.uniform(count) * num_classes).astype(np.int64), num_classes - 1
    ).astype(np.int64)
    return Dataset(
        features=np.ascontiguousarray(features),
        labels=labels,
        feature_names=dataset.feature_names,
        source=f"{dataset.source}/canaries",
    )


def _seed_int(key: bytes, purpose: bytes, bits: int) -> int:
    return int.from_bytes(ChaChaStream.derive(key, purpose).random_bytes(32), "big") >> (256 - bits)


def canary_losses(model: nn.Module, canaries: Dataset) -> np.ndarray:
    """Per-canary cross-entropy loss under ``model`` (eval mode, no gradients)."""
    param = next(model.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(canaries.features).to(param.device))
        losses = nn.functional.cross_entropy(
            logits, torch.from_numpy(canaries.labels).to(param.device), reduction="none"
        )
    out: np.ndarray = losses.cpu().numpy().astype(np.float64)
    return out


def count_correct(losses: np.ndarray, included: np.ndarray, guesses: int) -> int:
    """Guess "in" for the ceil(k/2) lowest losses and "out" for the floor(k/2) highest
    (k = ``guesses``); the number of right guesses."""
    order = np.argsort(losses, kind="stable")
    k_in = (guesses + 1) // 2
    k_out = guesses - k_in
    guessed_in = order[:k_in]
    guessed_out = order[len(order) - k_out :] if k_out else order[:0]
    return int(included[guessed_in].sum()) + int((~included[guessed_out]).sum())


def _train_non_private(
    net: nn.Module, train_set: Dataset, *, config: DpConfig, key: bytes, round: int
) -> None:
    """Plain minibatch SGD with ``config``'s epochs, batch size and learning rate: no
    clipping, no noise (the leak control of :func:`one_run_audit`)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    features = torch.from_numpy(train_set.features)
    labels = torch.from_numpy(train_set.labels)
    order = np.random.default_rng(_seed_int(key, _INIT_SEED, 63) + round)
    criterion = nn.CrossEntropyLoss()
    net.train()
    for _ in range(config.local_epochs):
        perm = torch.from_numpy(order.permutation(len(train_set)))
        for start in range(0, len(train_set), config.batch_size):
            batch = perm[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = criterion(net(features[batch]), labels[batch])
            loss.backward()
            optimizer.step()


def one_run_audit(
    dataset: Dataset,
    *,
    config: DpConfig,
    canaries: int,
    guesses: int,
    seed_key: bytes | None,
    rounds: int,
    model: str = "mlp",
    beta: float = DEFAULT_BETA,
    private: bool = True,
) -> EmpiricalAudit:
    """Audit DP-SGD on ``dataset`` with ``canaries`` inserted canaries in one run.

    Each canary joins the training set with probability 1/2 (ChaCha20 under ``seed_key``,
    or a fresh random key when None); ``rounds`` rounds of the real :func:`train_dp` run
    against a throwaway ledger (noise seeded from ``seed_key`` when given, random
    otherwise); ``guesses`` canaries are guessed by loss; the result carries the counts,
    the lower bound at confidence 1 - ``beta`` and ``config.delta``, and the theoretical
    epsilon of the recorded events. Does not raise on a failed verdict: see
    :meth:`EmpiricalAudit.check`.

    ``private=False`` is the control experiment: the same epochs, batches and learning rate
    with plain SGD (no clipping, no noise; the theoretical epsilon is infinite). Its bound
    shows what the audit detects when a model does leak its training records.
    """
    if not isinstance(dataset, Dataset) or len(dataset) == 0:
        raise BadInputError("dataset must be a non-empty Dataset")
    if isinstance(canaries, bool) or not isinstance(canaries, int) or canaries < 1:
        raise BadInputError(f"canaries must be an integer >= 1, got {canaries!r}")
    if isinstance(guesses, bool) or not isinstance(guesses, int) or not 1 <= guesses <= canaries:
        raise BadInputError(f"guesses must be an integer in [1, canaries], got {guesses!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise BadInputError(f"rounds must be an integer >= 1, got {rounds!r}")
    if rounds > config.total_rounds:
        raise BadInputError(
            f"rounds={rounds} exceeds the study's total_rounds={config.total_rounds} "
            "(the noise is calibrated for total_rounds)"
        )
    key = random_key() if seed_key is None else seed_key
    if not isinstance(key, bytes) or len(key) != ChaChaStream.KEY_SIZE:
        raise BadInputError(f"seed_key must be {ChaChaStream.KEY_SIZE} bytes or None")

    canary_set = make_canaries(dataset, canaries, key=key)
    included = ChaChaStream.derive(key, _INCLUSION).uniform(canaries) < 0.5
    chosen = canary_set.subset(np.flatnonzero(included), source=canary_set.source)
    train_set = Dataset(
        features=np.concatenate([dataset.features, chosen.features]),
        labels=np.concatenate([dataset.labels, chosen.labels]),
        feature_names=dataset.feature_names,
        source=f"{dataset.source}+canaries",
    )
    noise_seed = None if seed_key is None else _seed_int(key, _NOISE_SEED, 256)
    num_classes = max(2, int(max(dataset.labels.max(), canary_set.labels.max())) + 1)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_int(key, _INIT_SEED, 63))
        net = build_model(model, in_features=dataset.num_features, num_classes=num_classes)
    with tempfile.TemporaryDirectory(prefix="cohort-audit-") as tmp:
        ledger = PrivacyLedger.open(
            Path(tmp) / "ledger.json",
            owner=AUDIT_OWNER,
            epsilon_cap=float(config.target_epsilon),
            delta=float(config.delta),
        )
        for r in range(rounds):
            if not private:
                _train_non_private(net, train_set, config=config, key=key, round=r)
                continue
            train_dp(
                net,
                train_set,
                config=config,
                ledger=ledger,
                round=r,
                noise_seed=noise_seed,
                study_id=AUDIT_STUDY,
            )
        events = ledger.events
    theoretical = compute_epsilon(events, delta=float(config.delta)) if private else math.inf
    correct = count_correct(canary_losses(net, canary_set), included, guesses)
    lower = epsilon_lower_bound(
        canaries=canaries, guesses=guesses, correct=correct, delta=float(config.delta), beta=beta
    )
    return EmpiricalAudit(
        canaries=canaries,
        included=int(included.sum()),
        guesses=guesses,
        correct=correct,
        rounds=rounds,
        beta=beta,
        delta=float(config.delta),
        epsilon_lower=lower,
        epsilon_theoretical=theoretical,
    )
