"""Constants and types shared by the committee tests (imported by conftest and tests;
tests never import conftest itself, whose module name other test folders share)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cohort.crypto.identity import Identity

STUDY = "study-2025-breast-cancer"
LENGTH = 12
CHAIN_ID = 31337
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OWNER_IDS = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
MEMBER_IDS = ("member-1", "member-2", "member-3")


@dataclass(frozen=True)
class Owner:
    """A data owner as the tests play it: identity, payout address, its update."""

    identity: Identity
    payout: str
    vector: np.ndarray

    @property
    def party_id(self) -> str:
        return self.identity.party_id


SealFn = Callable[..., bytes]
"""seal(owner_id, member_info, *, round=1, vector=None, study_id=STUDY) -> envelope bytes"""
