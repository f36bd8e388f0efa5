"""Copies of uploads between committee members: a data owner uploads once, to one member,
and the others copy it from there.

Run by committee members: :func:`hand_over` answers another member's Fetch, and
:func:`replicate` runs the coordinator's signed Replicate (fetch what this member lacks).
:class:`~cohort.aggregator.member.CommitteeMember` delegates both here. Nothing the
coordinator sends is trusted: a copy is taken only on the holder's signed receipt and only
if it passes every check an upload from the owner passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from cohort.aggregator.control import Refusal, ReplicateBody, UploadSource
from cohort.aggregator.intake import Rejected
from cohort.aggregator.records import CopyFailure, Holding, Reason, Replication
from cohort.aggregator.replication import FetchRequest, UploadReceipt
from cohort.crypto.identity import seal_to
from cohort.crypto.upload import CommitteeUpload
from cohort.errors import BadInputError, CohortError, VerificationError
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.aggregator.member import CommitteeMember, _Study

log = get_logger(__name__)

#: Owners whose uploads one Replicate fetches at the same time.
FETCH_WORKERS = 4


def hand_over(member: CommitteeMember, study: _Study, request: FetchRequest) -> bytes:
    """This member's copy of one upload, for the member that asks (Fetch RPC) while it runs
    :func:`replicate`.

    ``study`` is one this member is configured for (:meth:`CommitteeMember.configured`
    refuses others, ``not_configured``). Refused unless the requester is in the manifest's
    committee (``unknown_requester``), the request names this member
    (``wrong_responder``) and is signed by the requester's manifest key
    (``bad_fetch_signature``), the round is the open one (``round_not_open``) and this
    member holds a relayable upload of that sender (``not_held``). The copy carries the
    owner's signed fields and signature, its payload sealed to the requester.
    """
    requester = study.manifest.member(request.requester)
    if requester is None:
        raise Refusal.UNKNOWN_REQUESTER.error(
            f"{request.requester[:64]!r} is not in the study's committee"
        )
    if request.responder != member.member_id:
        raise Refusal.WRONG_RESPONDER.error(
            f"the request is for {request.responder[:64]!r}, not {member.member_id!r}"
        )
    request.verify(requester.identity)
    store = member.store
    if store.round_state(study.study_id).open_round != request.round:
        raise Refusal.ROUND_NOT_OPEN.error(f"round {request.round} is not open")
    held = store.relayable(study.study_id, request.round, request.sender)
    if held is None:
        raise Refusal.NOT_HELD.error(
            f"no relayable upload of {request.sender[:64]!r} for round {request.round}"
        )
    copy = CommitteeUpload(
        study_id=study.study_id,
        round=request.round,
        sender=request.sender,
        committee=study.address,
        payload_hash=held.payload_hash,
        nonce=held.fields.nonce,
        sealed_payload=seal_to(requester.identity, held.payload),
        signature=held.fields.signature,
    )
    log.info(
        "copy handed over",
        extra=fields(
            member=member.member_id,
            to=request.requester,
            sender=request.sender,
            round=request.round,
        ),
    )
    return copy.to_bytes()


def replicate(member: CommitteeMember, study: _Study, body: ReplicateBody) -> Replication:
    """Fetch the open round's uploads this member lacks. Called by the coordinator once the
    data owners' receipts are in (signed Replicate, body: one source per upload).

    For each source (owner, member, payload hash, receipt) whose upload this member does
    not hold, it checks the receipt against that member's manifest key (``bad_receipt``:
    nothing is fetched), asks that member for its copy (a :class:`FetchRequest` signed with
    this member's key) and keeps the copy only if it passes every check an upload passes -
    the owner's signature and payload hash, study, open round, committee, fresh nonce, the
    mode's framing - and carries the hash of the receipt. A copy not handed over is
    ``withheld``; a copy that fails a check is recorded with that check's reason. Every such
    :class:`CopyFailure` (sender, relayer, reason) is kept until the round ends and reported
    here and in Status. ``round_not_open`` unless the call is for the open round.
    """
    number = body.round
    store = member.store
    if store.round_state(study.study_id).open_round != number:
        raise Refusal.ROUND_NOT_OPEN.error(f"round {number} is not open")
    have = set(store.senders(study.study_id, number))
    wanted: dict[str, list[UploadSource]] = {}
    for source in body.sources:
        if source.sender in have or source.holder == member.member_id:
            continue
        group = wanted.setdefault(source.sender, [])
        if source not in group:
            group.append(source)
    if wanted:
        with ThreadPoolExecutor(max_workers=min(FETCH_WORKERS, len(wanted))) as pool:
            list(pool.map(lambda group: _copy(member, study, number, group), wanted.values()))
    held = tuple(Holding(s, h) for s, h in store.holdings(study.study_id, number))
    return Replication(number, held, failures(member, study, number))


def failures(member: CommitteeMember, study: _Study, number: int) -> tuple[CopyFailure, ...]:
    """The copies of ``number`` that failed, as recorded (until the round ends)."""
    return tuple(
        CopyFailure(sender, relayer, Reason(reason), detail)
        for sender, relayer, reason, detail in member.store.copy_failures(study.study_id, number)
    )


def _copy(
    member: CommitteeMember, study: _Study, number: int, sources: Sequence[UploadSource]
) -> None:
    """Take one owner's upload from the first of ``sources`` that hands a good copy."""
    for source in sources:
        failure = _copy_from(member, study, number, source)
        if failure is None:
            return
        member.store.record_copy_failure(
            study.study_id,
            number,
            failure.sender,
            failure.relayer,
            failure.reason.value,
            failure.detail,
        )
        log.warning(
            "copy refused",
            extra=fields(
                member=member.member_id,
                sender=failure.sender,
                relayer=failure.relayer,
                round=number,
                reason=failure.reason.value,
                detail=failure.detail,
            ),
        )


def _copy_from(
    member: CommitteeMember, study: _Study, number: int, source: UploadSource
) -> CopyFailure | None:
    def failed(reason: Reason, detail: str) -> CopyFailure:
        return CopyFailure(source.sender, source.holder, reason, detail[:500])

    holder = study.manifest.member(source.holder)
    owner = study.owners.get(source.sender)
    if holder is None or owner is None:
        return failed(Reason.BAD_RECEIPT, "sender or holder is not in the manifest")
    receipt = UploadReceipt(
        source.holder, study.study_id, number, source.sender, source.payload_hash, source.receipt
    )
    try:
        receipt.verify(holder.identity)
    except VerificationError as exc:
        return failed(Reason.BAD_RECEIPT, str(exc))
    request = FetchRequest.sign(
        member.identity,
        study_id=study.study_id,
        round=number,
        sender=source.sender,
        responder=holder.member_id,
    )
    try:
        data = member.fetch_from(study.manifest, holder, request)
    except CohortError as exc:
        return failed(Reason.WITHHELD, str(exc))
    try:
        copy = CommitteeUpload.from_bytes(data)
    except BadInputError as exc:
        return failed(Reason.MALFORMED, str(exc))
    try:
        member.take_copy(copy, study, owner, source.payload_hash)
    except Rejected as rejected:
        return failed(rejected.reason, rejected.detail)
    log.info(
        "copy taken",
        extra=fields(
            member=member.member_id, sender=source.sender, relayer=source.holder, round=number
        ),
    )
    return None
