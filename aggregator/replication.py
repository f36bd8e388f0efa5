"""Upload once: receipts, member-to-member fetches, and naming a member that withholds or
alters a copy.

In CKKS mode a data owner signs one :class:`~cohort.crypto.upload.CommitteeUpload` per round
and sends it to ONE member, the first that accepts in :func:`upload_order`. That member
answers with an :class:`UploadReceipt`, its Ed25519 signature over (study, round, sender,
member, payload hash); the owner forwards it to the coordinator in its train receipt. The
coordinator hands every receipt to every member in a signed Replicate call
(:class:`~cohort.aggregator.control.ReplicateBody`); each member then asks the member that
signed a receipt for each upload it lacks (:class:`FetchRequest`, signed by the asking
member's manifest key, the ``Fetch`` RPC), checks the copy against the owner's own
signature and payload hash exactly like an upload, and reports every copy it could not
take (:class:`~cohort.aggregator.records.CopyFailure`). :func:`copy_faults` (run by the
coordinator) turns those reports into named members: a member that signed a receipt and
did not hand the copy over withheld it; a member whose copy fails the owner's checks
altered it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from cohort.aggregator.control import Refusal, UploadSource, check_study_hex
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.records import Blame, Replication
from cohort.crypto import framing
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import SIGNATURE_SIZE, Identity, PublicIdentity, verify_signature
from cohort.errors import BadInputError, VerificationError
from cohort.federation.manifest import CommitteeEntry, Manifest


def upload_order(
    member_ids: Iterable[str], *, study_id: str, round: int, sender: str
) -> tuple[str, ...]:
    """The members in the order a data owner tries them for one round's upload.

    Sorted by ``tagged_hash(UPLOAD_ORDER, study_id, u64 round, sender, member)``: fixed for
    a (study, round, owner), different across owners and rounds, so uploads spread evenly
    over the committee. Run by data owners.
    """

    def rank(member_id: str) -> bytes:
        return tagged_hash(
            Tag.UPLOAD_ORDER,
            study_id.encode("utf-8"),
            framing.u64(round),
            sender.encode("utf-8"),
            member_id.encode("utf-8"),
        )

    return tuple(sorted(member_ids, key=rank))


def receipt_digest(
    *, study_id: str, round: int, sender: str, member_id: str, payload_hash: bytes
) -> bytes:
    """What a member signs when it accepts an upload:
    ``tagged_hash(UPLOAD_RECEIPT, study_id, u64 round, sender, member_id, payload_hash)``."""
    return tagged_hash(
        Tag.UPLOAD_RECEIPT,
        study_id.encode("utf-8"),
        framing.u64(round),
        sender.encode("utf-8"),
        member_id.encode("utf-8"),
        payload_hash,
    )


@dataclass(frozen=True, repr=False)
class UploadReceipt:
    """A member's signed word that it accepted ``sender``'s upload of ``round``, with that
    payload hash, and will hand copies of it to the other members."""

    member_id: str
    study_id: str
    round: int
    sender: str
    payload_hash: bytes
    signature: bytes

    def __repr__(self) -> str:
        return f"UploadReceipt(member={self.member_id!r}, sender={self.sender!r}, r={self.round})"

    def digest(self) -> bytes:
        return receipt_digest(
            study_id=self.study_id,
            round=self.round,
            sender=self.sender,
            member_id=self.member_id,
            payload_hash=self.payload_hash,
        )

    @classmethod
    def sign(
        cls, member: Identity, *, study_id: str, round: int, sender: str, payload_hash: bytes
    ) -> UploadReceipt:
        """Run by the member that accepted the upload."""
        unsigned = cls(member.party_id, study_id, round, sender, payload_hash, b"")
        return cls(
            member.party_id, study_id, round, sender, payload_hash, member.sign(unsigned.digest())
        )

    def verify(self, member: PublicIdentity) -> None:
        """VerificationError unless ``member`` (its manifest key) signed this receipt."""
        if member.party_id != self.member_id:
            raise VerificationError(f"receipt of {self.member_id!r} checked against another key")
        verify_signature(member, self.digest(), self.signature)

    def source(self) -> UploadSource:
        """What the coordinator puts into a Replicate call."""
        return UploadSource(self.sender, self.member_id, self.payload_hash, self.signature)


def fetch_digest(
    *, study_id: str, round: int, sender: str, requester: str, responder: str
) -> bytes:
    """What the requesting member signs:
    ``tagged_hash(FETCH, study id bytes, u64 round, sender, requester, responder)``."""
    return tagged_hash(
        Tag.FETCH,
        check_study_hex(study_id),
        framing.u64(round),
        sender.encode("utf-8"),
        requester.encode("utf-8"),
        responder.encode("utf-8"),
    )


def verify_fetch_signature(
    signer: PublicIdentity, digest: bytes, signature: bytes, *, request: str, name: str
) -> None:
    """A request for bytes a member stores (another member's copy, the round's aggregate)
    is signed over ``digest`` by ``signer``, the manifest's key for ``name``;
    ``bad_fetch_signature`` otherwise. ``request`` ("fetch", "aggregate") names the kind."""
    if len(signature) != SIGNATURE_SIZE:
        raise Refusal.BAD_FETCH_SIGNATURE.error(f"the {request} request is not signed")
    try:
        verify_signature(signer, digest, signature)
    except VerificationError:
        raise Refusal.BAD_FETCH_SIGNATURE.error(
            f"{request} request is not signed by {name!r}'s manifest key"
        ) from None


@dataclass(frozen=True, repr=False)
class FetchRequest:
    """One member asking another for its copy of ``sender``'s upload of ``round``.

    The responder is in the signed digest, so a request is worthless at any other member;
    the copy comes back sealed to the requester's manifest box key, so only it can read
    what a replayed request would return.
    """

    study_id: str
    round: int
    sender: str
    requester: str
    responder: str
    signature: bytes

    def __repr__(self) -> str:
        return (
            f"FetchRequest(sender={self.sender!r}, r={self.round}, "
            f"{self.requester!r} -> {self.responder!r})"
        )

    def digest(self) -> bytes:
        return fetch_digest(
            study_id=self.study_id,
            round=self.round,
            sender=self.sender,
            requester=self.requester,
            responder=self.responder,
        )

    @classmethod
    def sign(
        cls, requester: Identity, *, study_id: str, round: int, sender: str, responder: str
    ) -> FetchRequest:
        """Run by the member that wants the copy."""
        unsigned = cls(study_id, round, sender, requester.party_id, responder, b"")
        return cls(
            study_id, round, sender, requester.party_id, responder,
            requester.sign(unsigned.digest()),
        )  # fmt: skip

    def verify(self, requester: PublicIdentity) -> None:
        """Run by the responder: signed by ``requester``, the manifest's key for
        ``self.requester`` (``bad_fetch_signature`` otherwise)."""
        verify_fetch_signature(
            requester, self.digest(), self.signature, request="fetch", name=self.requester
        )

    def to_proto(self) -> pb.FetchRequest:
        return pb.FetchRequest(
            study_id=self.study_id,
            round=self.round,
            sender=self.sender,
            requester=self.requester,
            responder=self.responder,
            signature=self.signature,
        )

    @classmethod
    def from_proto(cls, msg: pb.FetchRequest) -> FetchRequest:
        """Decode (``malformed_fetch`` for a bad study id or empty names)."""
        try:
            check_study_hex(msg.study_id)
        except BadInputError:
            raise Refusal.MALFORMED_FETCH.error("study id must be 64 hex digits") from None
        if not (msg.sender and msg.requester and msg.responder):
            raise Refusal.MALFORMED_FETCH.error("sender, requester and responder are required")
        return cls(msg.study_id, msg.round, msg.sender, msg.requester, msg.responder, msg.signature)


Fetcher = Callable[[Manifest, CommitteeEntry, FetchRequest], bytes]
"""How a member reaches another: ``fetch(manifest, responder entry, request)`` returns the
copy's bytes or raises a CohortError (``cohort.aggregator.peers.PeerFetcher`` over gRPC and
TLS pinned by the manifest; tests and benches plug in-process members in directly)."""


def copy_faults(
    replications: Mapping[str, Replication], sources: Sequence[UploadSource]
) -> dict[str, str]:
    """Members named by the other members' copy reports, with why. Run by the coordinator.

    A report counts only against the member whose receipt for that upload the coordinator
    itself holds (``sources``, checked when it built the Replicate call): a member that
    signed a receipt and did not hand the copy over withheld it; one whose copy failed the
    data owner's checks altered it. A report is the reporting member's word (withholding
    cannot be proven to a third party); each named member's reason lists who reported it.
    """
    receipted = {(s.sender, s.holder) for s in sources}
    named: dict[str, list[str]] = {}
    for reporter, replication in sorted(replications.items()):
        for failure in replication.failures:
            blame = failure.blame
            if blame is None or (failure.sender, failure.relayer) not in receipted:
                continue
            what = "withheld" if blame is Blame.WITHHELD else "altered"
            named.setdefault(failure.relayer, []).append(
                f"{what} {failure.sender}'s upload (reported by {reporter}: "
                f"{failure.reason.value}: {failure.detail[:200]})"
            )
    return {member: "; ".join(reasons) for member, reasons in sorted(named.items())}


def holders(
    replications: Mapping[str, Replication], sources: Sequence[UploadSource]
) -> dict[str, set[str]]:
    """For each data owner with a receipt, the members that hold its upload with the hash
    in the receipt (what :func:`cohort.federation.coordinator.choose_client_set` takes)."""
    expected = {s.sender: s.payload_hash for s in sources}
    held: dict[str, set[str]] = {sender: set() for sender in expected}
    for member_id, replication in replications.items():
        for holding in replication.held:
            if expected.get(holding.sender) == holding.payload_hash:
                held[holding.sender].add(member_id)
    return held
