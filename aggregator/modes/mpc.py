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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from cohort.aggregator.modes.base import AggregationMode, ModeSpec, OpenedSum
from cohort.aggregator.modes.kept import KeptFiles
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import PublicIdentity
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import InconsistentShares, ShamirScheme, robust_reconstruct
from cohort.crypto.share_payload import SharePayload, pack_field, unpack_field
from cohort.errors import BadInputError, VerificationError

KEPT_SHARE_MAGIC = b"CHKS"  # a kept share: magic | u64 value count | int32 LE values


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


class MpcMode(AggregationMode):
    """Shares of one member (``index`` in the committee order) of a study's MPC terms."""

    name: ClassVar[str] = "mpc"
    partial: ClassVar[bool] = True

    def __init__(
        self,
        *,
        study_id: str,
        members: Sequence[str],
        member_id: str,
        scheme: ShamirScheme,
        kept: Path | None = None,
    ) -> None:
        if member_id not in members:
            raise BadInputError(f"mpc: {member_id!r} is not in the committee")
        self._study_id = study_id
        self._members = tuple(members)
        self._member_id = member_id
        self.index = self._members.index(member_id)
        self.scheme = scheme
        self._kept = None if kept is None else KeptFiles(kept, ".shr")

    def parse(self, payload: bytes, *, length: int) -> SharePayload:
        """The share in ``payload``, checked against this study and member."""
        share = SharePayload.from_bytes(payload, length=length)
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

    def values(self, payload: bytes, *, length: int, round: int, sender: str) -> NDArray[np.int64]:
        """The field values of ``sender``'s share in ``round`` (a seed is expanded)."""
        domain = share_domain(self._study_id, round, self._member_id, sender)
        return self.parse(payload, length=length).values(domain=domain)

    def accept(
        self, payload: bytes, *, length: int, round: int, key: bytes, sender: str = ""
    ) -> None:
        """Check the share and, with a ``kept`` folder, keep its values (a seed expanded)
        as ``kept/<round>-<key hex>.shr``, int32 little-endian: summing them later reads
        each file once instead of parsing and expanding every share again."""
        share = self.parse(payload, length=length)
        if self._kept is None or not sender:
            return
        values = share.values(domain=share_domain(self._study_id, round, self._member_id, sender))
        header = KEPT_SHARE_MAGIC + length.to_bytes(8, "big")
        self._kept.write(round, key, header, values.astype("<i4"))

    def _read(self, round: int, key: bytes) -> NDArray[np.int64] | None:
        """A kept share (its values as accepted), or None when missing or damaged."""
        if self._kept is None:
            return None
        try:
            with self._kept.path(round, key).open("rb") as f:
                header = f.read(12)
                values = np.fromfile(f, dtype="<i4")
        except OSError:
            return None
        if header[:4] != KEPT_SHARE_MAGIC or int.from_bytes(header[4:], "big") != values.size:
            return None
        if values.size and (int(values.min()) < 0 or int(values.max()) >= self.scheme.prime):
            return None
        return values.astype(np.int64)

    def kept_values(
        self, round: int, key: bytes, load: Callable[[], bytes], *, sender: str
    ) -> NDArray[np.int64]:
        """The field values of ``sender``'s accepted share in ``round``: from its kept file,
        or (none kept, after a restart, say) parsed from the stored upload ``load()``."""
        values = self._read(round, key)
        if values is not None:
            return values
        share = SharePayload.from_bytes(load())
        self._check(share)
        return share.values(domain=share_domain(self._study_id, round, self._member_id, sender))

    def release(self, round: int) -> None:
        """Remove the kept shares of rounds up to ``round``. Run by a committee member."""
        if self._kept is not None:
            self._kept.release(round)

    def combine_kept(
        self,
        round: int,
        keys: Sequence[bytes],
        load: Callable[[int], bytes],
        *,
        senders: Sequence[str] = (),
    ) -> bytes:
        """This member's partial: the sum mod p of its shares from ``senders``, packed.
        Kept shares are read from their files; any other is parsed from its upload."""
        if not senders or len(senders) != len(keys):
            raise BadInputError("mpc: combining needs the sender of every share")
        p = self.scheme.prime
        total: NDArray[np.int64] | None = None
        for i, (key, sender) in enumerate(zip(keys, senders, strict=True)):
            values = self.kept_values(round, key, functools.partial(load, i), sender=sender)
            if total is not None and values.size != total.size:
                raise BadInputError(f"mpc: the share of {sender!r} has another length")
            # values < p < 2^31: int64 holds the running sum of 2^32 of them, reduce once
            total = values.copy() if total is None else np.add(total, values, out=total)
        assert total is not None
        self.release(round)
        return pack_field(total % p, p)

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
