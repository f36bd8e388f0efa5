"""The DP-SGD configuration every data owner derives from a study manifest.

One function, so the hospital that trains, the auditor that re-checks the calibration and the
empirical audit all build the same :class:`~cohort.clients.training.DpConfig` from the same
manifest terms.
"""

from __future__ import annotations

from cohort.clients.training import DpConfig
from cohort.federation.manifest import Manifest


def dp_config(manifest: Manifest) -> DpConfig:
    """The manifest's DP terms over its rounds: noise calibrated so that all ``rounds``
    together spend ``dp.epsilon`` at ``dp.delta``."""
    dp = manifest.dp
    return DpConfig(
        target_epsilon=dp.epsilon,
        total_rounds=manifest.rounds,
        local_epochs=dp.local_epochs,
        batch_size=dp.batch_size,
        max_grad_norm=dp.max_grad_norm,
        delta=dp.delta,
        lr=dp.lr,
    )
