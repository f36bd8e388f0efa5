"""The seam between round steps and secure modes: one owner side and one coordinator side
per mode, behind two small interfaces.

A round's steps (:func:`cohort.federation.hospital.train` at a data owner,
:meth:`cohort.federation.coordinator.Coordinator.play_round` at the coordinator) never branch
on the mode: they call the study's :class:`OwnerMode` or :class:`CoordinatorMode`, chosen by
:func:`cohort.federation.modes.owner_mode` / :func:`~cohort.federation.modes.coordinator_mode`
from the approved manifest (never from a message). The committee member's side of each mode
lives in :mod:`cohort.aggregator.modes`. Every mode passes the same contract tests
(``tests/federation/test_federation_modes.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from flwr.app import Message, RecordDict

from cohort.errors import BadInputError, CohortError
from cohort.federation import wire
from cohort.federation.manifest import Manifest, SecureMode, SignedManifest

if TYPE_CHECKING:
    from cohort.aggregator.committee import Committee
    from cohort.bounties.study import StudyContract
    from cohort.crypto.identity import Identity
    from cohort.federation.coordinator import StudyOutcome
    from cohort.federation.hospital import HospitalSettings
    from cohort.federation.owner_net import MemberProbe


# ------------------------------------------------------------------------ owner side


@dataclass(frozen=True, repr=False)
class Delivery:
    """What a data owner's mode did with one round's weighted update.

    ``status`` is "ok" or "failed" (with ``reason``). ``delivered``/``receipts`` name the
    members that took an upload and their signed receipts, ``payload_hash`` the single
    payload (CKKS) or ``payload_hashes`` one per delivered member (MPC shares). ``update``
    is the plaintext update, only in the comparison mode ``none``. ``stored``: the receipt
    may answer a replay of the round (no update travels in it).
    """

    status: str
    reason: str = ""
    payload_hash: bytes = b""
    delivered: tuple[str, ...] = ()
    receipts: tuple[bytes, ...] = ()
    payload_hashes: tuple[bytes, ...] = ()
    update: np.ndarray | None = None
    stored: bool = True


class OwnerMode(ABC):
    """A secure mode as a data owner runs it (one instance per round at one owner)."""

    name: ClassVar[SecureMode]

    def __init__(self, settings: HospitalSettings, manifest: Manifest) -> None:
        self.settings = settings
        self.manifest = manifest

    def begin(self) -> None:  # noqa: B027 (a hook: most modes have nothing to start)
        """Start what :meth:`prepare` will wait on (the committee's liveness, say) as the
        round begins, before the owner checks and decrypts the last round's sum. Run by the
        data owner once the round's own terms are checked. Default: nothing."""

    def prepare(self) -> str | None:
        """Before any budget is spent: the reason to decline this round (a dead committee,
        say), or None to go on. Run by the data owner. Default: go on."""
        return None

    @abstractmethod
    def deliver(self, identity: Identity, *, round: int, update: np.ndarray) -> Delivery:
        """Protect the weighted ``update`` (float64) and send it where the mode says. Run by
        the data owner after training; never raises for a member that is down (that is a
        ``failed`` delivery), only for an update the mode cannot carry (BadInputError)."""


class CommitteeOwner(OwnerMode):
    """An owner mode that sends to the committee (CKKS, MPC): it asks for the members'
    liveness as the round begins (:meth:`begin`) and waits for it in :meth:`reachable`."""

    _probe: MemberProbe | None = None

    def begin(self) -> None:
        from cohort.federation.owner_net import MemberProbe

        self._probe = MemberProbe(self.manifest)

    def reachable(self) -> list[str]:
        """The members that answered the round's liveness probe (asked now if not begun)."""
        from cohort.federation.owner_net import MemberProbe

        probe, self._probe = self._probe or MemberProbe(self.manifest), None
        return probe.alive()


# ------------------------------------------------------------------ coordinator side


class RoundSkipped(CohortError):
    """This round releases no update (the study goes on). ``released``: how many owners'
    updates the coordinator may still have learned a sum of (client-level DP counts it)."""

    def __init__(
        self,
        reason: str,
        *,
        released: int = 0,
        faulty: Mapping[str, str] | None = None,
        rejected: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.released = released
        self.faulty = dict(faulty or {})  # member -> reason
        self.rejected = dict(rejected or {})  # owner -> validation reason


@dataclass
class Revealed:
    """A client set's sum as its owners revealed it beside the next round's training."""

    total: np.ndarray  # sum over the client set of the weighted updates (float64)
    decryptors: list[str]  # owners whose signed decryption is the agreed one
    faulty_decryptors: list[str]  # owners whose signed decryption differs
    #: Owners whose train reply carried the agreed decryption: they trained the next round
    #: from the model it gives, so only their training of that round is usable.
    trained_from: frozenset[str]


class Reveal(ABC):
    """A round's sum that the owners of its client set reveal beside the next round's
    training (:mod:`cohort.federation.reveal`): what each owner's train message carries,
    and how the coordinator checks what their replies return."""

    round: int
    client_set: list[str]

    @abstractmethod
    def attach(self, content: RecordDict, party: str) -> RecordDict:
        """Embed what ``party`` needs to reveal the sum in its train message ``content``."""

    @abstractmethod
    def conclude(self, replies: Mapping[str, RecordDict]) -> Revealed:
        """From the train replies (party -> content) to the sum; owners that did not reveal
        it are asked with the mode's own messages. RoundSkipped when it cannot be had."""

    @abstractmethod
    def reveal_now(self) -> Revealed:
        """Reveal the sum with the mode's own messages (no next round to ride with)."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """What :meth:`CoordinatorMode.restore_reveal` needs (JSON types only)."""


@dataclass
class Aggregated:
    """What the coordinator learned from one round's secure aggregation."""

    #: Sum over client_set of the weighted updates (float64); None when ``reveal`` opens it.
    total: np.ndarray | None
    client_set: list[str]
    aggregate_hash: bytes
    finalized: bool = False
    faulty: dict[str, str] = field(default_factory=dict)  # member -> reason
    decryptors: list[str] = field(default_factory=list)
    faulty_decryptors: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # owner -> validation reason
    #: How the sum is opened (``total`` is None): now, or beside the next round's training.
    reveal: Reveal | None = None


class RoundHost(Protocol):
    """The coordinator services a mode's coordinator side uses."""

    @property
    def signed(self) -> SignedManifest: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def outcome(self) -> StudyOutcome: ...

    @property
    def contract(self) -> StudyContract: ...

    @property
    def sponsor(self) -> str: ...

    def send(
        self,
        node_ids: Sequence[int],
        message_type: str,
        contents: Sequence[RecordDict],
        *,
        group: str,
    ) -> dict[int, Message]: ...

    def require_quorum(self, errors: Mapping[str, CohortError], what: str) -> None: ...

    def timed(self, phase: str) -> AbstractContextManager[None]:
        """Count the block's time towards this round's ``phase`` (committee, chain, ...)."""
        ...


class CoordinatorMode(ABC):
    """A secure mode as the coordinator runs it (one instance per study)."""

    name: ClassVar[SecureMode]

    def __init__(self, host: RoundHost, members: Committee) -> None:
        self.host = host
        self.members = members

    @property
    def manifest(self) -> Manifest:
        return self.host.manifest

    def set_up(self, owners: Mapping[int, wire.EnrollReply]) -> None:  # noqa: B027
        """After enrolment: whatever the mode needs before round 1. Default: nothing."""

    def open_round(self, rnd: int) -> list[str]:
        """Before any owner trains: the members holding round ``rnd`` open (ProtocolAbort
        when fewer than a quorum). Default: no committee, every member id."""
        return list(self.manifest.member_ids)

    def read_update(self, content: RecordDict) -> np.ndarray | None:
        """The plaintext update in an owner's train reply; None in every secure mode."""
        return None

    @abstractmethod
    def finish(
        self,
        rnd: int,
        opened: Sequence[str],
        ok: Mapping[str, wire.TrainReceipt],
        updates: Mapping[str, np.ndarray],
        party_of: Mapping[int, str],
    ) -> Aggregated:
        """From the usable receipts ``ok`` to the sum of a client set's weighted updates.
        Raises :class:`RoundSkipped` when the round cannot release one. A mode whose owners
        open the sum returns it unrevealed, with its :class:`Reveal`."""

    def restore_reveal(self, data: Mapping[str, Any], party_of: Mapping[int, str]) -> Reveal:
        """A :class:`Reveal` from its :meth:`Reveal.to_json` (a restarted coordinator's
        saved state), for the owners now enrolled as ``party_of``."""
        raise BadInputError(f"mode {self.name.value} reveals no sum after its round")
