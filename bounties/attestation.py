"""Off-chain half of a committee attestation: the digest a member signs and the signature.

This module is run by committee members (to sign) and by auditors (to re-derive digests);
it never talks to a chain. It mirrors ``CohortStudy._digest`` exactly::

    contributorsHash = keccak256(abi.encodePacked(contributors))   # 32-byte padded words
    ledgerHash = keccak256(abi.encode(bytes32[] heads, uint256[] epsilonsMicro))
    structHash = keccak256(abi.encode(ATTESTATION_TYPEHASH, chainId, study, studyId,
                                      round, aggregateHash, contributorsHash, ledgerHash))
    digest = keccak256("\\x19Ethereum Signed Message:\\n32" || structHash)       # EIP-191

``ATTESTATION_TYPEHASH`` doubles as the domain-separation tag; the chain id, the contract
address and the study id bind a signature to one deployment, the round and the contributor
set to one result. ``heads`` and ``epsilonsMicro`` hold each contributor's privacy-ledger
head after the round and its cumulative epsilon (:func:`epsilon_micro`), in canonical
contributor order, as each contributor signed them to the committee.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

from eth_abi.abi import encode as abi_encode
from eth_keys.datatypes import PrivateKey, Signature
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError as KeyValidationError

from cohort.errors import BadInputError, VerificationError

ATTESTATION_TYPE = (
    "cohort/v1/attestation(uint256 chainId,address study,bytes32 studyId,uint256 round,"
    "bytes32 aggregateHash,bytes32 contributorsHash,bytes32 ledgerHash)"
)
ATTESTATION_TYPEHASH: bytes = keccak(text=ATTESTATION_TYPE)
EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"
SIGNATURE_SIZE = 65
HASH_SIZE = 32
UINT256_MAX = 2**256 - 1
# secp256k1 group order; a signature with s > n/2 is the malleable twin of one with n - s.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MICRO = 1_000_000
LedgerHeads = Mapping[str, tuple[bytes, int]]
"""Contributor address -> (ledger head after the round, cumulative micro-epsilon)."""

__all__ = [
    "ATTESTATION_TYPEHASH",
    "LedgerHeads",
    "ascending",
    "attestation_digest",
    "canonical_contributors",
    "checksum_address",
    "contributors_hash",
    "epsilon_micro",
    "ledger_hash",
    "ledger_lists",
    "recover_signer",
    "roster_hash",
    "sign_attestation",
    "unreported_ledger_heads",
]


def checksum_address(value: str, *, field: str) -> ChecksumAddress:
    """EIP-55 form of ``value``; BadInputError naming ``field`` if it is not an address."""
    checksummed = _checksummed(value) if isinstance(value, str) else None
    if checksummed is None:
        raise BadInputError(f"{field}: {value!r} is not a 20-byte hex address")
    return checksummed


# A member checksums every contributor of every round it attests (thousands of Keccak
# hashes per round at a large roster): the same few addresses each time, so remembered.
@functools.lru_cache(maxsize=8192)
def _checksummed(value: str) -> ChecksumAddress | None:
    return to_checksum_address(value) if is_address(value) else None


def ascending(addresses: Iterable[str]) -> list[str]:
    """Checksummed addresses sorted as 160-bit numbers: the order the contract demands of
    contributors, roster registration and settlement batches (no duplicate check)."""
    return sorted(addresses, key=lambda a: int(a, 16))


def canonical_contributors(addresses: Iterable[str]) -> list[str]:
    """Contributors in the order the contract demands: strictly increasing as 160-bit numbers.

    Accepts any order and any hex case; raises BadInputError on an empty list, a malformed
    address or a duplicate.
    """
    checksummed: list[str] = [checksum_address(a, field="contributors") for a in addresses]
    if not checksummed:
        raise BadInputError("contributors: at least one data owner is required")
    ordered = ascending(checksummed)
    for previous, current in itertools.pairwise(ordered):
        if previous == current:
            raise BadInputError(f"contributors: {current} is listed twice")
    return ordered


def contributors_hash(contributors: Sequence[str]) -> bytes:
    """keccak256(abi.encodePacked(address[])) over the canonical order of ``contributors``."""
    ordered = canonical_contributors(contributors)
    return keccak(b"".join(bytes.fromhex(a[2:]).rjust(32, b"\x00") for a in ordered))


def roster_hash(owners: Iterable[str]) -> bytes:
    """The contract's ``dataOwnersHash`` for a complete roster of ``owners`` (any order).

    A keccak256 chain over the canonical (strictly increasing) order: h_0 = 32 zero bytes,
    h_i = keccak256(abi.encode(h_{i-1}, owner_i)); it does not depend on how the roster was
    split into registration batches. BadInputError on an empty roster or a duplicate.
    """
    head = bytes(32)
    for owner in canonical_contributors(owners):
        head = keccak(head + bytes.fromhex(owner[2:]).rjust(32, b"\x00"))
    return head


def epsilon_micro(epsilon: float) -> int:
    """Cumulative epsilon as the chain records it: ``floor(epsilon * 1e6)``, an integer.

    Run by data owners (to commit) and auditors (to compare): the same float always gives
    the same integer. Raises BadInputError for a negative or non-finite epsilon.
    """
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise BadInputError(f"epsilon: expected a number, got {type(epsilon).__name__}")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise BadInputError(f"epsilon: {epsilon} is not a finite non-negative number")
    return math.floor(epsilon * MICRO)


def ledger_lists(
    contributors: Sequence[str], ledger_heads: LedgerHeads
) -> tuple[list[bytes], list[int]]:
    """``(heads, epsilonsMicro)`` in canonical contributor order, as ``attest`` takes them.

    ``ledger_heads`` must name exactly the contributors (any hex case); BadInputError
    otherwise, or for a head that is not 32 bytes.
    """
    ordered = canonical_contributors(contributors)
    by_address: dict[str, tuple[bytes, int]] = {
        checksum_address(a, field="ledger_heads"): v for a, v in ledger_heads.items()
    }
    if set(by_address) != set(ordered) or len(by_address) != len(ledger_heads):
        raise BadInputError("ledger_heads: must name exactly the contributors, once each")
    heads = [_hash32(by_address[a][0], field="ledger_heads") for a in ordered]
    epsilons = [_uint(by_address[a][1], field="ledger_heads epsilon") for a in ordered]
    return heads, epsilons


def unreported_ledger_heads(contributors: Sequence[str]) -> dict[str, tuple[bytes, int]]:
    """Zero head and zero epsilon for each contributor: "no ledger head reported".

    What members attest until data owners sign their heads to the committee; an auditor
    comparing a published ledger with the chain sees every such round as a mismatch, never
    as a match.
    """
    return {a: (bytes(HASH_SIZE), 0) for a in canonical_contributors(contributors)}


def ledger_hash(contributors: Sequence[str], ledger_heads: LedgerHeads) -> bytes:
    """keccak256(abi.encode(bytes32[] heads, uint256[] epsilonsMicro)), canonical order."""
    heads, epsilons = ledger_lists(contributors, ledger_heads)
    return bytes(keccak(abi_encode(["bytes32[]", "uint256[]"], [heads, epsilons])))


def _hash32(value: bytes, *, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise BadInputError(f"{field}: expected {HASH_SIZE} bytes")
    return bytes(value)


def _uint(value: int, *, field: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"{field}: expected an integer, got {type(value).__name__}")
    if not minimum <= value <= UINT256_MAX:
        raise BadInputError(f"{field}: {value} is outside [{minimum}, 2**256 - 1]")
    return value


def attestation_digest(
    *,
    chain_id: int,
    contract: str,
    study_id: bytes,
    round: int,
    aggregate_hash: bytes,
    contributors: Sequence[str],
    ledger_heads: LedgerHeads,
) -> bytes:
    """The 32-byte EIP-191 digest that ``CohortStudy.attest`` recovers the signer from.

    ``contributors`` may come in any order; they are put in canonical order first, so every
    member that agrees on the *set* signs the same digest. ``ledger_heads`` maps each
    contributor to its (ledger head, micro-epsilon) for the round.
    """
    struct_hash = keccak(
        abi_encode(
            [
                "bytes32",
                "uint256",
                "address",
                "bytes32",
                "uint256",
                "bytes32",
                "bytes32",
                "bytes32",
            ],
            [
                ATTESTATION_TYPEHASH,
                _uint(chain_id, field="chain_id", minimum=1),
                checksum_address(contract, field="contract"),
                _hash32(study_id, field="study_id"),
                _uint(round, field="round"),
                _hash32(aggregate_hash, field="aggregate_hash"),
                contributors_hash(contributors),
                ledger_hash(contributors, ledger_heads),
            ],
        )
    )
    return bytes(keccak(EIP191_PREFIX + struct_hash))


def sign_attestation(private_key: bytes, digest: bytes) -> bytes:
    """Sign ``digest`` (from :func:`attestation_digest`): 65 bytes r || s || v, v in {27, 28}.

    This method is run by a committee member. ``s`` is always in the lower half of the curve
    order, as the contract requires. The key never appears in an error message.
    """
    if not isinstance(private_key, bytes | bytearray) or len(private_key) != HASH_SIZE:
        raise BadInputError(f"private_key: expected {HASH_SIZE} bytes")
    digest = _hash32(digest, field="digest")
    try:
        key = PrivateKey(bytes(private_key))
    except KeyValidationError:
        raise BadInputError("private_key: not a valid secp256k1 key") from None
    signature = key.sign_msg_hash(digest)
    r, s, v = int(signature.r), int(signature.s), int(signature.v)
    if s > SECP256K1_N // 2:  # eth-keys already normalizes; keep the contract's rule explicit
        s, v = SECP256K1_N - s, v ^ 1
    return r.to_bytes(32, "big") + s.to_bytes(32, "big") + bytes([27 + v])


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Address that produced ``signature`` over ``digest``, by the contract's rules.

    Raises VerificationError on a wrong length, a ``v`` outside {27, 28}, a high ``s`` or a
    signature that recovers no key, exactly where the contract would revert.
    """
    digest = _hash32(digest, field="digest")
    if not isinstance(signature, bytes | bytearray):
        raise BadInputError("signature: expected bytes")
    if len(signature) != SIGNATURE_SIZE:
        raise VerificationError(f"signature: expected {SIGNATURE_SIZE} bytes, got {len(signature)}")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28) or not 0 < r < SECP256K1_N or not 0 < s <= SECP256K1_N // 2:
        raise VerificationError("signature: bad v, r or s (the contract rejects it)")
    try:
        public = Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
    except KeyValidationError:
        raise VerificationError("signature: recovers no public key") from None
    return str(public.to_checksum_address())
