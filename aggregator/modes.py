"""Aggregation modes: how a committee member checks and combines one secure mode's payloads.

A committee member is mode-agnostic: it authenticates envelopes, keeps one payload per data
owner and round, and hands the agreed set to an :class:`AggregationMode`. Each secure mode
has a frozen *spec* (what the coordinator sends in the study configuration) and a mode
class built from it by :func:`build_mode`. CKKS is the default; an MPC mode (additive
shares) plugs in here later with its own spec and class, and must pass the same contract
tests (``tests/aggregator/test_aggregator_modes.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cohort.crypto.ckks import CkksPublicContext
from cohort.errors import BadInputError, ConfigError


class AggregationMode(ABC):
    """Checks and combines the payloads of one secure mode. Run by committee members."""

    name: ClassVar[str]

    @abstractmethod
    def check(self, payload: bytes, *, length: int) -> None:
        """Raise :class:`BadInputError` unless ``payload`` is a well-formed update of
        ``length`` values for this study. Run by a committee member on every upload."""

    @abstractmethod
    def combine(self, payloads: Sequence[bytes]) -> bytes:
        """Combine checked payloads, given in canonical (sorted sender) order.

        Deterministic: the same payloads in the same order give the same bytes, so honest
        members agree on one aggregate hash. Run by a committee member at aggregation.
        """


@dataclass(frozen=True)
class ModeSpec:
    """Base of the per-mode study parameters the coordinator sends at configuration."""

    name: ClassVar[str]


@dataclass(frozen=True)
class CkksSpec(ModeSpec):
    """Study parameters of the CKKS mode: the data owners' public TenSEAL context."""

    public_context: bytes

    name: ClassVar[str] = "ckks"

    def __repr__(self) -> str:
        return f"CkksSpec(public_context=<{len(self.public_context)} bytes>)"


class CkksMode(AggregationMode):
    """Homomorphic sum of CKKS ciphertexts under one public context (no secret key)."""

    name: ClassVar[str] = "ckks"

    def __init__(self, context: CkksPublicContext) -> None:
        self._context = context

    @property
    def context(self) -> CkksPublicContext:
        return self._context

    def check(self, payload: bytes, *, length: int) -> None:
        self._context.check(payload, length=length)

    def combine(self, payloads: Sequence[bytes]) -> bytes:
        if not payloads:
            raise BadInputError("ckks: nothing to combine (empty client set)")
        return self._context.add(list(payloads))


SUPPORTED_MODES: tuple[str, ...] = (CkksMode.name,)


def build_mode(spec: ModeSpec) -> AggregationMode:
    """Build the mode a study asks for. Run by a committee member at configuration.

    Raises :class:`BadInputError` for a CKKS context that is malformed or holds a secret
    key, :class:`ConfigError` for an unknown spec.
    """
    if isinstance(spec, CkksSpec):
        return CkksMode(CkksPublicContext.from_bytes(spec.public_context))
    raise ConfigError(f"secure mode: unsupported spec {type(spec).__name__}")
