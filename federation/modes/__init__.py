"""Secure modes, one folder each (``none``, ``ckks``, ``mpc``), with a module per role.

:func:`owner_mode` and :func:`coordinator_mode` pick a study's mode from its approved
manifest; the committee member's side is :mod:`cohort.aggregator.modes`. See
:mod:`cohort.federation.modes.base` for the two interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cohort.federation.manifest import Manifest, SecureMode
from cohort.federation.modes.base import (
    Aggregated,
    CoordinatorMode,
    Delivery,
    OwnerMode,
    Reveal,
    Revealed,
    RoundHost,
    RoundSkipped,
)

if TYPE_CHECKING:
    from cohort.aggregator.committee import Committee
    from cohort.federation.hospital import HospitalSettings


def owner_mode(settings: HospitalSettings, manifest: Manifest) -> OwnerMode:
    """The data owner's side of the manifest's mode. Run by the data owner each round."""
    from cohort.federation.modes.ckks.owner import CkksOwner
    from cohort.federation.modes.mpc.owner import MpcOwner
    from cohort.federation.modes.none.owner import PlainOwner

    kinds: dict[SecureMode, type[OwnerMode]] = {
        SecureMode.NONE: PlainOwner,
        SecureMode.CKKS: CkksOwner,
        SecureMode.MPC: MpcOwner,
    }
    return kinds[manifest.secure](settings, manifest)


def coordinator_mode(host: RoundHost, members: Committee) -> CoordinatorMode:
    """The coordinator's side of the manifest's mode. Run by the coordinator once a study."""
    from cohort.federation.modes.ckks.coordinator import CkksCoordinator
    from cohort.federation.modes.mpc.coordinator import MpcCoordinator
    from cohort.federation.modes.none.coordinator import PlainCoordinator

    kinds: dict[SecureMode, type[CoordinatorMode]] = {
        SecureMode.NONE: PlainCoordinator,
        SecureMode.CKKS: CkksCoordinator,
        SecureMode.MPC: MpcCoordinator,
    }
    return kinds[host.manifest.secure](host, members)


__all__ = [
    "Aggregated",
    "CoordinatorMode",
    "Delivery",
    "OwnerMode",
    "Reveal",
    "Revealed",
    "RoundHost",
    "RoundSkipped",
    "coordinator_mode",
    "owner_mode",
]
