"""How a data owner reaches the committee: liveness, TLS pins and the upload itself.

Run by the data owner (inside Cohort's ClientApp), in every secure mode that has a
committee: :func:`reachable_members` before any budget is spent, :func:`upload` for each
signed upload, sealed to the member it goes to, with the member's signed receipt checked,
and :func:`fetch_aggregate` for a large aggregate to decrypt, held to the quorum's hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cohort.aggregator.aggregate_fetch import AggregateFetch
from cohort.aggregator.client import MemberClient
from cohort.aggregator.committee import MemberRef
from cohort.aggregator.replication import UploadReceipt, upload_order
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.crypto.tls import ChannelTls
from cohort.crypto.upload import build_upload
from cohort.errors import CohortError, VerificationError
from cohort.federation.manifest import CommitteeEntry, Manifest
from cohort.logs import fields, get_logger

log = get_logger(__name__)

LIVENESS_TIMEOUT_S = 10.0


def member_tls(manifest: Manifest, entry: CommitteeEntry) -> ChannelTls | None:
    """The TLS pin for one member from the manifest (None for a study without TLS)."""
    return MemberRef.from_entry(entry).channel_tls(manifest.tls_ca)


class MemberProbe:
    """The committee's liveness, asked in the background from the moment it is made.

    Each member is asked for its Info over the manifest's TLS pin, all at once, each within
    :data:`LIVENESS_TIMEOUT_S`; :meth:`alive` waits for the answers. Made by a data owner
    at the start of a round (:meth:`~cohort.federation.modes.base.OwnerMode.begin`), so the
    pings travel while it checks and decrypts the last round's sum. A probe nobody waits on
    (a round refused before its owner spends anything) ends with its last ping.
    """

    def __init__(self, manifest: Manifest) -> None:
        self._entries = list(manifest.committee)
        pool = ThreadPoolExecutor(max_workers=max(1, len(self._entries)))
        self._answers = [pool.submit(_ping, manifest, e) for e in self._entries]
        pool.shutdown(wait=False)

    def alive(self) -> list[str]:
        """The members that answered as themselves, in the manifest's order."""
        return [m for m in (a.result() for a in self._answers) if m is not None]


def _ping(manifest: Manifest, entry: CommitteeEntry) -> str | None:
    try:
        with MemberClient(entry.endpoint, tls=member_tls(manifest, entry)) as client:
            info = client.info(timeout_s=LIVENESS_TIMEOUT_S)
    except CohortError:
        return None
    return entry.member_id if info.info.member_id == entry.member_id else None


def reachable_members(manifest: Manifest) -> list[str]:
    """Members answering Info within :data:`LIVENESS_TIMEOUT_S` (over the manifest's TLS pin)."""
    return MemberProbe(manifest).alive()


@dataclass(frozen=True, repr=False)
class Delivered:
    """Which member accepted a round's upload, and its signed receipt (forwarded to the
    coordinator, which hands it to the other members to fetch their copies)."""

    member_id: str
    receipt: bytes


def upload(
    identity: Identity,
    manifest: Manifest,
    *,
    round: int,
    payload: bytes,
    payload_hash: bytes | None = None,
    prefer: Sequence[str] = (),
) -> Delivered | None:
    """Send the round's payload ONCE: one committee upload, to the first member that takes it.

    The upload is signed for the whole committee (:func:`cohort.crypto.upload.build_upload`)
    and sealed to the member it goes to. Members are tried in
    :func:`~cohort.aggregator.replication.upload_order` for (study, round, owner), those in
    ``prefer`` (the ones that answered the liveness ping) first; a member that refuses, is
    down, or answers without a valid signed receipt is skipped for the next. Returns the
    member and its receipt, or None when none took it.
    """
    digest = payload_hash if payload_hash is not None else tagged_hash(Tag.PAYLOAD, payload)
    order = upload_order(
        manifest.member_ids, study_id=manifest.study_id, round=round, sender=identity.party_id
    )
    order = tuple(m for m in order if m in prefer) + tuple(m for m in order if m not in prefer)
    for member_id in order:
        delivered = upload_to(
            identity, manifest, member_id, round=round, payload=payload, payload_hash=digest
        )
        if delivered is not None:
            return delivered
    return None


def upload_to(
    identity: Identity,
    manifest: Manifest,
    member_id: str,
    *,
    round: int,
    payload: bytes,
    payload_hash: bytes,
) -> Delivered | None:
    """Send one signed upload of ``payload`` sealed to ``member_id`` alone; its signed
    receipt, or None (logged) when the member refuses, is down or signs no valid receipt.
    Used where each member gets a payload of its own (MPC shares)."""
    entry = manifest.member(member_id)
    if entry is None:
        raise CohortError(f"{member_id!r} is not a committee member")
    committee = [e.identity for e in manifest.committee]
    data = build_upload(
        identity,
        committee,
        entry.identity,
        study_id=manifest.study_id,
        round=round,
        payload=payload,
        payload_hash=payload_hash,
    ).to_bytes()
    try:
        with MemberClient(entry.endpoint, tls=member_tls(manifest, entry)) as client:
            verdict = client.upload(data)
        UploadReceipt(
            member_id, manifest.study_id, round, identity.party_id, payload_hash, verdict.receipt
        ).verify(entry.identity)
    except CohortError as exc:
        log.warning(
            "upload not taken", extra=fields(member=member_id, round=round, reason=str(exc))
        )
        return None
    log.info("upload taken", extra=fields(member=member_id, round=round, size=len(data)))
    return Delivered(member_id, verdict.receipt)


def fetch_aggregate(
    identity: Identity,
    manifest: Manifest,
    *,
    round: int,
    members: Sequence[str],
    aggregate_hash: bytes,
) -> bytes:
    """The aggregate of ``round`` from the first of ``members`` (those that signed it) whose
    bytes hash to ``aggregate_hash``, asked one at a time over the manifest's TLS pin
    (:mod:`cohort.aggregator.aggregate_fetch`). A member that refuses, is down or hands over
    other bytes is logged by name and the next one is asked; VerificationError when none
    hands over the signed aggregate."""
    for member_id in members:
        entry = manifest.member(member_id)
        if entry is None:
            continue
        request = AggregateFetch.sign(
            identity, study_id=manifest.study_id, round=round, responder=member_id
        )
        try:
            with MemberClient(entry.endpoint, tls=member_tls(manifest, entry)) as client:
                blob = client.fetch_aggregate(request)
        except CohortError as exc:
            log.warning(
                "aggregate not handed over",
                extra=fields(member=member_id, round=round, reason=str(exc)),
            )
            continue
        if tagged_hash(Tag.AGGREGATE, blob) != aggregate_hash:
            log.warning(
                "member handed over an aggregate that is not the one a quorum signed",
                extra=fields(member=member_id, round=round),
            )
            continue
        return blob
    raise VerificationError(
        f"decrypt round {round}: no member that signed the aggregate handed it over"
    )


__all__ = [
    "LIVENESS_TIMEOUT_S",
    "Delivered",
    "fetch_aggregate",
    "member_tls",
    "reachable_members",
    "upload",
    "upload_to",
]
