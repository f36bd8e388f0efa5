"""Comparison mode ``none``, coordinator side: sum the plaintext updates it was sent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from flwr.app import RecordDict

from cohort.crypto.hashing import Tag, tagged_hash
from cohort.federation import wire
from cohort.federation.manifest import SecureMode
from cohort.federation.modes.base import Aggregated, CoordinatorMode, RoundSkipped


class PlainCoordinator(CoordinatorMode):
    name: ClassVar[SecureMode] = SecureMode.NONE

    def read_update(self, content: RecordDict) -> np.ndarray | None:
        return wire.get_vector(content, message=wire.TRAIN, length=self.manifest.update_length)

    def finish(
        self,
        rnd: int,
        opened: Sequence[str],
        ok: Mapping[str, wire.TrainReceipt],
        updates: Mapping[str, np.ndarray],
        party_of: Mapping[int, str],
    ) -> Aggregated:
        client_set = sorted(p for p in ok if p in updates)
        if len(client_set) < self.manifest.min_clients:
            raise RoundSkipped(
                f"{len(client_set)} plaintext updates, at least {self.manifest.min_clients} needed"
            )
        total = np.sum([updates[p].astype(np.float64) for p in client_set], axis=0)
        return Aggregated(total, client_set, tagged_hash(Tag.AGGREGATE, total.tobytes()))
