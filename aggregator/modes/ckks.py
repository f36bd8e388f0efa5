"""CKKS mode, member side: the homomorphic sum of CKKS ciphertexts under the study's public
context (no secret key), parsed once at acceptance and summed over the raw coefficients.

A CKKS set-up is *dealt* by the study's key dealer (a data owner named in the manifest): it
signs :func:`dealt_context_digest` over the public context, so a coordinator cannot hand the
committee a context of its own. The member checks that signature (:meth:`CkksSpec.verify_dealt`)
against the manifest's dealer before it accepts the set-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cohort.aggregator.modes.base import AggregationMode, ModeSpec, study_bytes
from cohort.aggregator.modes.kept import KeptFiles
from cohort.crypto.ckks import CkksPublicContext
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


KEPT_MAGIC = b"CHKD"  # a kept upload: magic | u64 value count | u32 chunks | 4 zero bytes


class CkksMode(AggregationMode):
    """Homomorphic sum of CKKS ciphertexts under one public context (no secret key).

    With a ``kept`` folder, :meth:`accept` parses each upload once and writes its
    coefficients (seeds expanded) to ``kept/<round>-<key hex>.coef``; :meth:`combine_kept`
    sums those files with numpy instead of parsing the uploads again, and removes the
    files of rounds up to the one it combined. The files are the member's own (written
    atomically, size-checked on reading); one that is missing or of the wrong size is
    replaced by parsing the stored upload, so a restart loses nothing.
    """

    name: ClassVar[str] = "ckks"

    def __init__(self, context: CkksPublicContext, kept: Path | None = None) -> None:
        self._context = context
        self._kept = None if kept is None else KeptFiles(kept, ".coef")

    @property
    def context(self) -> CkksPublicContext:
        return self._context

    def check(self, payload: bytes, *, length: int) -> None:
        self._context.check(payload, length=length)

    def accept(
        self, payload: bytes, *, length: int, round: int, key: bytes, sender: str = ""
    ) -> None:
        decoded = self._context.decode(payload, length=length)
        if self._kept is None:
            return
        coeffs = decoded.coeffs
        header = KEPT_MAGIC + decoded.length.to_bytes(8, "big") + coeffs.shape[0].to_bytes(4, "big")
        self._kept.write(round, key, header + bytes(4), coeffs.astype("<u8", copy=False))

    def _read(self, round: int, key: bytes) -> tuple[int, np.ndarray] | None:
        if self._kept is None:
            return None
        path = self._kept.path(round, key)
        try:
            with path.open("rb") as f:
                header = f.read(20)
                if len(header) != 20 or header[:4] != KEPT_MAGIC:
                    return None
                length = int.from_bytes(header[4:12], "big")
                layout = self._context._layout
                shape = (
                    int.from_bytes(header[12:16], "big"),
                    2,
                    len(layout.primes),
                    layout.poly_modulus_degree,
                )
                coeffs = np.fromfile(f, dtype="<u8")
        except OSError:
            return None
        if coeffs.size != int(np.prod(shape)):
            return None
        return length, coeffs.reshape(shape)

    def combine_kept(
        self,
        round: int,
        keys: Sequence[bytes],
        load: Callable[[int], bytes],
        *,
        senders: Sequence[str] = (),
    ) -> bytes:
        acc = self._context.accumulator()
        for i, key in enumerate(keys):
            kept = self._read(round, key)
            if kept is None:
                acc.add(load(i))
            else:
                acc.add_decoded(kept[1], kept[0])
            del kept
        if acc.count == 0:
            raise BadInputError("ckks: nothing to combine (empty client set)")
        result = acc.finish()
        self.release(round)
        return result

    def release(self, round: int) -> None:
        """Remove the kept files of rounds up to ``round``. Run by a committee member."""
        if self._kept is not None:
            self._kept.release(round)

    def combine(self, payloads: Iterable[bytes]) -> bytes:
        """Stream ``payloads`` into one running sum (the size of one ciphertext)."""
        acc = self._context.accumulator()
        for payload in payloads:
            acc.add(payload)
        if acc.count == 0:
            raise BadInputError("ckks: nothing to combine (empty client set)")
        return acc.finish()
