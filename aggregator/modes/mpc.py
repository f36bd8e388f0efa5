"""MPC mode, member side: keep this member's Shamir share of each update, sum the shares of
the agreed client set into a signed *partial*, and open the sum from the members' partials.

Each data owner deals one share per member (:mod:`cohort.crypto.shamir` over the field of
:mod:`cohort.crypto.fixed_point`), sealed to that member alone; ``t - 1`` of them travel as
32-byte seeds (:mod:`cohort.crypto.prg`, domain-separated per study, round, member and
owner). A member only ever sees its own share: fewer than ``t`` members learn nothing of an
update. Nothing here is chosen by the coordinator: the field, threshold, committee order and
norm bound are the approved manifest's (:class:`MpcSpec` only carries their digest).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from cohort.aggregator.modes.base import AggregationMode, ModeSpec, OpenedSum
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import PublicIdentity
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import (
    InconsistentShares,
    ShamirScheme,
    reduce_mod,
    robust_reconstruct,
)
from cohort.crypto.share_payload import SharePayload, pack_field, unpack_field
from cohort.errors import BadInputError, VerificationError


def terms_digest(
    *, prime: int, frac_bits: int, norm_bound: float, members: Sequence[str], threshold: int
) -> bytes:
    """32 bytes naming a study's MPC terms (field, scale, bound, committee order, t)."""
    body = json.dumps(
        {
            "prime": prime,
            "frac_bits": frac_bits,
            "norm_bound": norm_bound,
            "members": list(members),
            "threshold": threshold,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return tagged_hash(Tag.MPC_TERMS, body.encode("utf-8"))


@dataclass(frozen=True)
class MpcSpec(ModeSpec):
    """MPC set-up as forwarded at Configure: only the digest of the manifest's terms, which
    the member recomputes from the manifest it approved (a mismatch is refused)."""

    terms: bytes

    name: ClassVar[str] = "mpc"

    def setup_digest(self) -> bytes:
        return self.terms

    def verify_dealt(self, study_id: str, dealer: PublicIdentity | None) -> None:
        """Nothing is dealt in MPC mode: every owner shares with fresh randomness."""


@dataclass
class _RunningSum:
    """What one round's acceptances have added up: the sum in uint32 (reduced mod p once
    ``pending`` additions more could overflow it) and the payload hash of each sender's
    share in it."""

    total: NDArray[np.uint32]
    keys: dict[str, bytes] = field(default_factory=dict)
    pending: int = 0


def lazy_adds_u32(prime: int) -> int:
    """How many values below ``prime`` may be added in uint32 to a reduced total before a
    reduction is due: ``(m + 1) * (prime - 1) <= 2^32 - 1`` (511 for the default prime)."""
    return (2**32 - 1) // (prime - 1) - 1


class MpcMode(AggregationMode):
    """Shares of one member (``index`` in the committee order) of a study's MPC terms.

    Each accepted share is added to its round's running sum as it arrives, so aggregating
    the usual client set (every share accepted) is one reduction, and memory is one vector
    per open round whatever the number of owners. Any other client set (an owner dropped
    by the norm check, a member restarted) is summed share by share from the stored
    uploads."""

    name: ClassVar[str] = "mpc"
    partial: ClassVar[bool] = True

    def __init__(
        self,
        *,
        study_id: str,
        members: Sequence[str],
        member_id: str,
        scheme: ShamirScheme,
    ) -> None:
        if member_id not in members:
            raise BadInputError(f"mpc: {member_id!r} is not in the committee")
        self._study_id = study_id
        self._members = tuple(members)
        self._member_id = member_id
        self.index = self._members.index(member_id)
        self.scheme = scheme
        self._sums: dict[int, _RunningSum] = {}
        self._lock = threading.Lock()

    def parse(self, payload: bytes, *, length: int | None, narrow: bool = False) -> SharePayload:
        """The share in ``payload``, checked against this study and member (and ``length``
        values, unless None); ``narrow``: its values as uint32 (``SharePayload.from_bytes``)."""
        share = SharePayload.from_bytes(payload, length=length, narrow=narrow)
        self._check(share)
        return share

    def _check(self, share: SharePayload) -> None:
        if share.scheme != self.scheme:
            raise BadInputError(
                f"mpc: share for k={share.scheme.members}, t={share.scheme.threshold}, "
                f"p={share.scheme.prime}; the study uses k={self.scheme.members}, "
                f"t={self.scheme.threshold}, p={self.scheme.prime}"
            )
        if share.share.index != self.index:
            raise BadInputError(
                f"mpc: share is member {share.share.index}'s, this member is {self.index}"
            )

    def check(self, payload: bytes, *, length: int) -> None:
        self.parse(payload, length=length)

    def values(
        self, payload: bytes, *, length: int | None, round: int, sender: str
    ) -> NDArray[np.int64]:
        """The field values of ``sender``'s share in ``round`` (a seed is expanded)."""
        domain = share_domain(self._study_id, round, self._member_id, sender)
        return self.parse(payload, length=length).values(domain=domain)

    def accept(
        self, payload: bytes, *, length: int, round: int, key: bytes, sender: str = ""
    ) -> None:
        """Check the share and add its values (a seed expanded) to ``round``'s running sum.
        Only a sender's first share counts there; whether the member's store kept that same
        share is checked when the round is summed (:meth:`combine_kept`)."""
        share = self.parse(payload, length=length, narrow=True)
        if not sender:
            return
        domain = share_domain(self._study_id, round, self._member_id, sender)
        values = share.narrow_values(domain=domain)
        p = self.scheme.prime
        with self._lock:
            running = self._sums.get(round)
            if running is None:
                running = self._sums[round] = _RunningSum(np.zeros(length, dtype=np.uint32))
            if sender in running.keys or running.total.size != length:
                return
            if running.pending >= lazy_adds_u32(p):
                reduce_mod(running.total, p)
                running.pending = 0
            np.add(running.total, values, out=running.total)
            running.pending += 1
            running.keys[sender] = key

    def share_values(
        self, round: int, load: Callable[[], bytes], *, sender: str
    ) -> NDArray[np.int64]:
        """The field values of ``sender``'s accepted share in ``round``, parsed from its
        stored upload ``load()``. Run by a member at the norm check."""
        return self.values(load(), length=None, round=round, sender=sender)

    def release(self, round: int) -> None:
        """Forget the running sums of rounds up to ``round``. Run by a committee member."""
        with self._lock:
            for number in [n for n in self._sums if n <= round]:
                del self._sums[number]

    def combine_kept(
        self,
        round: int,
        keys: Sequence[bytes],
        load: Callable[[int], bytes],
        *,
        senders: Sequence[str] = (),
    ) -> bytes:
        """This member's partial: the sum mod p of its shares from ``senders``, packed.
        The running sum when it holds exactly those shares (``keys``: their payload
        hashes); otherwise each share parsed from its upload ``load(i)``, one at a time."""
        if not senders or len(senders) != len(keys):
            raise BadInputError("mpc: combining needs the sender of every share")
        p = self.scheme.prime
        with self._lock:
            running = self._sums.get(round)
            wanted = dict(zip(senders, keys, strict=True))
            held = running is not None and running.keys == wanted
            fast = running.total.copy() if running is not None and held else None
        if fast is not None:
            return self._finish(round, reduce_mod(fast, p))
        total: NDArray[np.int64] | None = None
        for i, sender in enumerate(senders):
            values = self.share_values(round, functools.partial(load, i), sender=sender)
            if total is not None and values.size != total.size:
                raise BadInputError(f"mpc: the share of {sender!r} has another length")
            total = values.copy() if total is None else np.add(total, values, out=total)
        assert total is not None
        return self._finish(round, reduce_mod(total, p))

    def _finish(self, round: int, partial: NDArray[np.integer[Any]]) -> bytes:
        self.release(round)
        return pack_field(partial, self.scheme.prime)

    def combine(self, payloads: Iterable[bytes]) -> bytes:
        raise BadInputError("mpc: shares are combined with their senders (combine_kept)")

    def open_partials(self, partials: Mapping[str, bytes], *, length: int) -> OpenedSum:
        """Reconstruct the field sum from ``partials`` (member id -> packed partial).

        With more than ``t`` partials they are checked against each other: wrong ones are
        located (and returned) when ``n >= t + 2e``; otherwise the disagreement raises
        :class:`VerificationError` naming the members that could be wrong.
        """
        points: dict[int, NDArray[np.int64]] = {}
        for member_id, data in partials.items():
            if member_id not in self._members:
                raise VerificationError(f"mpc: partial from {member_id!r}, not a member")
            points[self._members.index(member_id)] = unpack_field(data, length, self.scheme.prime)
        try:
            secret, wrong = robust_reconstruct(points, self.scheme)
        except InconsistentShares as exc:
            names = ", ".join(self._members[i] for i in exc.indices) or "unknown"
            raise VerificationError(
                f"mpc: the partials are inconsistent and the wrong one cannot be located "
                f"(one of: {names})"
            ) from None
        return OpenedSum(
            pack_field(secret, self.scheme.prime), tuple(self._members[i] for i in wrong)
        )
