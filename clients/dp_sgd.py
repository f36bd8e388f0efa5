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
from collections.abc import Iterable, Iterator, Sequence
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


class StepNoise:
    """A round's per-step noise vectors from the noise stream, drawn a block of steps at a
    time: the i-th :meth:`take` is exactly the i-th per-step draw
    ``stream.gaussian(size, std=std)`` (the same subkey, the same values; see
    :meth:`ChaChaStream.gaussian_rows`), as a flat float64 tensor, or in ``dtype`` if given.

    Drawing ahead changes only when the values are computed, not which: the noise never
    depends on the data, and the stream key is held for the round in any case.
    """

    #: Most normals computed per block (four per coordinate per step): 2 MiB of float64.
    BLOCK_NORMALS = 2**18

    def __init__(
        self,
        stream: ChaChaStream,
        *,
        size: int,
        std: float,
        steps: int,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.size = size
        self.std = std
        self._stream = stream
        self._planned = max(1, steps)
        self._dtype = dtype
        self._device = device
        self._block = torch.empty((0, size))
        self._next = 0

    def take(self) -> torch.Tensor:
        """The next step's noise vector (``[size]``)."""
        if self._next == self._block.shape[0]:
            rows = max(1, min(self._planned, self.BLOCK_NORMALS // max(1, 4 * self.size)))
            self._planned = max(1, self._planned - rows)
            block = torch.from_numpy(self._stream.gaussian_rows(rows, self.size, std=self.std))
            if self._dtype is not None or self._device is not None:
                block = block.to(device=self._device, dtype=self._dtype)
            self._block = block
            self._next = 0
        row = self._block[self._next]
        self._next += 1
        return row


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
        steps: int = 1,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        params = list(self.params)
        kinds = {(p.device, p.dtype) for p in params}
        device, dtype = kinds.pop() if len(kinds) == 1 else (None, None)
        self._noise = StepNoise(
            stream,
            size=sum(int(p.numel()) for p in params),
            std=float(noise_multiplier) * float(max_grad_norm),
            steps=steps,
            dtype=dtype,
            device=device,
        )

    def add_noise(self) -> None:
        """``p.grad = p.summed_grad + noise`` for every parameter: the step's noise vector
        of std sigma * C split over the parameters in order, in the gradient's dtype."""
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        flat = self._noise.take()
        sizes = [int(p.summed_grad.numel()) for p in params]
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
    layers and :data:`ELEMENTWISE` activations, with no parameter outside those layers, all
    of one dtype on one device."""
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return False
    layers = list(module)
    if not all(type(m) is nn.Linear or type(m) in ELEMENTWISE for m in layers):
        return False
    # A Linear's own parameters are its weight and bias; anything else registered on it,
    # or anywhere in the module, is outside what the fused clipping handles.
    owned = [
        id(p) for m in layers if type(m) is nn.Linear for p in (m.weight, m.bias) if p is not None
    ]
    every = list(module.parameters())
    return (
        bool(owned)
        and sorted(id(p) for p in every) == sorted(owned)
        and len({(p.device, p.dtype) for p in every}) == 1
    )


class FusedLinearClipping(nn.Module):
    """Per-example clipping for an MLP without per-example gradient tensors.

    The forward pass keeps each ``Linear`` layer's input ``a`` (``[B, in]``) and hooks its
    output; it uses the layers' parameters detached, so the usual ``loss.backward()`` on the
    batch-mean loss yields only the output gradients ``G`` (``[B, out]``, times B: each
    example's own loss gradient, as Opacus scales for ``loss_reduction="mean"``) and computes
    no parameter gradient. :meth:`clip_into` then writes, per parameter, the sum over
    examples of the clipped per-example gradients: per example, ``|dW|^2 = |g|^2 |a|^2`` and
    ``|db|^2 = |g|^2`` give the total norm, the factor is ``min(1, C / (norm + 1e-6))`` and
    the sums are ``(c G)^T a`` and ``sum c g``.
    """

    def __init__(self, module: nn.Sequential, *, max_grad_norm: float) -> None:
        super().__init__()
        if not fused_supported(module):
            raise ProtocolAbort(f"FusedLinearClipping: unsupported model {type(module).__name__}")
        self._module = module
        self.max_grad_norm = float(max_grad_norm)
        self.linears: list[nn.Linear] = [m for m in module if type(m) is nn.Linear]
        self._inputs: list[torch.Tensor] = []
        self._grads: list[torch.Tensor | None] = []
        self._scalars: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}

    def _scalar(self, value: float, like: torch.Tensor) -> torch.Tensor:
        """``value`` as a cached 0-dim tensor of ``like``'s dtype and device."""
        key = (value, like.dtype, like.device)
        found = self._scalars.get(key)
        if found is None:
            found = self._scalars[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
        return found

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clear(), not new lists: nn.Module's __setattr__ costs microseconds a call.
        self._inputs.clear()
        self._grads.clear()
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
                bias = None if layer.bias is None else layer.bias.detach()
                h = nn.functional.linear(h, layer.weight.detach(), bias)
                if not h.requires_grad:  # first layer: the graph starts at its output
                    h.requires_grad_()
                h.register_hook(  # type: ignore[no-untyped-call]
                    self._keeper(self._grads, len(self._grads) - 1)
                )
            else:
                h = layer(h)
        return h

    @staticmethod
    def _keeper(grads: list[torch.Tensor | None], index: int) -> Any:
        def keep(grad: torch.Tensor) -> None:
            grads[index] = grad.detach()

        return keep

    def clip_into(self, out: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Write the last batch's clipped per-example sums into ``out``: per ``Linear``
        layer in order, a weight-shaped and a bias-shaped (or None) buffer."""
        kept = [g for g in self._grads if g is not None]
        if not self._inputs or len(kept) != len(self._grads):
            raise ProtocolAbort("FusedLinearClipping: step without a forward and backward pass")
        # Python scalars cost microseconds per operation; 0-dim tensors of the same dtype
        # give the same values (as Tensor.__rtruediv__, C / x is reciprocal(x) * C).
        batch = self._scalar(self._inputs[0].shape[0], kept[0])
        grads = [g * batch for g in kept]
        norms2: torch.Tensor | None = None
        for a, g, layer in zip(self._inputs, grads, self.linears, strict=True):
            g2 = (g * g).sum(1)
            term = g2 * (a * a).sum(1)
            norms2 = term if norms2 is None else norms2 + term
            if layer.bias is not None:
                norms2 = norms2 + g2
        if norms2 is None:
            raise ProtocolAbort("FusedLinearClipping: no Linear layer")
        inverse = torch.reciprocal(norms2.sqrt() + self._scalar(1e-6, norms2))
        coef = torch.clamp_max(inverse * self._scalar(self.max_grad_norm, norms2), 1.0)
        coef = coef.unsqueeze(1)
        with torch.no_grad():
            for a, g, (weight, bias) in zip(self._inputs, grads, out, strict=True):
                cg = g * coef
                torch.mm(cg.t(), a, out=weight)
                if bias is not None:
                    torch.sum(cg, 0, out=bias)
        self.cleanup()

    def cleanup(self) -> None:
        """Nothing hooks the wrapped module: only the last batch's tensors are dropped."""
        self._inputs.clear()
        self._grads.clear()


class FusedSecureNoiseDPOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's optimizer for already-clipped gradient sums, with ChaCha20 noise.

    All gradients live in one flat buffer, in Opacus's parameter order. Each step
    :class:`FusedLinearClipping` writes the clipped per-example sums into it; then, as
    Opacus's ``pre_step`` (sum, add noise, divide by the expected batch size, accountant
    hook) but in one operation each for all parameters, the step's noise vector of std
    sigma * C (:class:`StepNoise`, the per-step draws of :class:`SecureNoiseDPOptimizer`)
    is added and the sum divided by the expected batch size; ``p.grad`` are views of it.
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
        steps: int = 1,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self._clipping = clipping
        params = self.params
        owned = [p for m in clipping.linears for p in (m.weight, m.bias) if p is not None]
        if sorted(map(id, params)) != sorted(map(id, owned)):
            raise ProtocolAbort("FusedSecureNoiseDPOptimizer: parameters are not the MLP's")
        first = params[0]
        total = sum(p.numel() for p in params)
        self._flat = torch.empty(total, dtype=first.dtype, device=first.device)
        views = torch.split(self._flat, [p.numel() for p in params])
        self._grads = [(p, v.view_as(p)) for p, v in zip(params, views, strict=True)]
        by_id = {id(p): v for p, v in self._grads}
        self._out = [
            (by_id[id(m.weight)], None if m.bias is None else by_id[id(m.bias)])
            for m in clipping.linears
        ]
        self._noise = StepNoise(
            stream,
            size=self._flat.numel(),
            std=float(noise_multiplier) * float(max_grad_norm),
            steps=steps,
            dtype=first.dtype,
            device=first.device,
        )

    @property
    def params(self) -> list[Any]:
        """Opacus's flat parameter list, built once (the groups never change in a round)."""
        cached: list[Any] | None = self.__dict__.get("_params_cache")
        if cached is None:
            cached = opacus_params(self)
            self.__dict__["_params_cache"] = cached
        return cached

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) the gradients; nothing else carries over between steps."""
        if not set_to_none:
            self._flat.zero_()
        for p, grad in self._grads:
            p.grad = None if set_to_none else grad

    def pre_step(self, closure: Any = None) -> bool:
        """Clip, add the noise, scale, account: Opacus's ``pre_step`` for this step."""
        self._clipping.clip_into(self._out)
        if self._check_skip_next_step():
            raise ProtocolAbort("FusedSecureNoiseDPOptimizer: virtual steps are not supported")
        self._flat.add_(self._noise.take())
        self._flat.div_(self.expected_batch_size * self.accumulated_iterations)
        for p, grad in self._grads:
            p.grad = grad
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True


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
        "steps": event.steps,
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
