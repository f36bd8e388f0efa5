"""Study configuration, validated when it is built.

A :class:`StudyConfig` is what the sponsor launches: how many hospitals, rounds, the committee
size and quorum, the secure mode and each hospital's privacy budget. Every field is checked in
``__post_init__`` with a message that names the parameter and its unit, so a typo fails before
anything starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cohort.clients.training import DpConfig
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.errors import ConfigError
from cohort.federation.manifest import ClientDpTerms, SecureMode
from cohort.files import write_atomic

__all__ = ["DATA_SOURCES", "DpSettings", "SecureMode", "StudyConfig", "write_json"]

#: The study contract's data-owner roster limit (``MAX_DATA_OWNERS`` in CohortStudy.sol): a
#: finalizing attestation touches every contributor and must fit one transaction's gas cap.
MAX_DATA_OWNERS = 1024

#: Where simulated hospitals' records come from: the breast-cancer demo split, seeded
#: synthetic records (any number of hospitals; scale runs), or one CSV file per hospital
#: (a hospital trying its own data) with the sponsor's held-out CSV.
DATA_SOURCES = ("demo", "synthetic", "csv")
#: Default MPC norm bound (L2, weighted-update units): honest DP-SGD rounds of the demo
#: study measure 1.5 to 4.4 (the noise dominates: about lr * sigma * C * sqrt(d * steps) / B),
#: so 10 leaves room while a model-replacement update scaled to matter is refused.
DEFAULT_MPC_NORM_BOUND = 10.0


@dataclass(frozen=True)
class DpSettings:
    """DP-SGD settings every data owner applies locally (sent with each round).

    ``epsilon`` is the per-hospital budget for the whole study, (epsilon, delta)-DP. Defaults
    are the data owners' tuned :class:`~cohort.clients.training.DpConfig` defaults (see
    docs/privacy.md and bench/dp_accuracy.py).
    """

    epsilon: float = DpConfig.target_epsilon
    delta: float = DpConfig.delta
    local_epochs: int = DpConfig.local_epochs
    batch_size: int = DpConfig.batch_size
    max_grad_norm: float = DpConfig.max_grad_norm
    lr: float = DpConfig.lr

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(
                f"epsilon must be > 0 (per-hospital (epsilon, delta) budget), got {self.epsilon}"
            )
        if not 0 < self.delta < 1:
            raise ConfigError(
                f"delta must be in (0, 1) (probability of privacy failure), got {self.delta}"
            )
        if self.local_epochs < 1:
            raise ConfigError(
                "local_epochs must be >= 1 (passes over local data per round), "
                f"got {self.local_epochs}"
            )
        if self.batch_size < 1:
            raise ConfigError(
                "batch_size must be >= 1 (expected examples per Poisson batch), "
                f"got {self.batch_size}"
            )
        if not self.max_grad_norm > 0:
            raise ConfigError(
                "max_grad_norm must be > 0 (L2 clipping bound C per example), "
                f"got {self.max_grad_norm}"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (local SGD learning rate), got {self.lr}")


@dataclass(frozen=True)
class StudyConfig:
    """Everything the sponsor fixes before round 1."""

    name: str = "breast-cancer-demo"
    clients: int = 5
    rounds: int = 5
    committee: int = 3
    quorum: int = 2
    secure: SecureMode = SecureMode.CKKS
    dp: DpSettings = field(default_factory=DpSettings)
    seed: int | None = None
    model: str = "mlp"
    min_clients: int = 2
    server_lr: float = 1.0
    bounty_wei: int = 10**18
    dirichlet_alpha: float = 1.0
    data: str = "demo"
    csv: tuple[str, ...] = ()  # data == "csv": one file per hospital
    test_csv: str = ""  # data == "csv": the sponsor's held-out split
    classes: int = 2
    #: Optional client-level DP (distributed noise; docs/privacy.md); None: record-level only.
    client_dp: ClientDpTerms | None = None
    #: MPC mode: the L2 bound every weighted update must meet inside MPC to count.
    mpc_norm_bound: float = DEFAULT_MPC_NORM_BOUND

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise ConfigError("name must be 1..64 characters (the study's label)")
        if not 2 <= self.clients <= MAX_DATA_OWNERS:
            raise ConfigError(
                f"clients must be in 2..{MAX_DATA_OWNERS} (hospitals in the study; the study "
                f"contract pays at most {MAX_DATA_OWNERS} data owners), got {self.clients}"
            )
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1 (federated rounds), got {self.rounds}")
        if self.committee < 1:
            raise ConfigError(f"committee must be >= 1 (aggregator members), got {self.committee}")
        if not self.committee // 2 < self.quorum <= self.committee:
            raise ConfigError(
                f"quorum must be a strict majority of the committee: "
                f"{self.committee // 2 + 1}..{self.committee} members, got {self.quorum}"
            )
        if not 2 <= self.min_clients <= self.clients:
            raise ConfigError(
                f"min_clients must be in 2..clients (smallest client set whose aggregate may be "
                f"decrypted), got {self.min_clients}"
            )
        if not self.server_lr > 0:
            raise ConfigError(
                f"server_lr must be > 0 (server step on the mean update), got {self.server_lr}"
            )
        if self.secure is SecureMode.MPC and self.committee < 2:
            raise ConfigError(
                f"committee must be >= 2 in MPC mode (members holding shares), got {self.committee}"
            )
        if not (self.mpc_norm_bound > 0 and math.isfinite(self.mpc_norm_bound)):
            raise ConfigError(
                f"mpc_norm_bound must be a positive L2 bound on a weighted update, got "
                f"{self.mpc_norm_bound}"
            )
        if self.bounty_wei < 0:
            raise ConfigError(f"bounty_wei must be >= 0 (wei), got {self.bounty_wei}")
        if not self.dirichlet_alpha > 0:
            raise ConfigError(
                "dirichlet_alpha must be > 0 (label-skew concentration), "
                f"got {self.dirichlet_alpha}"
            )
        if self.data not in DATA_SOURCES:
            raise ConfigError(
                f"data must be one of {', '.join(DATA_SOURCES)} (the simulated hospitals' "
                f"records), got {self.data!r}"
            )
        if self.classes < 2:
            raise ConfigError(f"classes must be >= 2 (labels 0..classes-1), got {self.classes}")
        if self.data == "csv":
            if len(self.csv) != self.clients:
                raise ConfigError(
                    f"csv: one file per hospital, got {len(self.csv)} files for "
                    f"{self.clients} clients"
                )
            if not self.test_csv:
                raise ConfigError("test_csv: the sponsor's held-out CSV is required with csv data")
        elif self.csv or self.test_csv:
            raise ConfigError("csv and test_csv go with data = 'csv'")
        if self.seed is not None and self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    @property
    def study_id(self) -> str:
        """Stable id: the name plus a short hash of the configuration."""
        digest = tagged_hash(Tag.STUDY_ID, json.dumps(self.to_dict(), sort_keys=True).encode())
        return f"{self.name}-{digest.hex()[:12]}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["secure"] = self.secure.value
        if self.client_dp is None:
            del data["client_dp"]  # absent by default: configs (and their ids) as before
        if self.secure is not SecureMode.MPC:
            del data["mpc_norm_bound"]  # only MPC mode has it
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        try:
            dp = DpSettings(**data.get("dp", {}))
            rest = {k: v for k, v in data.items() if k not in ("dp", "client_dp")}
            client_dp = data.get("client_dp")
            rest["client_dp"] = None if client_dp is None else ClientDpTerms(**client_dp)
            rest["secure"] = SecureMode.parse(str(rest.get("secure", "ckks")))
            rest["csv"] = tuple(rest.get("csv", ()))
            return cls(dp=dp, **rest)
        except TypeError as exc:
            raise ConfigError(f"study config: {exc}") from None


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_atomic(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
