"""A hospital's local policy: the limits its own operator sets, never taken from a coordinator.

The policy is checked against every approved manifest before the hospital acts on it
(:meth:`HospitalPolicy.check`), and again before each round:

* ``epsilon_cap`` / ``delta``: the owner's own (epsilon, delta) budget for its dataset across
  every study (required: there is no default cap for real data);
* ``min_clients``: the smallest client set whose aggregate it lets anyone decrypt (at least the
  manifest's, and never below 2);
* ``modes``: the secure modes it accepts (plaintext ``none`` only if listed);
* ``models``: custom architectures its operator registered, name -> ``package.module:factory``
  (built-in specs ``mlp``, ``mlp:<widths>`` and ``logreg`` are always available); a model
  name from the manifest is only ever looked up here, never imported from a received string;
* ``noise_seed``: local seeding of the DP noise (reproducible experiments only, recorded in the
  ledger as seeded; unfit for real patient data);
* ``chain_url``: the hospital's own view of the study's chain (a JSON-RPC endpoint it
  trusts). With it the hospital decrypts an aggregate only once the study contract has
  finalized exactly that aggregate and client set for the round (see
  :func:`cohort.federation.approval.check_finalized`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.clients.model import is_builtin_spec
from cohort.errors import ConfigError, VerificationError
from cohort.federation.manifest import Manifest, SecureMode

DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class HospitalPolicy:
    """What this hospital's operator allows (see module doc)."""

    epsilon_cap: float
    delta: float = DEFAULT_DELTA
    min_clients: int = 2
    modes: frozenset[SecureMode] = frozenset({SecureMode.CKKS, SecureMode.MPC})
    models: Mapping[str, str] = field(default_factory=dict)
    noise_seed: int | None = None
    chain_url: str | None = None

    def __post_init__(self) -> None:
        cap = self.epsilon_cap
        if isinstance(cap, bool) or not isinstance(cap, int | float):
            raise ConfigError("epsilon-cap must be a number (the hospital's own budget)")
        if not (math.isfinite(cap) and cap > 0):
            raise ConfigError(
                f"epsilon-cap must be finite and > 0 (the hospital's own budget), got {cap}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if isinstance(self.min_clients, bool) or not isinstance(self.min_clients, int):
            raise ConfigError("min-clients must be an integer")
        if self.min_clients < 2:
            raise ConfigError(
                f"min-clients must be >= 2 (owners per aggregate), got {self.min_clients}"
            )
        object.__setattr__(self, "modes", frozenset(self.modes))
        if not self.modes:
            raise ConfigError("modes must list at least one secure mode")
        for name, target in self.models.items():
            if is_builtin_spec(name):
                raise ConfigError(f"models: {name!r} is a built-in spec and cannot be redefined")
            if not isinstance(target, str) or ":" not in target:
                raise ConfigError(f"models: {name!r} must map to 'package.module:factory'")
        if self.chain_url is not None and not self.chain_url.startswith(("http://", "https://")):
            raise ConfigError(f"chain-url must be an http(s) JSON-RPC URL, got {self.chain_url!r}")
        if self.noise_seed is not None and not 0 <= self.noise_seed < 2**63:
            raise ConfigError(f"noise-seed must be in 0..2^63-1, got {self.noise_seed}")

    def check(self, manifest: Manifest) -> None:
        """Refuse a manifest outside this policy; VerificationError naming the field."""
        where = f"study {manifest.study_id[:16]}"
        if manifest.secure not in self.modes:
            accepted = ", ".join(sorted(m.value for m in self.modes))
            raise VerificationError(
                f"{where}: secure mode {manifest.secure.value!r} is refused by this hospital's "
                f"policy (accepted: {accepted})"
            )
        if manifest.min_clients < self.min_clients:
            raise VerificationError(
                f"{where}: min_clients {manifest.min_clients} is below this hospital's "
                f"minimum client set {self.min_clients}"
            )
        if manifest.dp.delta > self.delta:
            raise VerificationError(
                f"{where}: dp.delta {manifest.dp.delta:g} is above this hospital's delta "
                f"{self.delta:g}"
            )
        if not is_builtin_spec(manifest.model) and manifest.model not in self.models:
            raise VerificationError(
                f"{where}: model {manifest.model!r} is not a built-in architecture nor "
                "registered in this hospital's models"
            )

    @property
    def min_client_set(self) -> int:
        return self.min_clients

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> HospitalPolicy:
        """From a TOML table / node-config mapping with dashed keys (``epsilon-cap`` ...)."""
        known = {
            "epsilon-cap",
            "delta",
            "min-clients",
            "modes",
            "models",
            "noise-seed",
            "chain-url",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"hospital policy: unknown key {unknown[0]!r}")
        if "epsilon-cap" not in data:
            raise ConfigError("hospital policy: epsilon-cap is required (the hospital's budget)")
        modes_raw = data.get("modes", "ckks,mpc")
        names = modes_raw.split(",") if isinstance(modes_raw, str) else list(modes_raw)
        models = data.get("models", {})
        if not isinstance(models, Mapping):
            raise ConfigError("hospital policy: models must be a table name -> module:factory")
        seed = data.get("noise-seed")
        return cls(
            epsilon_cap=_number(data["epsilon-cap"], "epsilon-cap"),
            delta=_number(data.get("delta", DEFAULT_DELTA), "delta"),
            min_clients=int(_number(data.get("min-clients", 2), "min-clients")),
            modes=frozenset(SecureMode.parse(str(n).strip()) for n in names if str(n).strip()),
            models={str(k): str(v) for k, v in models.items()},
            noise_seed=None if seed is None else int(_number(seed, "noise-seed")),
            chain_url=None if data.get("chain-url") is None else str(data["chain-url"]),
        )


def _number(value: object, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"hospital policy: {key} must be a number")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"hospital policy: {key} must be a number, got {value!r}") from None
