"""MPC mode's signed records between the committee and the coordinator: a member's signed
partial sum and its signed validation verdict, and the digests they sign.

Run by committee members (sign) and by the coordinator and the other members (verify). The
partial digest carries its own tag, so a partial can never pass for a signed aggregate.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cohort.aggregator.modes.mpc import terms_digest
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import PublicIdentity, verify_signature
from cohort.errors import ConfigError
from cohort.federation.manifest import Manifest


def mpc_terms_digest(manifest: Manifest) -> bytes:
    """:func:`~cohort.aggregator.modes.mpc.terms_digest` of an MPC manifest's terms. Run by
    the coordinator (its Configure set-up) and by each member (to check it)."""
    if manifest.mpc is None:
        raise ConfigError("manifest: not an MPC study")
    return terms_digest(
        prime=manifest.mpc.prime,
        frac_bits=manifest.mpc.frac_bits,
        norm_bound=manifest.mpc.norm_bound,
        members=manifest.member_ids,
        threshold=manifest.quorum,
    )


def partial_digest(
    *, study_id: str, round: int, member_id: str, client_ids: Sequence[str], partial_hash: bytes
) -> bytes:
    """What a member signs over its partial sum of ``client_ids``' shares in ``round``."""
    return tagged_hash(
        Tag.MPC_PARTIAL,
        bytes.fromhex(study_id),
        struct.pack(">Q", round),
        member_id.encode("utf-8"),
        client_set_hash(tuple(client_ids)),
        partial_hash,
    )


def validation_digest(
    *,
    study_id: str,
    round: int,
    member_id: str,
    participants: Sequence[str],
    accepted: Sequence[str],
    rejected: Sequence[str],
) -> bytes:
    """What a member signs over the bits its norm check opened."""
    return tagged_hash(
        Tag.MPC_VALIDATION,
        bytes.fromhex(study_id),
        struct.pack(">Q", round),
        member_id.encode("utf-8"),
        client_set_hash(tuple(participants)),
        client_set_hash(tuple(accepted)),
        client_set_hash(tuple(rejected)),
    )


@dataclass(frozen=True)
class ValidationVerdict:
    """One participant's signed outcome of a norm check: who passed, who did not."""

    member_id: str
    study_id: str
    round: int
    participants: tuple[str, ...]
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]
    signature: bytes

    def verify(self, identity: PublicIdentity) -> None:
        """VerificationError unless ``identity`` (the member's manifest key) signed it."""
        verify_signature(
            identity,
            validation_digest(
                study_id=self.study_id,
                round=self.round,
                member_id=self.member_id,
                participants=self.participants,
                accepted=self.accepted,
                rejected=self.rejected,
            ),
            self.signature,
        )
