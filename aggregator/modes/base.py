"""Aggregation modes, member side: how a committee member checks and combines one secure
mode's payloads (the interfaces; one module per mode beside this one).

A committee member is mode-agnostic: it authenticates envelopes, keeps one payload per data
owner and round, and hands the agreed set to an :class:`AggregationMode`. Each secure mode
has a frozen *spec* (the mode set-up the coordinator forwards in its signed Configure call)
and a mode class built from it by :func:`cohort.aggregator.modes.build_mode`. Every mode
passes the same contract tests (``tests/aggregator/test_aggregator_modes.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from cohort.crypto.hashing import is_digest_hex
from cohort.crypto.identity import PublicIdentity
from cohort.errors import BadInputError


@dataclass(frozen=True)
class OpenedSum:
    """What a set of partial results opens to: the aggregate (the mode's bytes) and the
    members whose partials do not lie on it."""

    aggregate: bytes
    wrong: tuple[str, ...] = ()


def study_bytes(study_id: str) -> bytes:
    if not is_digest_hex(study_id):
        raise BadInputError("study id must be a manifest hash (64 lower-case hex digits)")
    return bytes.fromhex(study_id)


class AggregationMode(ABC):
    """Checks and combines the payloads of one secure mode. Run by committee members."""

    name: ClassVar[str]
    #: True when :meth:`combine_kept` returns this member's *partial* result (MPC: its share
    #: of the sum), which is signed as a partial and opened by :meth:`open_partials`, not
    #: attested as the aggregate itself.
    partial: ClassVar[bool] = False

    @abstractmethod
    def check(self, payload: bytes, *, length: int) -> None:
        """Raise :class:`BadInputError` unless ``payload`` is a well-formed update of
        ``length`` values for this study. Run by a committee member on every upload."""

    def accept(
        self, payload: bytes, *, length: int, round: int, key: bytes, sender: str = ""
    ) -> None:
        """:meth:`check` ``payload`` and keep what :meth:`combine_kept` needs under ``key``
        (the upload's verified payload hash) for ``round``; ``sender`` is the data owner it
        came from. Run by a committee member on every upload it accepts. The default keeps
        nothing."""
        self.check(payload, length=length)

    def combine_kept(
        self,
        round: int,
        keys: Sequence[bytes],
        load: Callable[[int], bytes],
        *,
        senders: Sequence[str] = (),
    ) -> bytes:
        """:meth:`combine` of the payloads accepted under ``keys`` (canonical order) in
        ``round`` from ``senders`` (same order); ``load(i)`` returns payload ``i`` for
        whatever is not kept (after a restart, say). Afterwards nothing kept for rounds up to
        ``round`` remains. Run by a committee member at aggregation. The default loads every
        payload."""
        return self.combine(load(i) for i in range(len(keys)))

    def open_partials(self, partials: Mapping[str, bytes], *, length: int) -> OpenedSum:
        """The aggregate behind the members' signed ``partials`` (member id -> partial) and
        the members whose partial is off it. Only for modes with :attr:`partial` results.
        Run by every confirming member and by the coordinator."""
        raise BadInputError(f"{self.name}: results are not partial")

    @abstractmethod
    def combine(self, payloads: Iterable[bytes]) -> bytes:
        """Combine checked payloads, given in canonical (sorted sender) order.

        ``payloads`` may be a stream (the member reads them from its store one at a time):
        a mode consumes it once and should hold no more than one payload at a time, so a
        member's memory does not grow with the number of data owners.

        Deterministic: the same payloads in the same order give the same bytes, so honest
        members agree on one aggregate hash. Run by a committee member at aggregation.
        """


@dataclass(frozen=True)
class ModeSpec(ABC):
    """Base of the per-mode set-up the coordinator forwards at configuration."""

    name: ClassVar[str]

    @abstractmethod
    def setup_digest(self) -> bytes:
        """32 bytes naming the set-up: two Configure calls with the same digest are the same
        set-up (a retry), different digests a conflicting one."""

    @abstractmethod
    def verify_dealt(self, study_id: str, dealer: PublicIdentity | None) -> None:
        """VerificationError unless the study's dealer vouched for this set-up. Run by a
        committee member at Configure, before it builds the mode."""
