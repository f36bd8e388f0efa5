"""The first step of every data-owner handler: which approved study a message names.

Run by the data owner (inside Cohort's ClientApp) at the start of each message: the message
names a study by its manifest hash, and the owner acts only if its operator approved that
manifest and the manifest fits the owner's local
:class:`~cohort.federation.policy.HospitalPolicy`. Every term comes from there (mode, roster,
dealer, committee, thresholds, rounds, DP terms, model), never from the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cohort.crypto.identity import Identity
from cohort.errors import VerificationError
from cohort.federation.approval import Role, approved_manifest
from cohort.federation.manifest import Manifest

if TYPE_CHECKING:
    from cohort.federation.hospital import HospitalSettings


def study_of(settings: HospitalSettings, study_id: str) -> tuple[Identity, Manifest]:
    """The owner's identity and the approved manifest behind ``study_id``, checked against
    local policy (:class:`~cohort.errors.VerificationError` / ConfigError otherwise)."""
    identity = settings.keystore.identity()
    manifest = approved_manifest(Path(settings.workdir), study_id, identity, Role.OWNER)
    settings.policy.check(manifest)
    return identity, manifest


def check_round(manifest: Manifest, round: int, what: str) -> None:
    """VerificationError unless ``round`` lies in the approved manifest's 1..rounds."""
    if not 1 <= round <= manifest.rounds:
        raise VerificationError(
            f"{what} round {round}: the approved manifest has rounds 1..{manifest.rounds}"
        )
