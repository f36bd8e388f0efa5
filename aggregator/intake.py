"""The checks of one upload, or of a copy of one, that need no member state.

Run by a committee member (:class:`~cohort.aggregator.member.CommitteeMember`) on every
upload and every copy it fetches: parse the bytes (:func:`parse_upload`), then verify the
data owner's signature, unseal with the member's key and check the payload hash
(:func:`authenticate`). Each failure is a :class:`Rejected` carrying the
:class:`~cohort.aggregator.records.Reason` the member reports. Round, deadline, roster and
replay checks need the member's state and stay with the member.
"""

from __future__ import annotations

from cohort.aggregator.records import Reason
from cohort.crypto import upload as committee_upload
from cohort.crypto.envelope import Envelope, open_envelope
from cohort.crypto.identity import Identity, PublicIdentity, verify_signature
from cohort.crypto.upload import CommitteeUpload, UploadCheck, UploadRefused, open_upload
from cohort.errors import VerificationError

Upload = Envelope | CommitteeUpload
"""What the Upload RPC takes: a committee upload, or the first version's per-member envelope."""

_CHECK_REASONS: dict[UploadCheck, Reason] = {
    UploadCheck.STUDY: Reason.WRONG_STUDY,
    UploadCheck.ROUND: Reason.WRONG_ROUND,
    UploadCheck.COMMITTEE: Reason.WRONG_ADDRESSEE,
    UploadCheck.SENDER: Reason.WRONG_SENDER,
    UploadCheck.SIGNATURE: Reason.BAD_SIGNATURE,
    UploadCheck.SEAL: Reason.UNSEAL_FAILED,
    UploadCheck.PAYLOAD_HASH: Reason.PAYLOAD_HASH_MISMATCH,
}


class Rejected(Exception):
    """An upload or copy failed a check: ``reason`` for the records, ``detail`` for people."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_upload(data: bytes) -> Upload:
    """A committee upload (magic ``CHCU``) or a per-member envelope (anything else);
    BadInputError naming the field otherwise."""
    if data[: len(committee_upload.MAGIC)] == committee_upload.MAGIC:
        return CommitteeUpload.from_bytes(data)
    return Envelope.from_bytes(data)


def authenticate(
    upload: Upload,
    *,
    holder: Identity,
    sender: PublicIdentity,
    study_id: str,
    committee: bytes,
) -> bytes:
    """The payload of ``upload`` once its signature by ``sender``, its seal to ``holder``
    and its payload hash check out (and, for a committee upload, its addressee is
    ``committee``); :class:`Rejected` with the first failing check's reason."""
    if isinstance(upload, CommitteeUpload):
        try:
            return open_upload(
                upload,
                holder=holder,
                sender=sender,
                committee=committee,
                study_id=study_id,
                round=upload.round,
            )
        except UploadRefused as exc:
            raise Rejected(_CHECK_REASONS[exc.check], str(exc)) from exc
    try:
        return open_envelope(
            upload, recipient=holder, sender=sender, study_id=study_id, round=upload.round
        )
    except VerificationError as exc:
        raise Rejected(_classify(upload, sender, holder), str(exc)) from exc


def _classify(envelope: Envelope, sender: PublicIdentity, identity: Identity) -> Reason:
    """Which of signature / unseal / payload hash made open_envelope fail (its order).

    Only called after open_envelope raised, so the slow unseal is repeated only for
    envelopes that are rejected anyway.
    """
    try:
        verify_signature(sender, envelope.signed_digest(), envelope.signature)
    except VerificationError:
        return Reason.BAD_SIGNATURE
    try:
        identity.unseal(envelope.sealed_payload)
    except VerificationError:
        return Reason.UNSEAL_FAILED
    return Reason.PAYLOAD_HASH_MISMATCH
