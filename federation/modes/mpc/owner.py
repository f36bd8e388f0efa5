"""MPC mode, data owner side: encode the weighted update into the manifest's prime field,
split it into Shamir shares (``t - 1`` as 32-byte seeds) and send each member its own share,
sealed to it alone and signed for the committee.

Run by the data owner inside Cohort's ClientApp. The range is checked before sharing: an
update that could wrap once summed over the roster is refused, never shared.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np

from cohort.aggregator.replication import upload_order
from cohort.crypto.fixed_point import EncodingRangeError, FieldEncoding
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import ShamirScheme, share
from cohort.crypto.share_payload import SharePayload
from cohort.federation.manifest import Manifest, SecureMode
from cohort.federation.modes.base import CommitteeOwner, Delivery
from cohort.federation.owner_net import Delivered, upload_to
from cohort.logs import fields, get_logger

log = get_logger(__name__)


def scheme_of(manifest: Manifest) -> tuple[FieldEncoding, ShamirScheme]:
    """The encoding and sharing an MPC manifest fixes (k members, threshold = quorum)."""
    terms = manifest.mpc
    if terms is None:
        raise EncodingRangeError("manifest: not an MPC study")
    encoding = FieldEncoding(terms.prime, terms.frac_bits)
    scheme = ShamirScheme(len(manifest.committee), manifest.quorum, terms.prime)
    return encoding, scheme


def share_payloads(
    manifest: Manifest, *, sender: str, round: int, update: np.ndarray
) -> dict[str, bytes]:
    """One share payload per member id. The members given seeds rotate with the owner and
    round (:func:`~cohort.aggregator.replication.upload_order`), spreading the upload load."""
    encoding, scheme = scheme_of(manifest)
    secret = encoding.encode(update, clients=len(manifest.owners))
    members = manifest.member_ids
    domains = [share_domain(manifest.study_id, round, m, sender) for m in members]
    order = upload_order(members, study_id=manifest.study_id, round=round, sender=sender)
    seeded = [members.index(m) for m in order[: scheme.threshold - 1]]
    shares = share(secret, scheme, domains=domains, seeded=seeded)
    return {members[s.index]: SharePayload(scheme, int(secret.size), s).to_bytes() for s in shares}


class MpcOwner(CommitteeOwner):
    """Share the update to every reachable member; a threshold of them must take it."""

    name: ClassVar[SecureMode] = SecureMode.MPC

    def prepare(self) -> str | None:
        manifest = self.manifest
        self._alive = self.reachable()
        if len(self._alive) < manifest.quorum:
            return (
                f"only {len(self._alive)} of {len(manifest.committee)} committee members "
                f"reachable, the sharing threshold is {manifest.quorum}: no budget spent"
            )
        return None

    def deliver(self, identity: Identity, *, round: int, update: np.ndarray) -> Delivery:
        manifest = self.manifest
        try:
            payloads = share_payloads(
                manifest, sender=identity.party_id, round=round, update=update
            )
        except EncodingRangeError as exc:
            return Delivery("failed", f"update outside the MPC field's range: {exc}")
        hashes = {m: tagged_hash(Tag.PAYLOAD, p) for m, p in payloads.items()}

        def send(member_id: str) -> Delivered | None:
            return upload_to(
                identity,
                manifest,
                member_id,
                round=round,
                payload=payloads[member_id],
                payload_hash=hashes[member_id],
            )

        targets = [m for m in manifest.member_ids if m in self._alive]
        with ThreadPoolExecutor(max_workers=len(targets)) as pool:
            delivered = [d for d in pool.map(send, targets) if d is not None]
        members = tuple(d.member_id for d in delivered)
        log.info("shares delivered", extra=fields(round=round, members=list(members)))
        result = Delivery(
            "ok",
            delivered=members,
            receipts=tuple(d.receipt for d in delivered),
            payload_hashes=tuple(hashes[m] for m in members),
        )
        if len(delivered) < manifest.quorum:
            return Delivery(
                "failed",
                f"only {len(delivered)} committee members took a share, the threshold is "
                f"{manifest.quorum}",
                delivered=result.delivered,
                receipts=result.receipts,
                payload_hashes=result.payload_hashes,
            )
        return result
