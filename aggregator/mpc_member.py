"""MPC mode, committee member steps beyond the shared ones: validate the candidates' norms
inside MPC, refuse to aggregate an owner it did not see pass, and confirm the sum the
coordinator reconstructed from the members' signed partials.

Run by a committee member (:meth:`CommitteeMember.validate` / ``confirm`` delegate here).
Every term (field, threshold, norm bound, committee order, rendezvous) is the approved
manifest's; the coordinator only chooses who takes part and which owners are candidates,
and a member checks both against the manifest and its own store.

Validation: each participant turns its Shamir share of every candidate's update into an
additive share over the participants (a Lagrange coefficient times its share, mod p) and
runs one CrypTen party of :func:`cohort.aggregator.mpc_validation.check_norms` with the
others (gloo over TCP; the first participant hosts the rendezvous and starts the TTP that
deals Beaver triples). Only one bit per candidate is opened. The member records what it
saw on disk and aggregates an owner only after that owner passed a check it took part in.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

import numpy as np

from cohort.aggregator.control import (
    ConfirmBody,
    Refusal,
    ValidateBody,
    canonical_client_ids,
)
from cohort.aggregator.modes.mpc import MpcMode
from cohort.aggregator.mpc_records import ValidationVerdict, partial_digest, validation_digest
from cohort.crypto.crypten_norm import NormCheckJob
from cohort.crypto.hashing import Tag, client_set_hash, tagged_hash
from cohort.crypto.identity import verify_signature
from cohort.crypto.shamir import additive_share
from cohort.errors import CohortError, VerificationError
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.aggregator.member import AggregateResult, CommitteeMember, _Study

log = get_logger(__name__)

#: How long one norm check may take before the participants give up.
NORM_CHECK_TIMEOUT_S = 240.0
#: Start method of a norm check's party and TTP processes, and what their server imports
#: once (:mod:`cohort.aggregator.mpc_validation` brings torch and CrypTen): later checks
#: fork from it in milliseconds instead of importing torch.
NORM_CHECK_START_METHOD: Final = "forkserver"
NORM_CHECK_PRELOAD = ("__main__", "cohort.aggregator.mpc_validation")
_warming = threading.Lock()
_warmed: list[threading.Thread] = []
#: Completed norm checks a member takes part in per round. Each check opens one bit per
#: candidate; a coordinator working with a colluding participant (who could shift its share)
#: could otherwise ask again and again to probe an update's norm around the bound. Two
#: allow one retry with other participants; an identical request is answered from the record.
MAX_CHECKS_PER_ROUND = 2


def warm_norm_checks() -> threading.Thread:
    """Start, in the background, the forkserver that norm checks fork their processes from,
    so that the first check does not wait seconds for torch and CrypTen to import (they are
    imported there, not in this process). Run by a serving member when it holds an MPC
    study; idempotent, returns the thread that started it."""
    with _warming:
        if not _warmed:
            thread = threading.Thread(target=_start_forkserver, name="norm-check-warm-up")
            thread.daemon = True
            thread.start()
            _warmed.append(thread)
        return _warmed[0]


def _start_forkserver() -> None:
    from multiprocessing import forkserver

    context = multiprocessing.get_context(NORM_CHECK_START_METHOD)
    context.set_forkserver_preload(list(NORM_CHECK_PRELOAD))
    forkserver.ensure_running()
    log.info("norm checks: forkserver ready")


def _mode(study: _Study) -> MpcMode:
    if not isinstance(study.mode, MpcMode):
        raise Refusal.UNSUPPORTED_MODE.error("the study is not in MPC mode")
    return study.mode


def _record_path(member: CommitteeMember, study: _Study, number: int) -> Path:
    return member.workdir / "kept" / study.study_id / f"validated-{number:010d}.json"


def _load_records(path: Path) -> list[dict[str, list[str]]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        raise Refusal.NOT_VALIDATED.error("the validation record is unreadable") from None
    return list(data)


def _save_record(path: Path, record: dict[str, list[str]]) -> None:
    records = _load_records(path)
    records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, sort_keys=True))
    os.replace(tmp, path)


def _participants(study: _Study, raw: tuple[str, ...], member_id: str) -> tuple[str, ...]:
    manifest = study.manifest
    participants = tuple(sorted(set(raw)))
    if len(participants) != len(raw) or list(raw) != list(participants):
        raise Refusal.BAD_PARTICIPANTS.error("participants must be distinct and sorted")
    outside = [m for m in participants if m not in manifest.member_ids]
    if outside:
        raise Refusal.BAD_PARTICIPANTS.error(f"{outside[0][:64]!r} is not a committee member")
    if len(participants) < max(2, manifest.quorum):
        raise Refusal.BAD_PARTICIPANTS.error(
            f"{len(participants)} participants; a norm check needs at least "
            f"{max(2, manifest.quorum)} (the threshold)"
        )
    if member_id not in participants:
        raise Refusal.BAD_PARTICIPANTS.error(f"{member_id!r} is not among the participants")
    return participants


def validate(member: CommitteeMember, study: _Study, body: ValidateBody) -> ValidationVerdict:
    """Run this member's party of the norm check of ``body.client_ids`` and sign the bits."""
    mode = _mode(study)
    manifest, number = study.manifest, body.round
    terms = manifest.mpc
    assert terms is not None  # an MPC study's manifest always has its terms
    ids = canonical_client_ids(body.client_ids)
    unknown = [cid for cid in ids if cid not in study.owners]
    if unknown:
        raise Refusal.NOT_IN_ROSTER.error(f"client set: {unknown[0][:64]!r} is not in the roster")
    participants = _participants(study, body.participants, member.member_id)
    store = member.store
    if store.round_state(study.study_id).open_round != number:
        raise Refusal.ROUND_NOT_OPEN.error(f"round {number} is not open")
    have = set(store.senders(study.study_id, number))
    missing = [cid for cid in ids if cid not in have]
    if missing:
        raise Refusal.MISSING_UPLOADS.error(
            f"no accepted share for round {number} from: " + ", ".join(missing)
        )
    path = _record_path(member, study, number)
    records = _load_records(path)
    for record in records:
        if record["participants"] == list(participants) and sorted(
            record["accepted"] + record["rejected"]
        ) == list(ids):
            return _verdict(
                member, study, number, participants, record["accepted"], record["rejected"]
            )
    if len(records) >= MAX_CHECKS_PER_ROUND:
        raise Refusal.VALIDATION_LIMIT.error(
            f"this member already took part in {len(records)} norm checks of round {number}"
        )
    indices = [manifest.member_ids.index(m) for m in participants]
    length = manifest.update_length
    shares = np.empty((len(ids), length), dtype=np.int64)
    for row, cid in enumerate(ids):

        def load(cid: str = cid) -> bytes:
            return store.payloads(study.study_id, number, [cid])[0]

        values = mode.share_values(number, load, sender=cid)
        if values.size != length:
            raise Refusal.MISSING_UPLOADS.error(f"the share of {cid!r} has another length")
        shares[row] = additive_share(mode.index, values, indices, mode.scheme.prime)
    rank = participants.index(member.member_id)
    job = NormCheckJob(
        rank=rank,
        world_size=len(participants),
        rendezvous=terms.endpoint(manifest.member_ids, participants[0]),
        prime=terms.prime,
        frac_bits=terms.frac_bits,
        bound=terms.norm_bound,
        shares=shares,
        timeout_s=NORM_CHECK_TIMEOUT_S,
    )
    from cohort.aggregator.mpc_validation import check_norms

    try:
        bits = check_norms(job, start_ttp=rank == 0)
    except CohortError as exc:
        raise Refusal.VALIDATION_FAILED.error(str(exc)) from None
    accepted = tuple(cid for cid, ok in zip(ids, bits, strict=True) if ok)
    rejected = tuple(cid for cid, ok in zip(ids, bits, strict=True) if not ok)
    _save_record(
        _record_path(member, study, number),
        {
            "participants": list(participants),
            "accepted": list(accepted),
            "rejected": list(rejected),
        },
    )
    log.info(
        "norm check done",
        extra=fields(
            member=member.member_id, round=number, accepted=len(accepted), rejected=list(rejected)
        ),
    )
    return _verdict(member, study, number, participants, accepted, rejected)


def _verdict(
    member: CommitteeMember,
    study: _Study,
    number: int,
    participants: Sequence[str],
    accepted: Sequence[str],
    rejected: Sequence[str],
) -> ValidationVerdict:
    """This member's signed verdict of one norm check (Ed25519: the same bytes each time)."""
    signature = member.identity.sign(
        validation_digest(
            study_id=study.study_id,
            round=number,
            member_id=member.member_id,
            participants=participants,
            accepted=accepted,
            rejected=rejected,
        )
    )
    return ValidationVerdict(
        member.member_id,
        study.study_id,
        number,
        tuple(participants),
        tuple(accepted),
        tuple(rejected),
        signature,
    )


def require_validated(
    member: CommitteeMember, study: _Study, number: int, ids: tuple[str, ...]
) -> None:
    """Refuse to aggregate unless every owner of ``ids`` passed a norm check this member took
    part in for ``number`` (and none failed one)."""
    passed: set[str] = set()
    failed: set[str] = set()
    for record in _load_records(_record_path(member, study, number)):
        passed.update(record["accepted"])
        failed.update(record["rejected"])
    bad = [cid for cid in ids if cid in failed]
    if bad:
        raise Refusal.VALIDATION_FAILED.error(
            f"{bad[0]!r} failed the norm check of round {number}: not aggregated"
        )
    unseen = [cid for cid in ids if cid not in passed]
    if unseen:
        raise Refusal.NOT_VALIDATED.error(
            f"no norm check of round {number} this member took part in passed {unseen[0]!r}"
        )


def confirm(member: CommitteeMember, study: _Study, body: ConfirmBody) -> AggregateResult:
    """Reconstruct the sum from the signed partials, check this member's own partial lies on
    it, and sign and attest the sum. Idempotent; a different sum for the round is refused."""
    mode = _mode(study)
    manifest, number = study.manifest, body.round
    ids = canonical_client_ids(body.client_ids)
    stored = member.store.result(study.study_id, number)
    if stored is None or stored.client_set != client_set_hash(ids):
        raise Refusal.NOT_AGGREGATED.error(
            f"this member has no partial of round {number} over that client set"
        )
    partials: dict[str, bytes] = {member.member_id: stored.aggregate}
    for part in body.partials:
        entry = manifest.member(part.member_id)
        if entry is None:
            raise Refusal.BAD_PARTIAL.error(f"{part.member_id[:64]!r} is not a committee member")
        digest = partial_digest(
            study_id=study.study_id,
            round=number,
            member_id=part.member_id,
            client_ids=ids,
            partial_hash=tagged_hash(Tag.AGGREGATE, part.partial),
        )
        try:
            verify_signature(entry.identity, digest, part.signature)
        except VerificationError:
            raise Refusal.BAD_PARTIAL.error(
                f"the partial of {part.member_id!r} is not signed by it"
            ) from None
        if part.member_id == member.member_id and part.partial != stored.aggregate:
            raise Refusal.BAD_PARTIAL.error("the call carries another partial for this member")
        partials[part.member_id] = part.partial
    if len(partials) < manifest.quorum:
        raise Refusal.BAD_PARTIAL.error(
            f"{len(partials)} partials, the threshold is {manifest.quorum}"
        )
    try:
        opened = mode.open_partials(partials, length=manifest.update_length)
    except (VerificationError, CohortError) as exc:
        raise Refusal.BAD_PARTIAL.error(str(exc)) from None
    if member.member_id in opened.wrong:
        raise Refusal.BAD_PARTIAL.error("this member's own partial is off the reconstructed sum")
    aggregate_hash = tagged_hash(Tag.AGGREGATE, opened.aggregate)
    confirmed = member.store.confirm_once(study.study_id, number, aggregate_hash)
    if confirmed != aggregate_hash:
        raise Refusal.CONFIRM_CONFLICT.error(f"round {number} was confirmed with another sum")
    return member.attest_result(study, number, ids, body.ledger_commitments, opened.aggregate)
