"""DP-SGD's moving parts on Opacus: the per-example gradient module, an optimizer whose noise
comes from a ChaCha20 stream, Poisson batches, and the epoch loop.

:func:`cohort.clients.training.train_dp` is the entry point; it imports this module when it
trains, because Opacus takes seconds to import and a deployed ClientApp is a fresh process
for every message (enrolment, keys and decryption never train).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from opacus.accountants import PRVAccountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from cohort.clients.data import Dataset
from cohort.clients.noise import NOISE, SAMPLING, ChaChaStream, PoissonSampler
from cohort.clients.privacy import DpEvent

if TYPE_CHECKING:
    from cohort.clients.training import DpConfig


class SecureNoiseDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus's :class:`DPOptimizer` with its Gaussian noise drawn from a ChaCha20 stream.

    Clipping, accumulation, scaling and the accountant hook are Opacus's; only
    :meth:`add_noise` differs: one draw per step for all parameters, hardened as Opacus's
    ``secure_mode`` (:meth:`ChaChaStream.gaussian`), added in the gradient's dtype.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        stream: ChaChaStream,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
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
            noise = chunk.view(summed.shape).to(device=summed.device, dtype=summed.dtype)
            p.grad = (summed + noise).view_as(p)
            _mark_as_processed(summed)


class PoissonBatches:
    """``(features, labels)`` batches selected by a :class:`PoissonSampler`.

    An empty selection gives zero-row tensors that keep the feature shape (``[0, d]``).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, sampler: PoissonSampler):
        self.features = features
        self.labels = labels
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.sampler:
            chosen = torch.from_numpy(indices)
            yield self.features[chosen], self.labels[chosen]


@dataclass
class PrivateTraining:
    """The DP-SGD pieces for one round: a hooked module, its optimizer, batches, accountant."""

    module: Any  # opacus GradSampleModule wrapping the private copy
    optimizer: SecureNoiseDPOptimizer
    batches: PoissonBatches
    accountant: PRVAccountant

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample attributes from the wrapped module."""
        self.module.cleanup()


def prepare_private(
    work: nn.Module, dataset: Dataset, *, config: DpConfig, event: DpEvent, round_key: bytes
) -> PrivateTraining:
    """Wrap ``work`` (a private copy, trained in place) for DP-SGD as ``event`` describes.

    Noise and sampling come from the :data:`NOISE` and :data:`SAMPLING` streams under
    ``round_key``; the loss is averaged over Opacus's expected batch size
    ``int(n * sample_rate)`` (at least 1), as ``PrivacyEngine.make_private`` does.
    """
    ModuleValidator.validate(work, strict=True)
    examples = len(dataset)
    module = GradSampleModule(work, batch_first=True, loss_reduction="mean")
    module.forbid_grad_accumulation()
    optimizer = SecureNoiseDPOptimizer(
        torch.optim.SGD(work.parameters(), lr=config.lr, momentum=config.momentum),
        noise_multiplier=event.noise_multiplier,
        max_grad_norm=float(config.max_grad_norm),
        expected_batch_size=max(1, int(examples * event.sample_rate)),
        stream=ChaChaStream.derive(round_key, NOISE),
    )
    accountant = PRVAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=event.sample_rate))
    sampler = PoissonSampler(
        num_examples=examples,
        sample_rate=event.sample_rate,
        steps=config.steps_per_epoch(examples),
        stream=ChaChaStream.derive(round_key, SAMPLING),
    )
    batches = PoissonBatches(
        torch.from_numpy(dataset.features), torch.from_numpy(dataset.labels), sampler
    )
    return PrivateTraining(module, optimizer, batches, accountant)


def run_epochs(
    private: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device,
) -> tuple[float, int, int]:
    """The DP-SGD loop: (summed loss, examples seen, empty batches)."""
    criterion = nn.CrossEntropyLoss()
    loss_sum = 0.0
    loss_examples = 0
    empty_batches = 0
    with warnings.catch_warnings():
        # Opacus's full backward hooks fire on the first layer although its input needs
        # no gradient; torch warns about it on every step. Harmless here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(epochs):
            for x, y in batches:
                x = x.to(device)
                y = y.to(device)
                optimizer.zero_grad(set_to_none=True)
                logits = private(x)
                if y.numel() == 0:
                    # Empty Poisson batch: no example contributes, the step adds noise only.
                    empty_batches += 1
                    loss = logits.sum() * 0.0
                else:
                    loss = criterion(logits, y)
                    loss_sum += float(loss.detach()) * y.numel()
                    loss_examples += y.numel()
                loss.backward()
                optimizer.step()
    return loss_sum, loss_examples, empty_batches
