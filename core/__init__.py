"""Cohort: privacy-preserving federated training.

Data owners train with differential privacy, encrypt (CKKS) their updates, and a committee
of aggregators combines them; the coordinator only ever sees aggregates and a study's
bounty is settled on-chain. The design card's top-level folders ship as subpackages of this
namespace: ``cohort.federation``, ``cohort.crypto``, ``cohort.clients``,
``cohort.aggregator`` and ``cohort.bounties``.
"""

from cohort.errors import (
    BadInputError,
    BudgetExhausted,
    CohortError,
    ConfigError,
    ProtocolAbort,
    VerificationError,
)
from cohort.offline import keep_flower_offline

keep_flower_offline()

__version__ = "0.1.0"

__all__ = [
    "BadInputError",
    "BudgetExhausted",
    "CohortError",
    "ConfigError",
    "ProtocolAbort",
    "VerificationError",
    "__version__",
]
