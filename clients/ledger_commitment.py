"""A data owner's signed statement of its privacy ledger after one round, for the chain.

After training round r of a study, the data owner signs (Ed25519, its manifest identity)::

    tagged_hash(Tag.LEDGER_COMMITMENT, study_id, u64(round), sender, head, u64(epsilon_micro))

where ``head`` is its ledger's head hash right after the round's entry
(:attr:`cohort.clients.privacy.PrivacyLedger.head`) and ``epsilon_micro`` that entry's
``epsilon_after`` as :func:`cohort.bounties.attestation.epsilon_micro` scales it. The
statement travels in the train receipt to the coordinator, which forwards it, unchanged, to
the committee in the Aggregate call; each member verifies it against the owner's key in the
manifest and attests (head, epsilon) on-chain with the round's result. The coordinator can
drop a statement (the member then attests "none reported", and the audit flags the round)
but never put a head of its choosing on chain: it holds no owner's key.

Wire framing (big-endian)::

    "CHLC" | u8 version=1 | u32-prefixed study_id (UTF-8) | u64 round | u32-prefixed sender
    | u32-prefixed head (32) | u64 epsilon_micro | u32-prefixed signature (64)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cohort.crypto import framing
from cohort.crypto.envelope import MAX_STUDY_ID_BYTES
from cohort.crypto.hashing import DIGEST_SIZE, Tag, tagged_hash
from cohort.crypto.identity import (
    MAX_PARTY_ID_BYTES,
    SIGNATURE_SIZE,
    Identity,
    PublicIdentity,
    check_party_id,
    verify_signature,
)
from cohort.errors import BadInputError, VerificationError
from cohort.logs import fields, get_logger

log = get_logger(__name__)

MAGIC = b"CHLC"
VERSION = 1

__all__ = ["LedgerCommitment", "attested_heads", "select_commitments"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BadInputError(f"ledger commitment: {message}")


@dataclass(frozen=True)
class LedgerCommitment:
    """One owner's (ledger head, micro-epsilon) after one round, signed. Validated when built."""

    study_id: str
    round: int
    sender: str
    head: bytes
    epsilon_micro: int
    signature: bytes

    def __post_init__(self) -> None:
        _check(
            isinstance(self.study_id, str)
            and bool(self.study_id)
            and len(self.study_id.encode("utf-8")) <= MAX_STUDY_ID_BYTES,
            f"study_id must be non-empty text of at most {MAX_STUDY_ID_BYTES} bytes",
        )
        for name in ("round", "epsilon_micro"):
            value = getattr(self, name)
            _check(
                isinstance(value, int)
                and not isinstance(value, bool)
                and 0 <= value <= framing.U64_MAX,
                f"{name} must be an integer in [0, 2**64)",
            )
        try:
            check_party_id(self.sender, "sender")
        except BadInputError as exc:
            raise BadInputError(f"ledger commitment: {exc}") from None
        for name, size in (("head", DIGEST_SIZE), ("signature", SIGNATURE_SIZE)):
            value = getattr(self, name)
            _check(isinstance(value, bytes) and len(value) == size, f"{name} must be {size} bytes")

    def signed_digest(self) -> bytes:
        """The 32-byte digest the owner's signature covers (module docstring)."""
        return tagged_hash(
            Tag.LEDGER_COMMITMENT,
            self.study_id.encode("utf-8"),
            framing.u64(self.round),
            self.sender.encode("utf-8"),
            self.head,
            framing.u64(self.epsilon_micro),
        )

    @classmethod
    def sign(
        cls, owner: Identity, *, study_id: str, round: int, head: bytes, epsilon_micro: int
    ) -> LedgerCommitment:
        """Run by the data owner after the round's ledger entry is written."""
        unsigned = cls(study_id, round, owner.party_id, head, epsilon_micro, bytes(SIGNATURE_SIZE))
        return cls(
            study_id,
            round,
            owner.party_id,
            head,
            epsilon_micro,
            owner.sign(unsigned.signed_digest()),
        )

    def verify(self, owner: PublicIdentity, *, study_id: str, round: int) -> None:
        """Run by a committee member: VerificationError naming the check that fails
        (study, round, sender, signature)."""
        if self.study_id != study_id:
            raise VerificationError(f"ledger commitment: for study {self.study_id[:16]}")
        if self.round != round:
            raise VerificationError(f"ledger commitment: for round {self.round}, not {round}")
        if self.sender != owner.party_id:
            raise VerificationError(
                f"ledger commitment: from {self.sender!r}, expected {owner.party_id!r}"
            )
        try:
            verify_signature(owner, self.signed_digest(), self.signature)
        except VerificationError:
            raise VerificationError(
                f"ledger commitment: signature does not verify for {owner.party_id}"
            ) from None

    def to_bytes(self) -> bytes:
        """Canonical wire form (module docstring)."""
        return b"".join(
            (
                MAGIC,
                framing.u8(VERSION),
                framing.prefixed(self.study_id.encode("utf-8")),
                framing.u64(self.round),
                framing.prefixed(self.sender.encode("utf-8")),
                framing.prefixed(self.head),
                framing.u64(self.epsilon_micro),
                framing.prefixed(self.signature),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> LedgerCommitment:
        """Parse the wire form; BadInputError("ledger commitment: ...") naming the field."""
        r = framing.Reader(data, "ledger commitment")
        r.magic(MAGIC)
        r.version(VERSION)
        study_id = r.text("study_id", max_size=MAX_STUDY_ID_BYTES)
        number = r.u64("round")
        sender = r.text("sender", max_size=MAX_PARTY_ID_BYTES)
        head = r.prefixed("head", max_size=DIGEST_SIZE, exact=DIGEST_SIZE)
        epsilon = r.u64("epsilon_micro")
        signature = r.prefixed("signature", max_size=SIGNATURE_SIZE, exact=SIGNATURE_SIZE)
        r.end()
        return cls(study_id, number, sender, head, epsilon, signature)


def select_commitments(
    raw: Sequence[bytes],
    *,
    owners: Mapping[str, PublicIdentity],
    study_id: str,
    round: int,
    client_ids: Sequence[str],
) -> dict[str, LedgerCommitment]:
    """The commitments of ``raw`` that count: client id -> its verified commitment.

    Run by every committee member (and by the coordinator, to relay what they attest). A
    commitment that does not parse or verify against ``owners`` (party id -> manifest
    identity), is for another study, round or a sender outside ``client_ids``, or repeats
    a sender already taken, is skipped and logged: the same bytes give every honest member
    the same selection, and a bad statement from one owner never blocks the round.
    """
    chosen: dict[str, LedgerCommitment] = {}
    wanted = set(client_ids)
    for data in raw:
        try:
            commitment = LedgerCommitment.from_bytes(data)
            owner = owners.get(commitment.sender)
            if owner is None or commitment.sender not in wanted:
                raise VerificationError(f"ledger commitment: {commitment.sender!r} is not in S")
            if commitment.sender in chosen:
                raise VerificationError(f"ledger commitment: {commitment.sender!r} sent twice")
            commitment.verify(owner, study_id=study_id, round=round)
        except (BadInputError, VerificationError) as exc:
            log.warning("ledger commitment skipped", extra=fields(round=round, reason=str(exc)))
            continue
        chosen[commitment.sender] = commitment
    return chosen


def attested_heads(
    payouts: Mapping[str, str], commitments: Mapping[str, LedgerCommitment]
) -> dict[str, tuple[bytes, int]]:
    """Payout address -> (head, micro-epsilon) for every client of ``payouts`` (client id ->
    payout address): what the members attest. A client without a commitment gets the zero
    head and zero epsilon, "none reported", which no published ledger matches."""
    return {
        payout: (
            (commitments[cid].head, commitments[cid].epsilon_micro)
            if cid in commitments
            else (bytes(DIGEST_SIZE), 0)
        )
        for cid, payout in payouts.items()
    }
