"""CKKS mode, coordinator side: have the key dealer deal, configure the committee, and per
round replicate the uploads among members, pick the client set, collect a quorum's signed
aggregate, relay the attestations, and have two owners of S decrypt (the second checks the
first) - or, when every owner of the next round is in S, hand the coordinator a
:class:`CkksReveal` for the next round's train messages, so that every owner of S decrypts
beside its training (:mod:`cohort.federation.reveal`), checked the same way.

Run by the coordinator (inside Cohort's ServerApp). It never holds a CKKS secret key and
never receives an individual update in any form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from flwr.app import RecordDict

from cohort.aggregator.modes import CkksSpec
from cohort.aggregator.quorum import QuorumDecision
from cohort.aggregator.replication import UploadReceipt, copy_faults, holders
from cohort.crypto.ckks import dealt_context_digest
from cohort.crypto.identity import verify_signature
from cohort.errors import BadInputError, ProtocolAbort, VerificationError
from cohort.federation import wire
from cohort.federation.manifest import SecureMode
from cohort.federation.modes.base import (
    Aggregated,
    CoordinatorMode,
    Reveal,
    Revealed,
    RoundSkipped,
)
from cohort.federation.modes.committee_steps import (
    aggregate_quorum,
    attest,
    choose_client_set,
    open_committee_round,
)
from cohort.logs import fields, get_logger

log = get_logger(__name__)

#: Largest aggregate (bytes) the coordinator hands the decrypting owners itself. A larger
#: one (a 1M-parameter CKKS sum is about 6 MB) would cross the coordinator, the SuperLink,
#: the owner's SuperNode and its ClientApp once per owner: the request names its hash and
#: the owners fetch it from the members that signed it
#: (:mod:`cohort.aggregator.aggregate_fetch`).
RELAY_AGGREGATE_MAX = 1 << 20


def rotation(rnd: int, client_set: Sequence[str]) -> list[str]:
    """The order in which the owners of S are asked to decrypt round ``rnd``: the first
    returns the sum, the others their signed hash (the load rotates through S)."""
    start = rnd % len(client_set)
    return [*client_set[start:], *client_set[:start]]


@dataclasses.dataclass
class CkksReveal(Reveal):
    """Round ``round``'s quorum-signed aggregate of S, to be decrypted by owners of S: by two
    with decryption messages (:meth:`reveal_now`), or by every owner beside the next round's
    training (:meth:`attach`, :meth:`conclude`; :mod:`cohort.federation.reveal`), checked
    the same way either way."""

    mode: CkksCoordinator
    round: int
    client_set: list[str]
    request: wire.DecryptRequest
    party_of: Mapping[int, str]

    def attach(self, content: RecordDict, party: str) -> RecordDict:
        first = rotation(self.round, self.client_set)[0]
        return wire.embed(content, dataclasses.replace(self.request, return_vector=party == first))

    def conclude(self, replies: Mapping[str, RecordDict]) -> Revealed:
        rnd, first = self.round, rotation(self.round, self.client_set)[0]
        answered: dict[str, tuple[bytes, np.ndarray | None]] = {}
        for party in self.client_set:
            content = replies.get(party)
            if content is None:
                continue
            try:
                answered[party] = self.mode.check_decryption(
                    party, rnd, self.request, content, vector=party == first, embedded=True
                )
            except (BadInputError, VerificationError) as exc:
                log.warning("decryption rejected", extra=fields(party=party, reason=str(exc)))
        revealed = self._settle(answered)
        agreed = wire.plaintext_hash(revealed.total)
        trained = frozenset(p for p, (h, _) in answered.items() if h == agreed)
        return dataclasses.replace(revealed, trained_from=trained)

    def reveal_now(self) -> Revealed:
        return self._settle(None)

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json()}

    def _settle(self, answered: Mapping[str, tuple[bytes, np.ndarray | None]] | None) -> Revealed:
        try:
            with self.mode.host.timed("decrypt"):
                total, decryptors, wrong = self.mode.decrypt(
                    self.round, self.client_set, self.request, self.party_of, answered
                )
        except ProtocolAbort as exc:
            raise RoundSkipped(str(exc), released=len(self.client_set)) from None
        return Revealed(total, decryptors, wrong, frozenset())


class CkksCoordinator(CoordinatorMode):
    name: ClassVar[SecureMode] = SecureMode.CKKS

    def set_up(self, owners: Mapping[int, wire.EnrollReply]) -> None:
        setup = self._deal_keys(owners)
        self.host.require_quorum(
            self.members.configure(self.host.signed, setup), "configured the study"
        )

    def open_round(self, rnd: int) -> list[str]:
        return open_committee_round(self.host, self.members, rnd)

    def finish(
        self,
        rnd: int,
        opened: Sequence[str],
        ok: Mapping[str, wire.TrainReceipt],
        updates: Mapping[str, np.ndarray],
        party_of: Mapping[int, str],
    ) -> Aggregated:
        manifest = self.manifest
        faulty: dict[str, str] = {}
        with self.host.timed("committee"):
            held = self.replicate(rnd, ok, opened, faulty)
        client_set, chosen = choose_client_set(held, list(opened), manifest.quorum)
        if len(client_set) < manifest.min_clients:
            raise RoundSkipped("no client set of the minimum size reached a quorum of members")
        # Each owner's signed (ledger head, epsilon), relayed as received: members attest
        # only what verifies against the owner's key.
        ledger = [ok[p].ledger_commitment for p in client_set if ok[p].ledger_commitment]
        with self.host.timed("committee"):
            decision = self.aggregate(rnd, client_set, chosen, faulty, ledger)
        if decision is None:
            raise RoundSkipped("the committee reached no quorum on the aggregate")
        finalized = attest(self.host, rnd, decision, client_set, ledger)
        # From here owners of S may decrypt: the round counts as released to the
        # coordinator for client-level DP even if the decryptions then disagree.
        request = self.decrypt_request(rnd, client_set, decision)
        return Aggregated(
            None,
            client_set,
            decision.aggregate_hash,
            finalized=finalized,
            faulty=faulty,
            reveal=CkksReveal(self, rnd, client_set, request, party_of),
        )

    def restore_reveal(self, data: Mapping[str, Any], party_of: Mapping[int, str]) -> Reveal:
        try:
            request = wire.DecryptRequest.from_json(data["request"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise BadInputError("saved reveal: malformed decryption request") from None
        return CkksReveal(self, request.round, list(request.client_ids), request, party_of)

    def aggregate(
        self,
        rnd: int,
        client_set: list[str],
        chosen: list[str],
        faulty: dict[str, str],
        ledger: Sequence[bytes],
    ) -> QuorumDecision | None:
        """The members' signed aggregates of S, accepted on quorum (None: no quorum)."""
        return aggregate_quorum(rnd, client_set, chosen, self.members, faulty, ledger)

    def _deal_keys(self, owners: Mapping[int, wire.EnrollReply]) -> CkksSpec:
        """Have the manifest's key dealer deal the CKKS context; return the members' setup."""
        manifest = self.manifest
        node_of = {o.party_id: n for n, o in owners.items()}
        dealer_node = node_of.get(manifest.key_dealer)
        if dealer_node is None:
            raise ProtocolAbort(f"key dealer {manifest.key_dealer!r} did not enrol")
        request = wire.KeygenRequest(study_id=manifest.study_id)
        replies = self.host.send([dealer_node], wire.KEYGEN, [request.to_record()], group="keygen")
        if dealer_node not in replies:
            raise ProtocolAbort(f"key dealer {manifest.key_dealer} did not answer")
        dealt = wire.KeygenReply.from_record(replies[dealer_node].content)
        dealer = manifest.owner(manifest.key_dealer)
        assert dealer is not None
        verify_signature(
            dealer.identity,
            dealt_context_digest(manifest.study_id, dealt.fingerprint),
            dealt.dealer_signature,
        )
        targets, contents = [], []
        for recipient, box in zip(dealt.recipients, dealt.boxes, strict=True):
            if recipient not in node_of:
                continue  # a roster owner that did not connect: it takes no part
            targets.append(node_of[recipient])
            contents.append(
                wire.InstallKeyRequest(
                    study_id=manifest.study_id,
                    box=box,
                    fingerprint=dealt.fingerprint,
                    dealer_signature=dealt.dealer_signature,
                ).to_record()
            )
        installed = self.host.send(targets, wire.INSTALL_KEY, contents, group="install_key")
        for node in targets:
            reply = installed.get(node)
            ok = (
                reply is not None
                and wire.InstallKeyReply.from_record(reply.content).fingerprint == dealt.fingerprint
            )
            if not ok:
                log.warning("key installation failed", extra=fields(party=owners[node].party_id))
        return CkksSpec(
            public_context=dealt.public_context, dealer_signature=dealt.dealer_signature
        )

    def replicate(
        self,
        rnd: int,
        receipts: Mapping[str, wire.TrainReceipt],
        opened: Sequence[str],
        faulty: dict[str, str],
    ) -> dict[str, set[str]]:
        """Upload once: every opened member fetches the uploads it lacks from the member
        that signed each owner's receipt. Returns which members hold each owner's upload
        (with the payload hash the owner reported) and names, in ``faulty``, the members
        reported to have withheld or altered a copy they signed a receipt for."""
        manifest = self.manifest
        sources = []
        for party, receipt in sorted(receipts.items()):
            for member_id, signature in zip(receipt.delivered, receipt.receipts, strict=False):
                signed = UploadReceipt(
                    member_id, manifest.study_id, rnd, party, receipt.payload_hash, signature
                )
                entry = manifest.member(member_id)
                try:
                    if entry is None:
                        raise VerificationError(f"{member_id!r} is not a committee member")
                    signed.verify(entry.identity)
                except VerificationError as exc:
                    log.warning(
                        "upload receipt rejected",
                        extra=fields(party=party, round=rnd, reason=str(exc)),
                    )
                    continue
                sources.append(signed.source())
        replications, _ = self.members.replicate_all(rnd, sources, members=opened)
        for member_id, reason in copy_faults(replications, sources).items():
            log.warning(
                "committee member faulty", extra=fields(round=rnd, member=member_id, reason=reason)
            )
            faulty.setdefault(member_id, reason)
        return holders(replications, sources)

    def _decrypt_some(
        self,
        parties: Sequence[str],
        node_of: Mapping[str, int],
        rnd: int,
        request: wire.DecryptRequest,
        *,
        hash_only: Sequence[str] = (),
    ) -> dict[str, tuple[bytes, np.ndarray | None]]:
        """Ask ``parties`` to decrypt at once; each answer with its signature and hash checked.

        The parties in ``hash_only`` return the signed hash of their plaintext and no vector
        (None in the answer): enough to check another owner's decryption.
        """
        nodes = [node_of[p] for p in parties]
        full = request.to_record()
        checking = (
            dataclasses.replace(request, return_vector=False).to_record() if hash_only else full
        )
        records = [checking if p in hash_only else full for p in parties]
        replies = self.host.send(nodes, wire.DECRYPT, records, group=f"decrypt-{rnd}")
        answers = {}
        for party in parties:
            reply = replies.get(node_of[party])
            if reply is None:
                continue
            try:
                answers[party] = self.check_decryption(
                    party, rnd, request, reply.content, vector=party not in hash_only
                )
            except (BadInputError, VerificationError) as exc:
                log.warning("decryption rejected", extra=fields(party=party, reason=str(exc)))
        return answers

    def check_decryption(
        self,
        party: str,
        rnd: int,
        request: wire.DecryptRequest,
        content: RecordDict,
        *,
        vector: bool = True,
        embedded: bool = False,
    ) -> tuple[bytes, np.ndarray | None]:
        """The signed plaintext hash (and the sum, when asked for) of one decryption: a
        decryption reply, or with ``embedded`` a train reply carrying its reveal."""
        answer = (
            wire.embedded(content, wire.DecryptReply)
            if embedded
            else wire.DecryptReply.from_record(content)
        )
        if answer is None:
            raise BadInputError(f"train reply from {party} carries no decryption of round {rnd}")
        entry = self.manifest.owner(party)
        assert entry is not None
        digest = wire.decryption_digest(
            study_id=request.study_id,
            round=rnd,
            aggregate_hash=request.aggregate_hash,
            plain_hash=answer.plain_hash,
        )
        verify_signature(entry.identity, digest, answer.signature)
        if answer.party_id != party:
            raise VerificationError(f"decryption by {party} claims to be by {answer.party_id}")
        if not vector and not wire.has_vector(content):
            return answer.plain_hash, None
        # asked for the sum, or sent it anyway: either way it must match the signed hash
        plain = wire.get_vector(content, message=wire.TRAIN if embedded else wire.DECRYPT)
        if wire.plaintext_hash(plain) != answer.plain_hash:
            raise VerificationError(f"decryption by {party} does not match its signed hash")
        return answer.plain_hash, plain.astype(np.float64)

    def decrypt_request(
        self, rnd: int, client_set: Sequence[str], decision: QuorumDecision
    ) -> wire.DecryptRequest:
        """What an owner of S gets asked to decrypt: the aggregate and the quorum's signatures."""
        return wire.DecryptRequest(
            study_id=self.manifest.study_id,
            round=rnd,
            client_ids=tuple(client_set),
            aggregate=decision.aggregate if len(decision.aggregate) <= RELAY_AGGREGATE_MAX else b"",
            aggregate_hash=decision.aggregate_hash,
            member_ids=tuple(decision.signatures),
            member_signatures=tuple(decision.signatures.values()),
        )

    def decrypt(
        self,
        rnd: int,
        client_set: list[str],
        request: wire.DecryptRequest,
        party_of: Mapping[int, str],
        answered: Mapping[str, tuple[bytes, np.ndarray | None]] | None = None,
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Decrypt with one owner of S and check it with a second (rotating through S).

        Decryption is deterministic, so two honest owners return the same plaintext hash. On
        a mismatch further owners are asked until two agree; the odd ones out are returned as
        faulty decryptors. ``answered``: checked decryptions already in hand (the owners'
        reveal beside their training), to which further owners are added one at a time.
        Returns (sum, owners who agree, faulty decryptors).
        """
        node_of = {p: n for n, p in party_of.items()}
        order = rotation(rnd, client_set)
        answers: dict[bytes, list[str]] = {}
        vectors: dict[bytes, np.ndarray] = {}
        # The first two owners decrypt in parallel (one message round trip), the second
        # returning only its signed hash; further owners, one at a time and with the sum,
        # only when those two disagree or one of them fails. Two agreeing owners therefore
        # always include one that sent the sum.
        batches: list[list[str]] = [order[:2], *([p] for p in order[2:])]
        got: Mapping[str, tuple[bytes, np.ndarray | None]] = {}
        if answered is not None:
            batches = [[]] + [[p] for p in order if p not in answered]
            got = answered
        for batch in batches:
            if batch:
                got = self._decrypt_some(batch, node_of, rnd, request, hash_only=batch[1:])
            for party in order:
                if party not in got or any(party in ps for ps in answers.values()):
                    continue
                plain_hash, vector = got[party]
                answers.setdefault(plain_hash, []).append(party)
                if vector is not None:
                    vectors.setdefault(plain_hash, vector)
            agreed_hash = next(
                (h for h, ps in answers.items() if len(ps) >= 2 and h in vectors), None
            )
            if agreed_hash is None:
                # two agree but neither sent the sum (its sender failed): ask one of them
                agreed_hash = next((h for h, ps in answers.items() if len(ps) >= 2), None)
                if agreed_hash is not None:
                    first = answers[agreed_hash][0]
                    self._fetch_sum(first, agreed_hash, node_of, rnd, request, vectors)
                    if agreed_hash not in vectors:
                        agreed_hash = None
            if agreed_hash is not None:
                agreed = answers[agreed_hash]
                wrong = sorted(p for h, ps in answers.items() if h != agreed_hash for p in ps)
                for p in wrong:
                    log.warning("wrong decryption", extra=fields(round=rnd, party=p))
                return vectors[agreed_hash], agreed, wrong
        if len(answers) == 1:
            ((plain_hash, agreed),) = answers.items()
            if plain_hash not in vectors:  # the one answer was a check: ask it for the sum
                self._fetch_sum(agreed[0], plain_hash, node_of, rnd, request, vectors)
            if plain_hash in vectors:
                log.warning("decryption unchecked: one owner answered", extra=fields(round=rnd))
                return vectors[plain_hash], agreed, []
        raise ProtocolAbort("no two data owners of the client set agree on the decryption")

    def _fetch_sum(
        self,
        party: str,
        plain_hash: bytes,
        node_of: Mapping[str, int],
        rnd: int,
        request: wire.DecryptRequest,
        vectors: dict[bytes, np.ndarray],
    ) -> None:
        """Ask ``party``, which sent only the signed hash ``plain_hash``, for its sum."""
        again = self._decrypt_some([party], node_of, rnd, request).get(party)
        if again is not None and again[0] == plain_hash and again[1] is not None:
            vectors[plain_hash] = again[1]
