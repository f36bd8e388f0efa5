"""Shared fixtures for the committee tests: a CKKS key pair, data owners, member keys."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from committee_testkit import (
    CHAIN_ID,
    CONTRACT,
    LENGTH,
    MEMBER_IDS,
    OWNER_IDS,
    STUDY,
    Owner,
    SealFn,
)
from eth_account import Account

from cohort.aggregator.member import (
    CommitteeMember,
    DataOwner,
    MemberInfo,
    MemberKeys,
    StudyConfig,
)
from cohort.aggregator.modes import CkksSpec
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity


@pytest.fixture(scope="session")
def ckks() -> CkksSecretContext:
    """The data owners' CKKS context (secret key stays in the tests, as with data owners)."""
    return CkksSecretContext.generate()


@pytest.fixture(scope="session")
def owners() -> dict[str, Owner]:
    rng = np.random.default_rng(7)
    return {
        pid: Owner(
            Identity.generate(pid, seed=bytes([i + 1]) * 32),
            str(Account.create().address),
            rng.normal(0.0, 1.0, LENGTH),
        )
        for i, pid in enumerate(OWNER_IDS)
    }


@pytest.fixture(scope="session")
def member_keys() -> dict[str, MemberKeys]:
    return {mid: MemberKeys.generate(mid) for mid in MEMBER_IDS}


@pytest.fixture(scope="session")
def study(ckks: CkksSecretContext, owners: dict[str, Owner]) -> StudyConfig:
    return StudyConfig(
        study_id=STUDY,
        owners=tuple(DataOwner(o.identity.public, o.payout) for o in owners.values()),
        mode=CkksSpec(ckks.public().to_bytes()),
        update_length=LENGTH,
        committee=MEMBER_IDS,
        quorum=2,
        chain_id=CHAIN_ID,
        contract=CONTRACT,
    )


@pytest.fixture
def member(member_keys: dict[str, MemberKeys], study: StudyConfig) -> CommitteeMember:
    """member-1, configured for the study with round 1 open."""
    m = CommitteeMember(member_keys["member-1"])
    m.configure(study)
    m.open_round(1)
    return m


@pytest.fixture
def seal(ckks: CkksSecretContext, owners: dict[str, Owner]) -> SealFn:
    """seal(owner_id, member_info, round=1, vector=None, study_id=STUDY) -> envelope bytes.

    As a real data owner does in CKKS mode, each update is encrypted once and the same
    ciphertext goes to every member (that is what lets honest members agree bit for bit).
    """
    ciphertexts: dict[tuple[str, bytes], bytes] = {}

    def make(
        owner_id: str,
        recipient: MemberInfo,
        *,
        round: int = 1,
        vector: np.ndarray | None = None,
        study_id: str = STUDY,
    ) -> bytes:
        owner = owners[owner_id]
        values = np.asarray(owner.vector if vector is None else vector, dtype=np.float64)
        key = (owner_id, values.tobytes())
        if key not in ciphertexts:
            ciphertexts[key] = ckks.encrypt(values)
        payload = ciphertexts[key]
        envelope = build_envelope(
            owner.identity, recipient.identity, study_id=study_id, round=round, payload=payload
        )
        return envelope.to_bytes()

    return make


@pytest.fixture
def plain_sum(owners: dict[str, Owner]) -> Callable[[Sequence[str]], np.ndarray]:
    """Oracle: the plaintext sum of the given owners' updates."""

    def total(ids: Sequence[str]) -> np.ndarray:
        return np.asarray(np.sum([owners[i].vector for i in ids], axis=0))

    return total


@pytest.fixture
def members(member_keys: dict[str, MemberKeys], study: StudyConfig) -> list[CommitteeMember]:
    """All three members, configured, round 1 open."""
    out = []
    for mid in MEMBER_IDS:
        m = CommitteeMember(member_keys[mid])
        m.configure(study)
        m.open_round(1)
        out.append(m)
    return out
