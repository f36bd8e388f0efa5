"""Aggregation modes, member side: one module per secure mode (:mod:`.ckks`, :mod:`.mpc`)
behind the interfaces of :mod:`.base`. Imports nothing above the aggregator."""

from __future__ import annotations

from cohort.aggregator.modes.base import AggregationMode, ModeSpec, OpenedSum
from cohort.aggregator.modes.ckks import (
    CkksMode,
    CkksSpec,
    context_fingerprint,
    dealt_context_digest,
    sign_dealt_context,
)
from cohort.aggregator.modes.mpc import MpcMode, MpcSpec, terms_digest
from cohort.crypto.shamir import ShamirScheme
from cohort.errors import BadInputError, ConfigError

SUPPORTED_MODES: tuple[str, ...] = (CkksMode.name, MpcMode.name)


def build_mode(
    spec: ModeSpec,
    *,
    study_id: str = "",
    members: tuple[str, ...] = (),
    member_id: str = "",
    threshold: int = 0,
    prime: int = 0,
) -> AggregationMode:
    """Build the mode a study asks for. Run by a committee member at configuration. Both
    modes keep a running sum per round in memory between acceptance and aggregation. MPC
    needs the study, the committee order, this member and the threshold and prime, all from
    the approved manifest.

    Raises :class:`BadInputError` for a CKKS context that is malformed or holds a secret
    key, :class:`ConfigError` for an unknown spec.
    """
    if isinstance(spec, CkksSpec):
        from cohort.crypto.ckks import CkksPublicContext

        context = CkksPublicContext.from_bytes(spec.public_context)
        if context.to_bytes() != spec.public_context:
            raise BadInputError("ckks: public context is not in canonical form")
        return CkksMode(context)
    if isinstance(spec, MpcSpec):
        scheme = ShamirScheme(members=len(members), threshold=threshold, prime=prime)
        return MpcMode(study_id=study_id, members=members, member_id=member_id, scheme=scheme)
    raise ConfigError(f"secure mode: unsupported spec {type(spec).__name__}")


__all__ = [
    "SUPPORTED_MODES",
    "AggregationMode",
    "CkksMode",
    "CkksSpec",
    "ModeSpec",
    "MpcMode",
    "MpcSpec",
    "OpenedSum",
    "build_mode",
    "context_fingerprint",
    "dealt_context_digest",
    "sign_dealt_context",
    "terms_digest",
]
