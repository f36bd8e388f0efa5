"""Comparison mode ``none``, data owner side: the quantised update goes to the coordinator
in plaintext, only where the owner's local policy accepts the mode (it refuses by default)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from cohort.crypto.ckks import DEFAULT_PARAMS
from cohort.crypto.encoding import quantize
from cohort.crypto.identity import Identity
from cohort.federation.manifest import SecureMode
from cohort.federation.modes.base import Delivery, OwnerMode


class PlainOwner(OwnerMode):
    name: ClassVar[SecureMode] = SecureMode.NONE

    def deliver(self, identity: Identity, *, round: int, update: np.ndarray) -> Delivery:
        """Round to the release grid, so ``none`` releases the same sums as the secure modes.
        Grid values below max_abs need 22 significant bits: float32 carries them exactly."""
        weighted = quantize(update, grid=DEFAULT_PARAMS.release_grid).astype(np.float32)
        return Delivery("ok", update=weighted, stored=False)
