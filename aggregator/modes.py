"""Aggregation modes: how a committee member checks and combines one secure mode's payloads.

A committee member is mode-agnostic: it authenticates envelopes, keeps one payload per data
owner and round, and hands the agreed set to an :class:`AggregationMode`. Each secure mode
has a frozen *spec* (the mode set-up the coordinator forwards in its signed Configure call)
and a mode class built from it by :func:`build_mode`. CKKS is the default; an MPC mode
(additive shares) plugs in here later with its own spec and class, and must pass the same
contract tests (``tests/aggregator/test_aggregator_modes.py``).

A CKKS set-up is *dealt* by the study's key dealer (a data owner named in the manifest): it
signs :func:`dealt_context_digest` over the public context, so a coordinator cannot hand the
committee a context of its own. The member checks that signature (:meth:`ModeSpec.verify_dealt`)
against the manifest's dealer before it accepts the set-up.
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from cohort.crypto.ckks import CkksPublicContext
from cohort.crypto.ckks import dealt_context_digest as ckks_dealt_digest
from cohort.crypto.hashing import Tag, is_digest_hex, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, ConfigError, VerificationError


def _study_bytes(study_id: str) -> bytes:
    if not is_digest_hex(study_id):
        raise BadInputError("study id must be a manifest hash (64 lower-case hex digits)")
    return bytes.fromhex(study_id)


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
    _study_bytes(study_id)
    return ckks_dealt_digest(study_id, context_fingerprint(public_context))


def sign_dealt_context(dealer: Identity, study_id: str, public_context: bytes) -> bytes:
    """The key dealer's Ed25519 signature over :func:`dealt_context_digest`. Run by the dealer."""
    return dealer.sign(dealt_context_digest(study_id, public_context))


class AggregationMode(ABC):
    """Checks and combines the payloads of one secure mode. Run by committee members."""

    name: ClassVar[str]

    @abstractmethod
    def check(self, payload: bytes, *, length: int) -> None:
        """Raise :class:`BadInputError` unless ``payload`` is a well-formed update of
        ``length`` values for this study. Run by a committee member on every upload."""

    def accept(self, payload: bytes, *, length: int, round: int, key: bytes) -> None:
        """:meth:`check` ``payload`` and keep what :meth:`combine_kept` needs under ``key``
        (the upload's verified payload hash) for ``round``. Run by a committee member on
        every upload it accepts. The default keeps nothing."""
        self.check(payload, length=length)

    def combine_kept(
        self, round: int, keys: Sequence[bytes], load: Callable[[int], bytes]
    ) -> bytes:
        """:meth:`combine` of the payloads accepted under ``keys`` (canonical order) in
        ``round``; ``load(i)`` returns payload ``i`` for whatever is not kept (after a
        restart, say). Afterwards nothing kept for rounds up to ``round`` remains. Run by a
        committee member at aggregation. The default loads every payload."""
        return self.combine(load(i) for i in range(len(keys)))

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
        self._kept = kept

    @property
    def context(self) -> CkksPublicContext:
        return self._context

    def check(self, payload: bytes, *, length: int) -> None:
        self._context.check(payload, length=length)

    def accept(self, payload: bytes, *, length: int, round: int, key: bytes) -> None:
        decoded = self._context.decode(payload, length=length)
        if self._kept is None:
            return
        self._kept.mkdir(parents=True, exist_ok=True)
        coeffs = decoded.coeffs
        header = KEPT_MAGIC + decoded.length.to_bytes(8, "big") + coeffs.shape[0].to_bytes(4, "big")
        fd, tmp = tempfile.mkstemp(dir=self._kept, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header + bytes(4))
                coeffs.astype("<u8", copy=False).tofile(f)
            os.replace(tmp, self._path(round, key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _path(self, round: int, key: bytes) -> Path:
        assert self._kept is not None
        return self._kept / f"{round:010d}-{key.hex()}.coef"

    def _read(self, round: int, key: bytes) -> tuple[int, np.ndarray] | None:
        if self._kept is None:
            return None
        path = self._path(round, key)
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
        self, round: int, keys: Sequence[bytes], load: Callable[[int], bytes]
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
        if self._kept is None or not self._kept.is_dir():
            return
        for path in self._kept.iterdir():
            stem = path.name.split("-", 1)[0]
            if path.suffix in (".coef", ".tmp") and (not stem.isdigit() or int(stem) <= round):
                path.unlink(missing_ok=True)

    def combine(self, payloads: Iterable[bytes]) -> bytes:
        """Stream ``payloads`` into one running sum (the size of one ciphertext)."""
        acc = self._context.accumulator()
        for payload in payloads:
            acc.add(payload)
        if acc.count == 0:
            raise BadInputError("ckks: nothing to combine (empty client set)")
        return acc.finish()


SUPPORTED_MODES: tuple[str, ...] = (CkksMode.name,)


def build_mode(spec: ModeSpec, *, kept: Path | None = None) -> AggregationMode:
    """Build the mode a study asks for. Run by a committee member at configuration;
    ``kept`` is a folder of the member's own for what the mode keeps between acceptance and
    aggregation (see :class:`CkksMode`).

    Raises :class:`BadInputError` for a CKKS context that is malformed or holds a secret
    key, :class:`ConfigError` for an unknown spec.
    """
    if isinstance(spec, CkksSpec):
        context = CkksPublicContext.from_bytes(spec.public_context)
        if context.to_bytes() != spec.public_context:
            raise BadInputError("ckks: public context is not in canonical form")
        return CkksMode(context, kept)
    raise ConfigError(f"secure mode: unsupported spec {type(spec).__name__}")
