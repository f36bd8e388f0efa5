"""CKKS mode, member side: the homomorphic sum of CKKS ciphertexts under the study's public
context (no secret key), parsed once at acceptance and summed over the raw coefficients.

A CKKS set-up is *dealt* by the study's key dealer (a data owner named in the manifest): it
signs :func:`dealt_context_digest` over the public context, so a coordinator cannot hand the
committee a context of its own. The member checks that signature (:meth:`CkksSpec.verify_dealt`)
against the manifest's dealer before it accepts the set-up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from cohort.aggregator.modes.base import AggregationMode, ModeSpec, study_bytes
from cohort.crypto.ckks import CkksPublicContext, CkksSum
from cohort.crypto.ckks import dealt_context_digest as ckks_dealt_digest
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, VerificationError


def context_fingerprint(public_context: bytes) -> bytes:
    """``tagged_hash(Tag.CKKS_CONTEXT, public_context)``: the same 32 bytes as
    :meth:`CkksPublicContext.fingerprint` of that (canonical) context, computed without
    loading it."""
    if not isinstance(public_context, bytes) or not public_context:
        raise BadInputError("ckks: public context must be non-empty bytes")
    return tagged_hash(Tag.CKKS_CONTEXT, public_context)


def dealt_context_digest(study_id: str, public_context: bytes) -> bytes:
    """What the key dealer signs for a study's CKKS context:
    :func:`cohort.crypto.ckks.dealt_context_digest` of its :func:`context_fingerprint`.

    Run by the key dealer (a data owner) when it deals the context, and by every committee
    member at Configure.
    """
    study_bytes(study_id)
    return ckks_dealt_digest(study_id, context_fingerprint(public_context))


def sign_dealt_context(dealer: Identity, study_id: str, public_context: bytes) -> bytes:
    """The key dealer's Ed25519 signature over :func:`dealt_context_digest`. Run by the dealer."""
    return dealer.sign(dealt_context_digest(study_id, public_context))


@dataclass(frozen=True)
class CkksSpec(ModeSpec):
    """CKKS set-up: the data owners' public TenSEAL context and the key dealer's signature
    over :func:`dealt_context_digest` of it."""

    public_context: bytes
    dealer_signature: bytes = b""

    name: ClassVar[str] = "ckks"

    def __repr__(self) -> str:
        return (
            f"CkksSpec(public_context=<{len(self.public_context)} bytes>, "
            f"dealer_signature=<{len(self.dealer_signature)} bytes>)"
        )

    def setup_digest(self) -> bytes:
        return context_fingerprint(self.public_context)

    def verify_dealt(self, study_id: str, dealer: PublicIdentity | None) -> None:
        if dealer is None:
            raise VerificationError("ckks: the manifest names no key dealer among its owners")
        digest = dealt_context_digest(study_id, self.public_context)
        try:
            verify_signature(dealer, digest, self.dealer_signature)
        except VerificationError:
            raise VerificationError(
                f"ckks: the context is not signed by the study's key dealer {dealer.party_id!r}"
            ) from None


@dataclass
class _RunningSum:
    """What one round's acceptances have added up: the homomorphic sum so far and the
    payload hash of each sender's upload in it."""

    total: CkksSum
    length: int
    keys: dict[str, bytes] = field(default_factory=dict)


class CkksMode(AggregationMode):
    """Homomorphic sum of CKKS ciphertexts under one public context (no secret key).

    :meth:`accept` parses and checks each upload once and adds its coefficients (seeds
    expanded) to its round's running sum, so aggregating the usual client set (every
    upload accepted) only finishes that sum, and memory is one ciphertext set per open
    round whatever the number of hospitals. Only a sender's first upload counts there. Any
    other client set, or payload hashes other than the store kept (a member restarted
    mid-round, a copy replaced), is summed upload by upload from the member's store.
    """

    name: ClassVar[str] = "ckks"

    def __init__(self, context: CkksPublicContext) -> None:
        self._context = context
        self._sums: dict[int, _RunningSum] = {}
        self._lock = threading.Lock()

    @property
    def context(self) -> CkksPublicContext:
        return self._context

    def check(self, payload: bytes, *, length: int) -> None:
        self._context.check(payload, length=length)

    def accept(
        self, payload: bytes, *, length: int, round: int, key: bytes, sender: str = ""
    ) -> None:
        """Check the upload and add it to ``round``'s running sum (its first from
        ``sender``); whether the store kept that same upload is checked when the round is
        summed (:meth:`combine_kept`)."""
        decoded = self._context.decode(payload, length=length)
        if not sender:
            return
        with self._lock:
            running = self._sums.get(round)
            if running is None:
                running = self._sums[round] = _RunningSum(self._context.accumulator(), length)
            if sender in running.keys or running.length != length:
                return
            running.total.add_decoded(decoded.coeffs, decoded.length)
            running.keys[sender] = key

    def combine_kept(
        self,
        round: int,
        keys: Sequence[bytes],
        load: Callable[[int], bytes],
        *,
        senders: Sequence[str] = (),
    ) -> bytes:
        """The sum of the uploads from ``senders`` (payload hashes ``keys``): the running
        sum when it holds exactly those uploads, otherwise each upload ``load(i)`` parsed
        again, one at a time. Afterwards nothing is kept for rounds up to ``round``."""
        if senders and len(senders) != len(keys):
            raise BadInputError("ckks: one sender per upload to combine")
        with self._lock:
            running = self._sums.get(round)
            wanted = dict(zip(senders, keys, strict=True))
            if senders and running is not None and running.keys == wanted:
                del self._sums[round]
                result: bytes | None = running.total.finish()
            else:
                result = None
        if result is None:
            result = self.combine(load(i) for i in range(len(keys)))
        self.release(round)
        return result

    def release(self, round: int) -> None:
        """Forget the running sums of rounds up to ``round``. Run by a committee member."""
        with self._lock:
            for number in [n for n in self._sums if n <= round]:
                del self._sums[number]

    def combine(self, payloads: Iterable[bytes]) -> bytes:
        """Stream ``payloads`` into one running sum (the size of one ciphertext)."""
        acc = self._context.accumulator()
        for payload in payloads:
            acc.add(payload)
        if acc.count == 0:
            raise BadInputError("ckks: nothing to combine (empty client set)")
        return acc.finish()
