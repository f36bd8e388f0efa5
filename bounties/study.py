"""Python client for the ``CohortStudy`` contract (one deployment per federated study).

Roles: the sponsor deploys, funds and settles; the coordinator relays committee members'
signed attestations (members need no ether); data owners withdraw their credit; auditors
read finalized rounds, contributions and payouts. Each method says who runs it.

A deployment is bound to the signed study manifest: it stores the manifest hash, the number
of rounds and a settlement deadline. The manifest names the contract address before the
contract exists (:func:`predict_address`); every party checks a deployment against its
approved manifest with :meth:`StudyContract.verify_binding` before acting on it.

The contract is the single source of truth for every rule (quorum range, canonical
contributors, membership, replay): this client checks only what it must to encode a call,
and maps the contract's custom errors to Cohort errors (:data:`ERROR_KINDS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, cast

from web3.contract import Contract
from web3.logs import DISCARD
from web3.types import EventData, Nonce, TxReceipt
from web3.utils.address import get_create_address

from cohort.bounties.attestation import (
    ATTESTATION_TYPEHASH,
    LedgerHeads,
    ascending,
    attestation_digest,
    canonical_contributors,
    checksum_address,
    contributors_hash,
    ledger_hash,
    ledger_lists,
    recover_signer,
    roster_hash,
    sign_attestation,
)
from cohort.bounties.chain import ChainProvider, ErrorKinds
from cohort.errors import BadInputError, ConfigError, ProtocolAbort, VerificationError
from cohort.logs import fields, get_logger

__all__ = [
    "ARTIFACT_NAME",
    "ATTESTATION_TYPEHASH",
    "ERROR_KINDS",
    "AttestationEvent",
    "FinalizedRound",
    "LedgerHeadEvent",
    "StudyContract",
    "attestation_digest",
    "canonical_contributors",
    "contributors_hash",
    "create_address",
    "load_artifact",
    "matches_artifact",
    "predict_address",
    "recover_signer",
    "roster_hash",
    "sign_attestation",
]

log = get_logger(__name__)

ARTIFACT_NAME = "CohortStudy"

#: Data owners per registration or settlement transaction: about 23,000 gas per owner
#: registered and 27,000 per contributor credited, so a batch stays near 11M gas, under
#: EIP-7825's per-transaction cap of 2^24 (docs/contract.md, "Large rosters").
ROSTER_BATCH = 400

#: Which Cohort error each custom error of the contract becomes. Tampering and
#: authorization failures are VerificationError, malformed arguments BadInputError, calls
#: in the wrong state ProtocolAbort.
ERROR_KINDS: ErrorKinds = MappingProxyType(
    {
        "InvalidSignature": VerificationError,
        "InvalidSignatureLength": VerificationError,
        "NotCommitteeMember": VerificationError,
        "AlreadyAttested": VerificationError,
        "NotSponsor": VerificationError,
        "InvalidCommitteeSize": BadInputError,
        "InvalidDataOwnerCount": BadInputError,
        "InvalidQuorum": BadInputError,
        "ZeroStudyId": BadInputError,
        "ZeroManifestHash": BadInputError,
        "InvalidRounds": BadInputError,
        "InvalidDeadline": BadInputError,
        "RoundOutOfRange": BadInputError,
        "ZeroAddress": BadInputError,
        "DuplicateCommitteeMember": BadInputError,
        "DataOwnersNotAscending": BadInputError,
        "RosterFull": BadInputError,
        "EmptyBatch": BadInputError,
        "SettlementOrder": BadInputError,
        "ZeroValue": BadInputError,
        "ZeroAggregateHash": BadInputError,
        "EmptyContributors": BadInputError,
        "ContributorsNotCanonical": BadInputError,
        "NotDataOwner": BadInputError,
        "LedgerLengthMismatch": BadInputError,
        "StudyAlreadySettled": ProtocolAbort,
        "NothingToWithdraw": ProtocolAbort,
        "TransferFailed": ProtocolAbort,
        "Reentrancy": ProtocolAbort,
        "StudyNotFinished": ProtocolAbort,
        "RosterIncomplete": ProtocolAbort,
    }
)


def create_address(sender: str, nonce: int) -> str:
    """Checksummed address of the contract ``sender`` creates with transaction ``nonce``.

    The CREATE rule: ``keccak256(rlp([sender, nonce]))[12:]``.
    """
    sender = checksum_address(sender, field="sender")
    if isinstance(nonce, bool) or not isinstance(nonce, int) or nonce < 0:
        raise BadInputError(f"nonce: expected a non-negative integer, got {nonce!r}")
    return str(get_create_address(sender, Nonce(nonce)))


def predict_address(provider: ChainProvider, sponsor: str) -> str:
    """Address the sponsor's next deployment will have (from its current nonce).

    Run by the sponsor before deploying, so the study manifest can name the contract. Any
    other transaction the sponsor sends first moves the prediction on by one nonce;
    :meth:`StudyContract.deploy` with ``expected_address`` refuses such a mismatch.
    """
    return create_address(sponsor, provider.next_nonce(sponsor))


@cache
def load_artifact(name: str = ARTIFACT_NAME) -> Mapping[str, Any]:
    """The committed compiler output ``bounties/artifacts/<name>.json`` (package data)."""
    path = resources.files("cohort.bounties").joinpath("artifacts", f"{name}.json")
    try:
        artifact = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"artifact {name}.json is missing from cohort.bounties") from None
    if not isinstance(artifact, dict) or not {"abi", "bytecode"} <= artifact.keys():
        raise BadInputError(f"artifact {name}.json: expected 'abi' and 'bytecode'")
    return MappingProxyType(artifact)


@dataclass(frozen=True)
class FinalizedRound:
    """A ``RoundFinalized`` event: the result a quorum agreed on."""

    round: int
    aggregate_hash: bytes
    contributors_hash: bytes
    contributors: tuple[str, ...]
    block_number: int
    tx_hash: str


@dataclass(frozen=True)
class LedgerHeadEvent:
    """A ``LedgerHead`` event: a contributor's ledger head and micro-epsilon after a
    finalized round, as the quorum attested them."""

    round: int
    contributor: str
    head: bytes
    epsilon_micro: int
    block_number: int
    tx_hash: str


@dataclass(frozen=True)
class AttestationEvent:
    """An ``Attested`` event: one member's vote (``votes`` agree on it after this one)."""

    round: int
    member: str
    aggregate_hash: bytes
    contributors_hash: bytes
    votes: int
    relayer: str
    block_number: int
    tx_hash: str


class StudyContract:
    """One deployed ``CohortStudy``, bound to the provider that talks to its chain."""

    def __init__(self, provider: ChainProvider, address: str, *, deploy_block: int = 0) -> None:
        artifact = load_artifact()
        self._provider = provider
        self._address = checksum_address(address, field="address")
        self._deploy_block = deploy_block
        self._contract: Contract = provider.web3.eth.contract(
            address=self._address, abi=artifact["abi"]
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def deploy(
        cls,
        provider: ChainProvider,
        *,
        sponsor: str,
        study_id: bytes,
        committee: Sequence[str],
        quorum: int,
        data_owners: Sequence[str],
        bounty_wei: int,
        manifest_hash: bytes,
        rounds: int,
        deadline: int,
        expected_address: str | None = None,
    ) -> StudyContract:
        """Deploy a study escrowing ``bounty_wei``. Run by the sponsor, who pays for it.

        ``manifest_hash`` is the hash of the approved study manifest (32 bytes, not zero),
        ``rounds`` the manifest's number of rounds (>= 1; attestations are accepted for
        rounds 1..rounds) and ``deadline`` unix seconds after the chain's latest block, from
        which settlement no longer waits for the final round. With ``expected_address`` (the
        address the manifest names), VerificationError if the deployment would land, or
        landed, anywhere else. The contract validates the rosters and the quorum
        (BadInputError naming the rule).

        The data owners go on the roster in canonical (ascending) order: the first
        :data:`ROSTER_BATCH` in the deployment itself, the rest in ``registerDataOwners``
        batches the sponsor sends right after, so with any roster up to ``MAX_DATA_OWNERS``
        every transaction stays under EIP-7825's 2^24 gas. The study accepts attestations
        once every owner is registered.
        """
        artifact = load_artifact()
        factory = provider.web3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        study_id = _bytes32(study_id, field="study_id")
        manifest_hash = _bytes32(manifest_hash, field="manifest_hash")
        if manifest_hash == bytes(32):
            raise BadInputError("manifest_hash: must not be zero")
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 0:
            raise BadInputError(f"quorum: expected a non-negative member count, got {quorum!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ConfigError(f"rounds: expected a number of training rounds >= 1, got {rounds!r}")
        if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 0:
            raise ConfigError(f"deadline: expected unix time in seconds, got {deadline!r}")
        now = provider.latest_timestamp()
        if deadline <= now:
            raise ConfigError(
                f"deadline: {deadline} (unix seconds) is not after the chain's latest block "
                f"time {now}"
            )
        members = [checksum_address(a, field="committee") for a in committee]
        owners = ascending(_roster(data_owners, field="data_owners"))
        expected = None
        if expected_address is not None:
            expected = checksum_address(expected_address, field="expected_address")
            predicted = predict_address(provider, sponsor)
            if predicted != expected:
                raise VerificationError(
                    f"expected_address: the sponsor's next deployment goes to {predicted}, "
                    f"not {expected} (nonce {provider.next_nonce(sponsor)})"
                )
        first, rest = owners[:ROSTER_BATCH], owners[ROSTER_BATCH:]
        constructor = factory.constructor(
            study_id, manifest_hash, members, quorum, first, len(owners), rounds, deadline
        )
        receipt = provider.transact(
            constructor,
            sender=sponsor,
            value=bounty_wei,
            action="deploy",
            error_kinds=ERROR_KINDS,
        )
        address = receipt["contractAddress"]
        if address is None:
            raise ProtocolAbort("deploy: receipt has no contract address")
        if expected is not None and address != expected:
            raise VerificationError(
                f"expected_address: the study was deployed at {address}, not {expected} "
                "(the sponsor sent another transaction first)"
            )
        log.info(
            "study deployed",
            extra=fields(
                provider=provider.name,
                contract=address,
                study_id=study_id.hex(),
                manifest_hash=manifest_hash.hex(),
                committee=len(members),
                quorum=quorum,
                data_owners=len(owners),
                rounds=rounds,
                deadline=deadline,
                bounty_wei=bounty_wei,
                gas_used=receipt["gasUsed"],
            ),
        )
        study = cls(provider, address, deploy_block=int(receipt["blockNumber"]))
        for start in range(0, len(rest), ROSTER_BATCH):
            batch = rest[start : start + ROSTER_BATCH]
            study._transact("registerDataOwners", batch, sender=sponsor)
        if rest:
            log.info(
                "data owners registered",
                extra=fields(contract=address, data_owners=study.registered_data_owners()),
            )
        return study

    @classmethod
    def at(cls, provider: ChainProvider, address: str) -> StudyContract:
        """Attach to an existing deployment; BadInputError if no CohortStudy code is there."""
        address = checksum_address(address, field="address")
        code = bytes(provider.web3.eth.get_code(address))
        if not code:
            raise BadInputError(f"address: no contract at {address}")
        if not matches_artifact(code):
            raise BadInputError(
                f"address: the code at {address} is not the committed CohortStudy build"
            )
        return cls(provider, address)

    # ------------------------------------------------------------------ identity

    @property
    def address(self) -> str:
        return self._address

    @property
    def provider(self) -> ChainProvider:
        return self._provider

    @property
    def contract(self) -> Contract:
        """The raw web3 contract (for calls this class does not wrap)."""
        return self._contract

    def study_id(self) -> bytes:
        return bytes(self._contract.functions.studyId().call())

    def sponsor(self) -> str:
        return str(self._contract.functions.sponsor().call())

    def quorum(self) -> int:
        return int(self._contract.functions.quorum().call())

    def committee(self) -> list[str]:
        return [str(a) for a in self._contract.functions.committee().call()]

    def data_owners(self) -> list[str]:
        """The registered roster in canonical (ascending) order, from its registration events."""
        return [str(a) for e in self._logs("DataOwnersRegistered") for a in e["args"]["dataOwners"]]

    def data_owner_count(self) -> int:
        """Size of the roster, fixed at deployment."""
        return int(self._contract.functions.dataOwnerCount().call())

    def registered_data_owners(self) -> int:
        """Data owners registered so far (``data_owner_count()`` once the roster is complete)."""
        return int(self._contract.functions.registeredDataOwners().call())

    def data_owners_hash(self) -> bytes:
        """The contract's running roster hash (:func:`roster_hash` of the registered owners)."""
        return bytes(self._contract.functions.dataOwnersHash().call())

    def is_data_owner(self, account: str) -> bool:
        account = checksum_address(account, field="account")
        return bool(self._contract.functions.isDataOwner(account).call())

    def manifest_hash(self) -> bytes:
        """Hash of the study manifest this deployment is bound to."""
        return bytes(self._contract.functions.manifestHash().call())

    def rounds(self) -> int:
        """The manifest's number of rounds: attestations are accepted for 1..rounds."""
        return int(self._contract.functions.rounds().call())

    def deadline(self) -> int:
        """Unix seconds from which settle() no longer waits for the final round."""
        return int(self._contract.functions.deadline().call())

    def verify_binding(
        self,
        *,
        manifest_hash: bytes,
        chain_id: int,
        committee: Sequence[str],
        quorum: int,
        data_owners: Sequence[str],
        rounds: int,
        study_id: bytes | None = None,
        deadline: int | None = None,
    ) -> None:
        """Check this deployment against an approved manifest before acting on it.

        Run by every party (data owners, committee members, auditors) once, before the
        first message of the study. Raises VerificationError naming the first field that
        differs, in the order: chain_id, code (the committed CohortStudy build),
        manifest_hash, committee, quorum, data_owners, rounds, then study_id and deadline
        when given. Rosters compare as sets (the contract enforces membership only); the
        data-owner roster is checked through its size and the contract's roster hash, and
        must be completely registered. BadInputError if an expected roster lists an address
        twice.
        """
        manifest_hash = _bytes32(manifest_hash, field="manifest_hash")
        expected_committee = _roster(committee, field="committee")
        expected_owners = _roster(data_owners, field="data_owners")
        if self._provider.chain_id != chain_id:
            raise VerificationError(
                f"chain_id: the provider's chain is {self._provider.chain_id}, "
                f"the manifest names {chain_id}"
            )
        if not matches_artifact(bytes(self._provider.web3.eth.get_code(self._address))):
            raise VerificationError(
                f"code: {self._address} does not run the committed CohortStudy build"
            )
        onchain_hash = self.manifest_hash()
        if onchain_hash != manifest_hash:
            raise VerificationError(
                f"manifest_hash: the contract is bound to 0x{onchain_hash.hex()}, "
                f"not 0x{manifest_hash.hex()}"
            )
        _same_roster("committee", self.committee(), expected_committee)
        onchain_quorum = self.quorum()
        if onchain_quorum != quorum:
            raise VerificationError(f"quorum: the contract has {onchain_quorum}, not {quorum}")
        self._verify_data_owners(expected_owners)
        onchain_rounds = self.rounds()
        if onchain_rounds != rounds:
            raise VerificationError(f"rounds: the contract has {onchain_rounds}, not {rounds}")
        if study_id is not None:
            expected_id = _bytes32(study_id, field="study_id")
            onchain_id = self.study_id()
            if onchain_id != expected_id:
                raise VerificationError(
                    f"study_id: the contract has 0x{onchain_id.hex()}, not 0x{expected_id.hex()}"
                )
        if deadline is not None:
            onchain_deadline = self.deadline()
            if onchain_deadline != deadline:
                raise VerificationError(
                    f"deadline: the contract has {onchain_deadline}, not {deadline}"
                )
        log.info(
            "study binding verified",
            extra=fields(contract=self._address, manifest_hash=manifest_hash.hex()),
        )

    def _verify_data_owners(self, expected: set[str]) -> None:
        count = self.data_owner_count()
        registered = self.registered_data_owners()
        if count != len(expected):
            raise VerificationError(
                f"data_owners: the contract's roster has {count} owners, "
                f"the manifest lists {len(expected)}"
            )
        if registered != count:
            raise VerificationError(
                f"data_owners: only {registered} of the contract's {count} owners are "
                "registered; the study accepts no attestation until all are"
            )
        if self.data_owners_hash() != roster_hash(expected):
            _same_roster("data_owners", self.data_owners(), expected)
            raise VerificationError(  # pragma: no cover - the events contradict the hash
                "data_owners: the contract's roster hash differs from the manifest's roster"
            )

    # ------------------------------------------------------------------ sponsor

    def fund(self, *, sponsor: str, amount_wei: int) -> None:
        """Add ``amount_wei`` to the bounty. Run by the sponsor before settlement."""
        self._transact("fund", sender=sponsor, value=amount_wei)

    def settle(self, *, sponsor: str) -> None:
        """Close the study and credit payouts. Run by the sponsor, once.

        Allowed once the final round (``rounds()``) is finalized or the chain's time has
        reached ``deadline()``; before that ProtocolAbort("settle rejected:
        StudyNotFinished(...)"). The contract credits contributors in ascending batches
        (:data:`ROSTER_BATCH` per transaction); the contributors are every finalized round's,
        from the ``RoundFinalized`` events. A settlement interrupted between batches resumes
        where the contract stopped.
        """
        contributors = ascending({a for r in self.finalized_events() for a in r.contributors})
        done = int(self._contract.functions.settledContributors().call())
        pending = contributors[done:]
        batches = [pending[i : i + ROSTER_BATCH] for i in range(0, len(pending), ROSTER_BATCH)]
        for batch in batches[:-1]:
            self._transact("settle", batch, sender=sponsor)
        receipt = self._transact("settle", batches[-1] if batches else [], sender=sponsor)
        (event,) = self._events_in(receipt, "Settled")
        log.info(
            "study settled",
            extra=fields(
                contract=self._address,
                bounty_wei=event["args"]["bounty"],
                total_contributions=event["args"]["totalContributions"],
                sponsor_credit_wei=event["args"]["sponsorCredit"],
            ),
        )

    # ------------------------------------------------------------------ committee

    def attestation_digest(
        self,
        *,
        round: int,
        aggregate_hash: bytes,
        contributors: Sequence[str],
        ledger_heads: LedgerHeads,
    ) -> bytes:
        """The digest a committee member signs for this deployment (computed locally)."""
        return attestation_digest(
            chain_id=self._provider.chain_id,
            contract=self._address,
            study_id=self.study_id(),
            round=round,
            aggregate_hash=aggregate_hash,
            contributors=contributors,
            ledger_heads=ledger_heads,
        )

    def submit_attestation(
        self,
        *,
        relayer: str,
        round: int,
        aggregate_hash: bytes,
        contributors: Sequence[str],
        ledger_heads: LedgerHeads,
        signature: bytes,
    ) -> bool:
        """Relay a member's signed attestation; True if it finalized ``round``.

        Run by the coordinator (``relayer`` pays gas). ``contributors`` may come in any order;
        they are sent in canonical order, the order the signature covers, with each one's
        (ledger head, micro-epsilon) from ``ledger_heads`` in the same order. Raises
        VerificationError for a bad signature, a non-member or a repeated attestation,
        BadInputError for a round outside 1..rounds() (``RoundOutOfRange``).
        """
        ordered = canonical_contributors(contributors)
        heads, epsilons = ledger_lists(ordered, ledger_heads)
        if not isinstance(aggregate_hash, bytes | bytearray) or len(aggregate_hash) != 32:
            raise BadInputError("aggregate_hash: expected 32 bytes")
        if not isinstance(signature, bytes | bytearray):
            raise BadInputError("signature: expected bytes")
        receipt = self._transact(
            "attest",
            round,
            bytes(aggregate_hash),
            ordered,
            heads,
            epsilons,
            bytes(signature),
            sender=relayer,
            action="attestation",
        )
        (attested,) = self._events_in(receipt, "Attested")
        finalized = bool(self._events_in(receipt, "RoundFinalized"))
        log.info(
            "attestation relayed",
            extra=fields(
                contract=self._address,
                round=round,
                member=attested["args"]["member"],
                votes=attested["args"]["votes"],
                finalized=finalized,
                gas_used=receipt["gasUsed"],
            ),
        )
        return finalized

    # ------------------------------------------------------------------ data owners

    def withdraw(self, *, account: str) -> int:
        """Pay ``account`` its credit and return the wei paid (0 if it has none).

        Run by a data owner (or the sponsor for refunds); ``account`` sends and pays gas.
        """
        if self.credit(account) == 0:
            return 0
        receipt = self._transact("withdraw", sender=account)
        (event,) = self._events_in(receipt, "Withdrawn")
        amount = int(event["args"]["amount"])
        log.info(
            "credit withdrawn",
            extra=fields(contract=self._address, account=account, amount_wei=amount),
        )
        return amount

    def release(self, *, account: str, relayer: str) -> int:
        """Pay ``account`` its credit, sent (and paid for) by ``relayer``; 0 if no credit.

        Run by the sponsor after settlement so that data owners need no gas of their own.
        The contract only ever pays ``account`` itself.
        """
        if self.credit(account) == 0:
            return 0
        receipt = self._transact("release", account, sender=relayer)
        (event,) = self._events_in(receipt, "Withdrawn")
        amount = int(event["args"]["amount"])
        log.info(
            "credit released",
            extra=fields(contract=self._address, account=account, amount_wei=amount),
        )
        return amount

    # ------------------------------------------------------------------ reads

    def finalized_hash(self, round: int) -> bytes | None:
        """The aggregate hash ``round`` was finalized with, or None if it is not final."""
        state = self._contract.functions
        if not state.isFinalized(round).call():
            return None
        return bytes(state.finalizedHash(round).call())

    def finalized(self, round: int) -> tuple[bytes, bytes] | None:
        """(aggregate hash, contributors hash) ``round`` was finalized with, or None if it is
        not final: two reads (the contract finalizes a round exactly when its aggregate hash
        is not zero). A round finalizes once and never changes afterwards, so the reads need
        no common block. :class:`cohort.bounties.reads.StudyReads` makes the same reads in
        one request."""
        state = self._contract.functions
        aggregate = bytes(state.finalizedHash(round).call())
        if aggregate == bytes(32):
            return None
        return aggregate, bytes(state.finalizedContributorsHash(round).call())

    def is_finalized(self, round: int) -> bool:
        return bool(self._contract.functions.isFinalized(round).call())

    def finalized_rounds(self) -> int:
        return int(self._contract.functions.finalizedRounds().call())

    def has_attested(self, round: int, member: str) -> bool:
        member = checksum_address(member, field="member")
        return bool(self._contract.functions.hasAttested(round, member).call())

    def votes(
        self,
        *,
        round: int,
        aggregate_hash: bytes,
        contributors: Sequence[str],
        ledger_heads: LedgerHeads,
    ) -> int:
        """Members that attested exactly this result for ``round``."""
        digest = contributors_hash(contributors)
        ledger = ledger_hash(contributors, ledger_heads)
        fn = self._contract.functions.votes(round, bytes(aggregate_hash), digest, ledger)
        return int(fn.call())

    def contributions(self, owner: str) -> int:
        owner = checksum_address(owner, field="owner")
        return int(self._contract.functions.contributions(owner).call())

    def total_contributions(self) -> int:
        return int(self._contract.functions.totalContributions().call())

    def credit(self, account: str) -> int:
        account = checksum_address(account, field="account")
        return int(self._contract.functions.credit(account).call())

    def bounty_wei(self) -> int:
        return int(self._contract.functions.bounty().call())

    def is_settled(self) -> bool:
        """Whether settlement has completed (every contributor credited)."""
        return bool(self._contract.functions.settled().call())

    def is_settling(self) -> bool:
        """Whether settlement has begun: funding and attestation are closed from then on."""
        return bool(self._contract.functions.settling().call())

    # ------------------------------------------------------------------ audit

    def finalized_events(self) -> list[FinalizedRound]:
        """Every ``RoundFinalized`` event since deployment, in chain order (auditors)."""
        return [
            FinalizedRound(
                round=int(e["args"]["round"]),
                aggregate_hash=bytes(e["args"]["aggregateHash"]),
                contributors_hash=bytes(e["args"]["contributorsHash"]),
                contributors=tuple(str(a) for a in e["args"]["contributors"]),
                block_number=int(e["blockNumber"]),
                tx_hash=e["transactionHash"].to_0x_hex(),
            )
            for e in self._logs("RoundFinalized")
        ]

    def ledger_head_events(self) -> list[LedgerHeadEvent]:
        """Every ``LedgerHead`` event since deployment, in chain order (auditors)."""
        return [
            LedgerHeadEvent(
                round=int(e["args"]["round"]),
                contributor=str(e["args"]["contributor"]),
                head=bytes(e["args"]["head"]),
                epsilon_micro=int(e["args"]["epsilonMicro"]),
                block_number=int(e["blockNumber"]),
                tx_hash=e["transactionHash"].to_0x_hex(),
            )
            for e in self._logs("LedgerHead")
        ]

    def attestation_events(self) -> list[AttestationEvent]:
        """Every ``Attested`` event since deployment, late ones included (auditors)."""
        return [
            AttestationEvent(
                round=int(e["args"]["round"]),
                member=str(e["args"]["member"]),
                aggregate_hash=bytes(e["args"]["aggregateHash"]),
                contributors_hash=bytes(e["args"]["contributorsHash"]),
                votes=int(e["args"]["votes"]),
                relayer=str(e["args"]["relayer"]),
                block_number=int(e["blockNumber"]),
                tx_hash=e["transactionHash"].to_0x_hex(),
            )
            for e in self._logs("Attested")
        ]

    def payouts(self) -> dict[str, int]:
        """Wei credited to each account at settlement (empty before), from ``Credited`` events."""
        credited: dict[str, int] = {}
        for e in self._logs("Credited"):
            account = str(e["args"]["account"])
            credited[account] = credited.get(account, 0) + int(e["args"]["amount"])
        return credited

    # ------------------------------------------------------------------ internals

    def _transact(
        self, name: str, *args: Any, sender: str, value: int = 0, action: str | None = None
    ) -> TxReceipt:
        fn = self._contract.functions[name](*args)
        return self._provider.transact(
            fn, sender=sender, value=value, action=action or name, error_kinds=ERROR_KINDS
        )

    def _events_in(self, receipt: TxReceipt, event: str) -> list[EventData]:
        handler = self._contract.events[event]()
        return list(handler.process_receipt(receipt, errors=DISCARD))

    def _logs(self, event: str) -> list[EventData]:
        handler = self._contract.events[event]()
        return list(handler.get_logs(from_block=self._deploy_block, to_block="latest"))


def _bytes32(value: bytes, *, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        raise BadInputError(f"{field}: expected 32 bytes")
    return bytes(value)


def _roster(addresses: Sequence[str], *, field: str) -> set[str]:
    if isinstance(addresses, str):
        raise BadInputError(f"{field}: expected a sequence of addresses, got a string")
    roster: set[str] = set()
    for value in addresses:
        address = checksum_address(value, field=field)
        if address in roster:
            raise BadInputError(f"{field}: {address} listed twice")
        roster.add(address)
    return roster


def _same_roster(field: str, onchain: Sequence[str], expected: set[str]) -> None:
    actual = {checksum_address(a, field=field) for a in onchain}
    if actual != expected:
        missing = ", ".join(sorted(expected - actual)) or "none"
        extra = ", ".join(sorted(actual - expected)) or "none"
        raise VerificationError(
            f"{field}: the contract's roster differs from the manifest "
            f"(missing: {missing}; not in the manifest: {extra})"
        )


def matches_artifact(code: bytes) -> bool:
    """Whether deployed ``code`` equals the artifact's, ignoring the immutables' bytes."""
    artifact = load_artifact()
    expected = bytearray.fromhex(str(artifact["deployedBytecode"])[2:])
    if len(code) != len(expected):
        return False
    actual = bytearray(code)
    refs = cast(Mapping[str, list[dict[str, int]]], artifact.get("immutableReferences", {}))
    for ranges in refs.values():
        for r in ranges:
            start, length = int(r["start"]), int(r["length"])
            actual[start : start + length] = bytes(length)
            expected[start : start + length] = bytes(length)
    return actual == expected
