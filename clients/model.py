"""Models every party builds from the study's model spec, and their flat parameter vectors.

Who runs what: the coordinator builds the model to initialise and evaluate the global
parameters; each data owner builds the same model, loads the global vector with
:func:`set_flat`, trains it with DP-SGD and reads its update with :func:`get_flat`.
Every model passes Opacus's :class:`ModuleValidator` (no BatchNorm and other layers that
mix examples inside a batch), so per-example gradients are well defined.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cohort.clients.data import Dataset
from cohort.errors import BadInputError
from cohort.logs import fields, get_logger

log = get_logger(__name__)

#: Hidden layer widths of the default ``"mlp"`` spec.
DEFAULT_HIDDEN: tuple[int, ...] = (32,)
_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class MLP(nn.Sequential):
    """Linear layers with tanh between them: ``in -> hidden... -> classes`` (logits).

    Tanh keeps activations bounded, which suits clipped, noisy gradients better than ReLU
    (bounded activations keep per-example gradient norms even across examples).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            layers.append(nn.Tanh())
            width = size
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


def _parse_hidden(spec: str, text: str) -> tuple[int, ...]:
    sizes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise BadInputError(
                f"model spec {spec!r}: hidden sizes must be positive integers, e.g. 'mlp:64,32'"
            )
        sizes.append(int(part))
    return tuple(sizes)


def _from_factory(spec: str, *, in_features: int, num_classes: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"model spec {spec!r}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BadInputError(f"model spec {spec!r}: {module_name} has no callable {attr!r}")
    built = _call_factory(factory, spec, in_features=in_features, num_classes=num_classes)
    if not isinstance(built, nn.Module):
        raise BadInputError(
            f"model spec {spec!r}: factory returned {type(built).__name__}, not a torch Module"
        )
    return built


def _call_factory(
    factory: Callable[..., object], spec: str, *, in_features: int, num_classes: int
) -> object:
    try:
        return factory(in_features, num_classes)
    except TypeError as exc:
        raise BadInputError(
            f"model spec {spec!r}: factory must accept (in_features, num_classes): {exc}"
        ) from None


def _make_private_compatible(model: nn.Module, spec: str) -> nn.Module:
    # Imported here: Opacus costs ~2 s to import, and a deployed ClientApp is a fresh process
    # per message; enrolment, key and decryption messages never build a model.
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        fixed = ModuleValidator.fix(model)
        remaining = ModuleValidator.validate(fixed, strict=False)
        if remaining:
            reasons = "; ".join(str(err) for err in remaining)
            raise BadInputError(f"model spec {spec!r}: not trainable with DP-SGD: {reasons}")
        log.warning(
            "model replaced layers for DP-SGD",
            extra=fields(spec=spec, fixes=[type(err).__name__ for err in errors]),
        )
        model = fixed
    return model


def is_builtin_spec(spec: str) -> bool:
    """Whether ``spec`` names a built-in architecture: ``mlp``, ``mlp:<widths>``, ``logreg``."""
    return spec in ("mlp", "logreg") or (
        spec.startswith("mlp:") and all(p.strip().isdigit() for p in spec[4:].split(","))
    )


def build_model(
    spec: str = "mlp",
    *,
    in_features: int,
    num_classes: int,
    registry: Mapping[str, str] | None = None,
) -> nn.Module:
    """Build the study's model from ``spec``; run by the coordinator and every data owner.

    Specs: ``"mlp"`` (hidden widths :data:`DEFAULT_HIDDEN`), ``"mlp:64,32"`` (given widths),
    ``"logreg"`` (one linear layer), or a name registered in ``registry`` - this party's own
    mapping from architecture names to ``package.module:factory`` callables installed on
    this machine, each taking ``(in_features, num_classes)`` and returning a Module. A spec
    is never imported as a module path itself: a study's model name cannot make a party
    run code its operator did not register.
    The result must map ``[batch, in_features]`` to ``[batch, num_classes]`` logits and pass
    Opacus's validator (layers it can fix, like BatchNorm, are replaced with a warning).
    Initialisation draws from torch's global generator: same ``torch.manual_seed``, same
    parameters. Raises :class:`BadInputError` on an unknown or unusable spec.
    """
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise BadInputError(f"in_features must be an integer >= 1, got {in_features!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BadInputError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(spec, str):
        raise BadInputError(f"model spec must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    registered = dict(registry or {})
    model: nn.Module
    if spec == "mlp":
        model = MLP(in_features, DEFAULT_HIDDEN, num_classes)
    elif spec.startswith("mlp:"):
        model = MLP(in_features, _parse_hidden(spec, spec[4:]), num_classes)
    elif spec == "logreg":
        model = MLP(in_features, (), num_classes)
    elif spec in registered:
        target = registered[spec]
        if not _FACTORY_SPEC.match(target):
            raise BadInputError(
                f"model {spec!r}: registered factory {target!r} is not 'package.module:factory'"
            )
        model = _from_factory(target, in_features=in_features, num_classes=num_classes)
    else:
        known = ", ".join(["mlp", "mlp:<w1>,<w2>,...", "logreg", *sorted(registered)])
        raise BadInputError(f"unknown model {spec!r}: expected one of {known}")
    model = _make_private_compatible(model, spec)
    if not any(p.requires_grad for p in model.parameters()):
        raise BadInputError(f"model spec {spec!r}: the model has no trainable parameters")
    _check_output_shape(model, spec, in_features=in_features, num_classes=num_classes)
    return model


def _check_output_shape(model: nn.Module, spec: str, *, in_features: int, num_classes: int) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_features))
    except Exception as exc:
        raise BadInputError(
            f"model spec {spec!r}: forward pass on [2, {in_features}] failed: {exc}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInputError(
            f"model spec {spec!r}: output for a batch of 2 has shape {shape}, "
            f"expected (2, {num_classes})"
        )


def num_parameters(model: nn.Module) -> int:
    """Length of the flat parameter vector of ``model``."""
    return sum(p.numel() for p in model.parameters())


def get_flat(model: nn.Module) -> np.ndarray:
    """All parameters of ``model`` in ``model.parameters()`` order, as one float32 vector."""
    with torch.no_grad():
        parts = [
            p.detach().reshape(-1).to(device="cpu", dtype=torch.float32) for p in model.parameters()
        ]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(parts).numpy().copy()


def set_flat(model: nn.Module, vector: np.ndarray) -> None:
    """Overwrite every parameter of ``model`` from a flat vector made by :func:`get_flat`.

    Raises :class:`BadInputError` naming the expected and actual length, or on a vector
    that is not 1-D, not numeric, or holds NaN or infinite values; the model is then
    left unchanged.
    """
    array = np.asarray(vector)
    expected = num_parameters(model)
    if array.ndim != 1:
        raise BadInputError(f"parameter vector must be 1-D, got shape {array.shape}")
    if array.shape[0] != expected:
        raise BadInputError(
            f"parameter vector has the wrong length: expected {expected}, got {array.shape[0]}"
        )
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise BadInputError(f"parameter vector must be numeric, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise BadInputError("parameter vector holds NaN or infinite values")
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(source[offset : offset + n].view_as(p).to(device=p.device, dtype=p.dtype))
            offset += n


def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, mean cross-entropy loss) of ``model`` on ``dataset``.

    Run by the coordinator on its held-out data, or by a data owner on its own (a local
    figure: it is not differentially private, so it must not be published as is).
    """
    if len(dataset) == 0:
        raise BadInputError(f"{dataset.source}: cannot evaluate on no examples")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    correct = 0
    total_loss = 0.0
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                x = torch.from_numpy(dataset.features[start : start + batch_size]).to(device)
                y = torch.from_numpy(dataset.labels[start : start + batch_size]).to(device)
                logits = model(x)
                if logits.shape[-1] <= int(y.max()):
                    raise BadInputError(
                        f"{dataset.source}: labels go beyond the model's {logits.shape[-1]} classes"
                    )
                total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    n = len(dataset)
    loss = total_loss / n
    if not math.isfinite(loss):
        loss = float("inf")
    return correct / n, loss
