"""DP-SGD's moving parts on Opacus: the per-example gradient module, an optimizer whose noise
comes from a ChaCha20 stream, Poisson batches, and the epoch loop.

Two ways to clip per example, one mechanism (clip each example's gradient to C with Opacus's
factor ``min(1, C / (norm + 1e-6))``, sum, add ChaCha20 noise sigma * C, divide by the
expected batch size): MLPs (:class:`torch.nn.Sequential` of ``Linear`` layers and
elementwise activations, every model spec ``"mlp..."``) take :class:`FusedLinearClipping`,
which never materialises per-example gradients (a ``Linear`` layer's per-example gradient
``g a^T`` has norm ``|g| |a|``, and the clipped sum is one matmul); any other model takes
Opacus's :class:`GradSampleModule`. Both end on the same parameters up to float rounding
(tests/clients/test_clients_training.py; bench/dp_speed.py times them).

:func:`cohort.clients.training.train_dp` is the entry point; it imports this module when it
trains, because Opacus takes seconds to import and a deployed ClientApp is a fresh process
for every message (enrolment, keys and decryption never train).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from opacus.accountants import PRVAccountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from opacus.optimizers.utils import params as opacus_params
from opacus.validators import ModuleValidator
from torch import nn

from cohort.clients.data import Dataset
from cohort.clients.noise import NOISE, SAMPLING, ChaChaStream, PoissonSampler
from cohort.clients.privacy import DpEvent
from cohort.errors import ProtocolAbort

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
        _add_stream_noise(self, self._stream)


def _add_stream_noise(optimizer: DPOptimizer, stream: ChaChaStream) -> None:
    """``p.grad = p.summed_grad + noise`` for every parameter: one ChaCha20 draw of std
    sigma * C per step for all parameters, in order, hardened (:meth:`ChaChaStream.gaussian`),
    added in the gradient's dtype."""
    params = list(optimizer.params)
    for p in params:
        _check_processed_flag(p.summed_grad)
    sizes = [int(p.summed_grad.numel()) for p in params]
    std = float(optimizer.noise_multiplier) * float(optimizer.max_grad_norm)
    flat = torch.from_numpy(stream.gaussian(sum(sizes), std=std))
    kinds = {(p.summed_grad.device, p.summed_grad.dtype) for p in params}
    if len(kinds) == 1:  # one conversion for all parameters (the same values as per chunk)
        device, dtype = kinds.pop()
        flat = flat.to(device=device, dtype=dtype)
    for p, chunk in zip(params, torch.split(flat, sizes), strict=True):
        summed = p.summed_grad
        noise = chunk.view(summed.shape).to(device=summed.device, dtype=summed.dtype)
        p.grad = (summed + noise).view_as(p)
        _mark_as_processed(summed)


#: Layers without parameters that act on each example (each row) alone.
ELEMENTWISE = (nn.Tanh, nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Identity)


def fused_supported(module: nn.Module) -> bool:
    """Whether :class:`FusedLinearClipping` handles ``module``: an ``nn.Sequential`` (or a
    subclass keeping its ``forward``, as :class:`cohort.clients.model.MLP`) of ``nn.Linear``
    layers and :data:`ELEMENTWISE` activations, with no parameter outside those layers."""
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return False
    layers = list(module)
    if not all(type(m) is nn.Linear or type(m) in ELEMENTWISE for m in layers):
        return False
    owned = {id(p) for m in layers if type(m) is nn.Linear for p in m.parameters()}
    every = [id(p) for p in module.parameters()]
    return bool(owned) and set(every) == owned and len(every) == len(owned)


class FusedLinearClipping(nn.Module):
    """Per-example clipping for an MLP without per-example gradient tensors.

    The forward pass keeps each ``Linear`` layer's input ``a`` (``[B, in]``) and hooks its
    output, so the usual ``loss.backward()`` on the batch-mean loss also yields the output
    gradients ``G`` (``[B, out]``, times B: each example's own loss gradient, as Opacus
    scales for ``loss_reduction="mean"``). :meth:`clip_into_grad` then sets each
    parameter's ``grad`` to the sum over examples of the clipped per-example gradients:
    per example, ``|dW|^2 = |g|^2 |a|^2`` and ``|db|^2 = |g|^2`` give the total norm, the
    factor is ``min(1, C / (norm + 1e-6))`` and the sums are ``(c G)^T a`` and ``sum c g``.
    The gradients that ``backward`` left are overwritten, never used.
    """

    def __init__(self, module: nn.Sequential, *, max_grad_norm: float) -> None:
        super().__init__()
        if not fused_supported(module):
            raise ProtocolAbort(f"FusedLinearClipping: unsupported model {type(module).__name__}")
        self._module = module
        self.max_grad_norm = float(max_grad_norm)
        self._inputs: list[torch.Tensor] = []
        self._grads: list[torch.Tensor | None] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._inputs = []
        self._grads = []
        h = x
        for layer in self._module:
            if type(layer) is nn.Linear:
                if h.ndim != 2:
                    raise ProtocolAbort(
                        f"FusedLinearClipping: Linear input must be [batch, features], "
                        f"got shape {tuple(h.shape)}"
                    )
                self._inputs.append(h.detach())
                self._grads.append(None)
                h = layer(h)
                h.register_hook(self._keeper(self._grads, len(self._grads) - 1))
            else:
                h = layer(h)
        return h

    @staticmethod
    def _keeper(grads: list[torch.Tensor | None], index: int) -> Any:
        def keep(grad: torch.Tensor) -> None:
            grads[index] = grad.detach()

        return keep

    def clip_into_grad(self) -> None:
        """Set every parameter's ``grad`` to the clipped per-example sum of the last batch."""
        linears = [m for m in self._module if type(m) is nn.Linear]
        if not self._inputs or any(g is None for g in self._grads):
            raise ProtocolAbort("FusedLinearClipping: step without a forward and backward pass")
        batch = self._inputs[0].shape[0]
        grads = [g * batch for g in self._grads if g is not None]
        norms2 = torch.zeros(batch, dtype=grads[0].dtype, device=grads[0].device)
        for a, g, layer in zip(self._inputs, grads, linears, strict=True):
            g2 = g.pow(2).sum(1)
            norms2 = norms2 + g2 * a.pow(2).sum(1)
            if layer.bias is not None:
                norms2 = norms2 + g2
        coef = (self.max_grad_norm / (norms2.sqrt() + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for a, g, layer in zip(self._inputs, grads, linears, strict=True):
                cg = g * coef[:, None]
                layer.weight.grad = (cg.t() @ a).to(layer.weight.dtype)
                if layer.bias is not None:
                    layer.bias.grad = cg.sum(0).to(layer.bias.dtype)
        self._inputs = []
        self._grads = []

    def cleanup(self) -> None:
        """Nothing hooks the wrapped module: only the last batch's tensors are dropped."""
        self._inputs = []
        self._grads = []


class FusedSecureNoiseDPOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's optimizer for already-clipped gradient sums, with ChaCha20 noise.

    Each step first has :class:`FusedLinearClipping` write the clipped per-example sums
    into ``p.grad``; then Opacus adds the noise (:func:`_add_stream_noise`, as
    :class:`SecureNoiseDPOptimizer`), divides by the expected batch size and calls the
    accountant hook.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        clipping: FusedLinearClipping,
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
        self._clipping = clipping
        self._stream = stream

    @property
    def params(self) -> list[Any]:
        """Opacus's flat parameter list, built once (the groups never change in a round)."""
        cached: list[Any] | None = self.__dict__.get("_params_cache")
        if cached is None:
            cached = opacus_params(self)
            self.__dict__["_params_cache"] = cached
        return cached

    def pre_step(self, closure: Any = None) -> bool | None:
        self._clipping.clip_into_grad()
        result: bool | None = super().pre_step(closure)
        return result

    def accumulate(self) -> None:
        """``p.summed_grad`` = this step's clipped sum (Opacus's, without a deepcopy)."""
        for p in self.params:
            if p.summed_grad is None:
                p.summed_grad = p.grad.detach().clone()
            else:
                p.summed_grad.add_(p.grad.detach())

    def add_noise(self) -> None:
        _add_stream_noise(self, self._stream)


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

    module: Any  # FusedLinearClipping or Opacus GradSampleModule wrapping the private copy
    optimizer: SecureNoiseDPOptimizer | FusedSecureNoiseDPOptimizer
    batches: PoissonBatches
    accountant: PRVAccountant

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample attributes from the wrapped module."""
        self.module.cleanup()


def prepare_private(
    work: nn.Module,
    dataset: Dataset,
    *,
    config: DpConfig,
    event: DpEvent,
    round_key: bytes,
    fused: bool = True,
) -> PrivateTraining:
    """Wrap ``work`` (a private copy, trained in place) for DP-SGD as ``event`` describes.

    Noise and sampling come from the :data:`NOISE` and :data:`SAMPLING` streams under
    ``round_key``; the loss is averaged over Opacus's expected batch size
    ``int(n * sample_rate)`` (at least 1), as ``PrivacyEngine.make_private`` does. MLPs
    take :class:`FusedLinearClipping` unless ``fused=False``; other models, Opacus's
    :class:`GradSampleModule`.
    """
    ModuleValidator.validate(work, strict=True)
    examples = len(dataset)
    sgd = torch.optim.SGD(work.parameters(), lr=config.lr, momentum=config.momentum)
    terms: dict[str, Any] = {
        "noise_multiplier": event.noise_multiplier,
        "max_grad_norm": float(config.max_grad_norm),
        "expected_batch_size": max(1, int(examples * event.sample_rate)),
        "stream": ChaChaStream.derive(round_key, NOISE),
    }
    module: Any
    optimizer: SecureNoiseDPOptimizer | FusedSecureNoiseDPOptimizer
    if fused and fused_supported(work):
        mlp = cast(nn.Sequential, work)  # fused_supported checked it
        module = FusedLinearClipping(mlp, max_grad_norm=float(config.max_grad_norm))
        optimizer = FusedSecureNoiseDPOptimizer(sgd, clipping=module, **terms)
    else:
        module = GradSampleModule(work, batch_first=True, loss_reduction="mean")
        module.forbid_grad_accumulation()
        optimizer = SecureNoiseDPOptimizer(sgd, **terms)
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
