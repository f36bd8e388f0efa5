"""A data owner fetches the round's aggregate from the committee members that signed it.

The coordinator asks two owners of the client set S to decrypt the quorum-signed aggregate
of a round. A small aggregate travels inside that request; a large one (a CKKS sum of a 1M
parameter model is about 6 MB) would cross the coordinator, the SuperLink, the owner's
SuperNode and its ClientApp, once per owner, so the request carries only its hash and the
quorum's signatures, and the owner fetches the ciphertext itself, over the member's pinned
TLS channel, from one of the members that signed that hash.

Run by committee members (:func:`hand_over`, the FetchAggregate RPC) and data owners
(:meth:`AggregateFetch.sign`). Nothing here is trusted by the owner: it decrypts only bytes
that hash to the hash a quorum signed, and names a member whose bytes do not. The member
hands over only what it stored as the round's signed result, only to an owner of that
result's client set, and only on a request signed by that owner for this member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cohort.aggregator.control import Refusal, check_study_hex
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.records import AggregateResult
from cohort.aggregator.replication import verify_fetch_signature
from cohort.crypto import framing
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.errors import BadInputError
from cohort.logs import fields, get_logger

if TYPE_CHECKING:
    from cohort.aggregator.member import CommitteeMember, _Study

log = get_logger(__name__)


def aggregate_fetch_digest(*, study_id: str, round: int, owner: str, responder: str) -> bytes:
    """What the owner signs:
    ``tagged_hash(AGGREGATE_FETCH, study id bytes, u64 round, owner, responder)``."""
    return tagged_hash(
        Tag.AGGREGATE_FETCH,
        check_study_hex(study_id),
        framing.u64(round),
        owner.encode("utf-8"),
        responder.encode("utf-8"),
    )


@dataclass(frozen=True, repr=False)
class AggregateFetch:
    """A data owner asking one member for the aggregate of ``round``.

    The responder is in the signed digest, so a request is worthless at any other member. A
    replayed request returns a ciphertext under the owners' key, which only they can open.
    """

    study_id: str
    round: int
    owner: str
    responder: str
    signature: bytes

    def __repr__(self) -> str:
        return f"AggregateFetch(r={self.round}, {self.owner!r} -> {self.responder!r})"

    def digest(self) -> bytes:
        return aggregate_fetch_digest(
            study_id=self.study_id, round=self.round, owner=self.owner, responder=self.responder
        )

    @classmethod
    def sign(cls, owner: Identity, *, study_id: str, round: int, responder: str) -> AggregateFetch:
        """Run by the data owner that is to decrypt."""
        unsigned = cls(study_id, round, owner.party_id, responder, b"")
        return cls(study_id, round, owner.party_id, responder, owner.sign(unsigned.digest()))

    def verify(self, owner: PublicIdentity) -> None:
        """Run by the member: signed by ``owner``, the manifest's key for ``self.owner``
        (``bad_fetch_signature`` otherwise)."""
        verify_fetch_signature(
            owner, self.digest(), self.signature, request="aggregate", name=self.owner[:64]
        )

    def to_proto(self) -> pb.AggregateFetch:
        return pb.AggregateFetch(
            study_id=self.study_id,
            round=self.round,
            owner=self.owner,
            responder=self.responder,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, msg: pb.AggregateFetch) -> AggregateFetch:
        """Decode (``malformed_fetch`` for a bad study id or empty names)."""
        try:
            check_study_hex(msg.study_id)
        except BadInputError:
            raise Refusal.MALFORMED_FETCH.error("study id must be 64 hex digits") from None
        if not (msg.owner and msg.responder):
            raise Refusal.MALFORMED_FETCH.error("owner and responder are required")
        return cls(msg.study_id, msg.round, msg.owner, msg.responder, msg.signature)


def hand_over(member: CommitteeMember, study: _Study, request: AggregateFetch) -> bytes:
    """The aggregate this member stored as its signed result of ``request.round``.

    ``study`` is one this member is configured for (:meth:`CommitteeMember.configured`
    refuses others, ``not_configured``). Refused unless its mode's result is the aggregate
    (``unsupported_mode``: an MPC member holds a partial), the owner is in the study's
    roster (``not_in_roster``), the request names this member
    (``wrong_responder``) and is signed by the owner's manifest key (``bad_fetch_signature``),
    the round was aggregated here (``not_aggregated``) and the owner is in that result's
    client set (``not_in_client_set``).
    """
    if study.mode.partial:
        raise Refusal.UNSUPPORTED_MODE.error(
            f"study {study.study_id[:16]} holds partial results, not an aggregate"
        )
    owner = study.owners.get(request.owner)
    if owner is None:
        raise Refusal.NOT_IN_ROSTER.error(f"{request.owner[:64]!r} is not in the study's roster")
    if request.responder != member.member_id:
        raise Refusal.WRONG_RESPONDER.error(
            f"the request is for {request.responder[:64]!r}, not {member.member_id!r}"
        )
    request.verify(owner.identity)
    stored = member.store.result(study.study_id, request.round)
    if stored is None:
        raise Refusal.NOT_AGGREGATED.error(f"round {request.round} is not aggregated here")
    result = AggregateResult.from_record(stored.record, stored.aggregate)
    if request.owner not in result.client_ids:
        raise Refusal.NOT_IN_CLIENT_SET.error(
            f"{request.owner[:64]!r} is not in round {request.round}'s client set"
        )
    log.info(
        "aggregate handed over",
        extra=fields(
            member=member.member_id,
            study=study.study_id,
            round=request.round,
            owner=request.owner,
            size=len(stored.aggregate),
        ),
    )
    return stored.aggregate
