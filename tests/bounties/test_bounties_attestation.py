"""Attestation digest and signatures, off-chain: pinned vectors, an independent oracle and
properties (order independence, binding of every field, low-s signatures)."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi.abi import encode
from eth_abi.packed import encode_packed
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.bounties.attestation import (
    ATTESTATION_TYPEHASH,
    SECP256K1_N,
    attestation_digest,
    canonical_contributors,
    contributors_hash,
    epsilon_micro,
    recover_signer,
    sign_attestation,
)
from cohort.errors import BadInputError, VerificationError

# Pinned vector: changing the digest construction breaks every deployed committee's
# signatures, so it must be a deliberate change (and a new type string).
VECTOR: dict[str, Any] = {
    "chain_id": 1,
    "contract": "0x00000000000000000000000000000000000000c0",
    "study_id": keccak(text="vector study"),
    "round": 3,
    "aggregate_hash": keccak(text="vector aggregate"),
    "contributors": [
        "0x00000000000000000000000000000000000000b2",
        "0x00000000000000000000000000000000000000a1",
    ],
    "ledger_heads": {
        "0x00000000000000000000000000000000000000b2": (keccak(text="vector head b2"), 2_999_999),
        "0x00000000000000000000000000000000000000a1": (keccak(text="vector head a1"), 1_500_000),
    },
}
VECTOR_DIGEST = "b5dbc1408cf2979baf0727612a1c0c1f0e895d5355e14657ab548f3f4b11e03e"
VECTOR_KEY = keccak(text="vector member key")
VECTOR_SIGNER = "0x716Dfd32C43Ce3DE2D267B17425F52282c96Af06"
VECTOR_SIGNATURE = (
    "d449a61b1bb4fb866394a3327ff6fa15f8cf0905d3a934ab0666dd87ea015076"
    "3abfc41ec6495aee3cd5fb1be8841cc172f17c30c7f8dc1eeea13c6d24e910c31b"
)

addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))


def oracle_digest(
    *,
    chain_id: int,
    contract: str,
    study_id: bytes,
    round: int,
    aggregate_hash: bytes,
    contributors: list[str],
    ledger_heads: dict[str, tuple[bytes, int]],
) -> bytes:
    """Independent construction from eth-abi's encoder and eth-account's EIP-191 message.

    Solidity's abi.encodePacked pads the *elements* of an array to 32 bytes, so the packed
    address[] is the concatenation of abi-encoded addresses. (eth-abi's encode_packed does
    not pad array elements: see test_eth_abi_packed_arrays_differ_from_solidity.)
    """
    ordered = sorted((c.lower() for c in contributors), key=lambda a: int(a, 16))
    packed = b"".join(encode(["address"], [a]) for a in ordered)
    by_lower = {a.lower(): v for a, v in ledger_heads.items()}
    heads = [by_lower[a][0] for a in ordered]
    epsilons = [by_lower[a][1] for a in ordered]
    ledger = keccak(encode(["bytes32[]", "uint256[]"], [heads, epsilons]))
    struct_hash = keccak(
        encode(
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
                chain_id,
                contract,
                study_id,
                round,
                aggregate_hash,
                keccak(packed),
                ledger,
            ],
        )
    )
    message = encode_defunct(primitive=struct_hash)
    return keccak(b"\x19" + message.version + message.header + message.body)


def test_eth_abi_packed_arrays_differ_from_solidity() -> None:
    address = "0x00000000000000000000000000000000000000a1"
    assert len(encode_packed(["address[]"], [[address]])) == 20  # not what Solidity hashes
    assert contributors_hash([address]) == keccak(encode(["address"], [address]))


def test_typehash_is_the_documented_type_string() -> None:
    assert (
        keccak(
            text="cohort/v1/attestation(uint256 chainId,address study,bytes32 studyId,"
            "uint256 round,bytes32 aggregateHash,bytes32 contributorsHash,bytes32 ledgerHash)"
        )
        == ATTESTATION_TYPEHASH
    )


def test_pinned_vector() -> None:
    digest = attestation_digest(**VECTOR)
    assert digest.hex() == VECTOR_DIGEST
    assert digest == oracle_digest(**VECTOR)
    signature = sign_attestation(VECTOR_KEY, digest)
    assert signature.hex() == VECTOR_SIGNATURE
    assert recover_signer(digest, signature) == VECTOR_SIGNER
    assert Account.from_key(VECTOR_KEY).address == VECTOR_SIGNER


def test_eth_account_recovers_the_same_signer() -> None:
    struct_digest = attestation_digest(**VECTOR)
    signature = sign_attestation(VECTOR_KEY, struct_digest)
    # eth-account applies the EIP-191 prefix itself: recover from the raw digest instead.
    assert Account._recover_hash(struct_digest, signature=signature) == VECTOR_SIGNER


@settings(max_examples=40, deadline=None)
@given(
    chain_id=st.integers(min_value=1, max_value=2**64),
    contract=addresses,
    study_id=st.binary(min_size=32, max_size=32),
    round=st.integers(min_value=0, max_value=2**256 - 1),
    aggregate_hash=st.binary(min_size=32, max_size=32),
    contributors=st.lists(addresses, min_size=1, max_size=6, unique_by=lambda a: a.lower()),
    shuffle=st.randoms(use_true_random=False),
    epsilon=st.integers(min_value=0, max_value=2**64),
)
def test_digest_matches_oracle_in_any_contributor_order(
    chain_id: int,
    contract: str,
    study_id: bytes,
    round: int,
    aggregate_hash: bytes,
    contributors: list[str],
    shuffle: Any,
    epsilon: int,
) -> None:
    fields: dict[str, Any] = {
        "chain_id": chain_id,
        "contract": contract,
        "study_id": study_id,
        "round": round,
        "aggregate_hash": aggregate_hash,
    }
    fields["ledger_heads"] = {
        c: (keccak(text=c.lower()), epsilon + i) for i, c in enumerate(contributors)
    }
    digest = attestation_digest(**fields, contributors=contributors)
    shuffled = list(contributors)
    shuffle.shuffle(shuffled)
    assert (
        attestation_digest(**fields, contributors=[c.upper().replace("0X", "0x") for c in shuffled])
        == digest
    )
    assert digest == oracle_digest(**fields, contributors=contributors)


def test_every_field_changes_the_digest() -> None:
    base = attestation_digest(**VECTOR)
    changes: dict[str, Any] = {
        "chain_id": 2,
        "contract": "0x00000000000000000000000000000000000000c1",
        "study_id": keccak(text="another study"),
        "round": 4,
        "aggregate_hash": keccak(text="another aggregate"),
        "ledger_heads": {**VECTOR["ledger_heads"], VECTOR["contributors"][0]: (bytes(32), 0)},
    }
    digests = {attestation_digest(**{**VECTOR, name: value}) for name, value in changes.items()}
    assert base not in digests
    assert len(digests) == len(changes)


@settings(max_examples=25, deadline=None)
@given(key=keys, digest=st.binary(min_size=32, max_size=32))
def test_signatures_are_low_s_and_recover(key: bytes, digest: bytes) -> None:
    signature = sign_attestation(key, digest)
    assert len(signature) == 65
    assert signature[64] in (27, 28)
    assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2
    assert recover_signer(digest, signature) == Account.from_key(key).address


def test_ledger_heads_must_name_exactly_the_contributors() -> None:
    heads = VECTOR["ledger_heads"]
    first = VECTOR["contributors"][0]
    for bad in [
        {first: heads[first]},  # one missing
        {**heads, "0x00000000000000000000000000000000000000d4": (bytes(32), 0)},  # one extra
        {**heads, first.upper().replace("0X", "0x"): heads[first]},  # one twice
    ]:
        with pytest.raises(BadInputError, match="ledger_heads: must name exactly"):
            attestation_digest(**{**VECTOR, "ledger_heads": bad})
    with pytest.raises(BadInputError, match="ledger_heads: expected 32 bytes"):
        attestation_digest(**{**VECTOR, "ledger_heads": {**heads, first: (b"x", 0)}})
    assert epsilon_micro(1.5) == 1_500_000
    assert epsilon_micro(0.0) == 0
    with pytest.raises(BadInputError, match="epsilon"):
        epsilon_micro(float("nan"))


def test_recover_rejects_what_the_contract_rejects() -> None:
    digest = attestation_digest(**VECTOR)
    good = sign_attestation(VECTOR_KEY, digest)
    s = int.from_bytes(good[32:64], "big")
    twin = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([good[64] ^ 1])
    for bad in [good[:64], good[:64] + b"\x1d", twin, bytes(64) + b"\x1b"]:
        with pytest.raises(VerificationError, match="signature"):
            recover_signer(digest, bad)


def test_canonical_contributors() -> None:
    a = "0x00000000000000000000000000000000000000a1"
    b = "0x00000000000000000000000000000000000000B2"
    big = "0xfF00000000000000000000000000000000000000"
    ordered = canonical_contributors([big, b, a])
    assert [int(x, 16) for x in ordered] == sorted(int(x, 16) for x in [a, b, big])
    assert ordered == [
        "0x00000000000000000000000000000000000000A1",  # EIP-55 checksummed
        "0x00000000000000000000000000000000000000b2",
        big,
    ]
    with pytest.raises(BadInputError, match="listed twice"):
        canonical_contributors([a, a.upper().replace("0X", "0x")])
    with pytest.raises(BadInputError, match="at least one"):
        canonical_contributors([])
    with pytest.raises(BadInputError, match="not a 20-byte hex address"):
        canonical_contributors(["0x1234"])
    assert contributors_hash([b, a]) == contributors_hash([a, b])


def test_bad_inputs_name_the_field_and_never_the_key() -> None:
    digest = attestation_digest(**VECTOR)
    short_key = b"\x42" * 31
    with pytest.raises(BadInputError, match="private_key") as info:
        sign_attestation(short_key, digest)
    assert short_key.hex() not in str(info.value)
    with pytest.raises(BadInputError, match="private_key: not a valid"):
        sign_attestation(SECP256K1_N.to_bytes(32, "big"), digest)
    with pytest.raises(BadInputError, match="digest"):
        sign_attestation(VECTOR_KEY, digest[:31])
    for name, value in [
        ("study_id", b"x"),
        ("aggregate_hash", bytes(31)),
        ("round", -1),
        ("chain_id", 0),
        ("contract", "0xnope"),
    ]:
        with pytest.raises(BadInputError, match=name):
            attestation_digest(**{**VECTOR, name: value})
