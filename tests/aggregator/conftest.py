"""Shared fixtures for the committee tests: a CKKS key pair, data owners, member keys, a
signed study manifest over real identities, and in-process members approved for it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from committee_testkit import (
    DEALER,
    LENGTH,
    MEMBER_IDS,
    OWNER_IDS,
    Coordinator,
    MakeMember,
    MakeSigned,
    Owner,
    SealFn,
    build_manifest,
    dealt_setup,
    entry_for,
)
from eth_account import Account

from cohort.aggregator.control import ControlSigner
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import CommitteeMember, MemberInfo
from cohort.aggregator.modes import CkksSpec
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity
from cohort.federation.approval import Role, approve
from cohort.federation.manifest import CommitteeEntry, SignedManifest


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
def coordinator() -> Identity:
    return Identity.generate("coordinator", seed=b"\xc0" * 32)


@pytest.fixture(scope="session")
def sponsor() -> Identity:
    return Identity.generate("sponsor", seed=b"\x5a" * 32)


@pytest.fixture(scope="session")
def make_signed(
    member_keys: dict[str, MemberKeys],
    owners: dict[str, Owner],
    coordinator: Identity,
    sponsor: Identity,
) -> MakeSigned:
    """make_signed(committee=None, **manifest changes) -> a fresh signed manifest."""

    def make(committee: Sequence[CommitteeEntry] | None = None, **changes: Any) -> SignedManifest:
        entries = committee or [entry_for(member_keys[m]) for m in MEMBER_IDS]
        return build_manifest(
            committee=entries,
            owners=list(owners.values()),
            coordinator=coordinator,
            sponsor=sponsor,
            **changes,
        )

    return make


@pytest.fixture(scope="session")
def signed(make_signed: MakeSigned) -> SignedManifest:
    """The default study (no TLS; endpoints are placeholders for in-process members)."""
    return make_signed()


@pytest.fixture(scope="session")
def setup(signed: SignedManifest, ckks: CkksSecretContext, owners: dict[str, Owner]) -> CkksSpec:
    """The default study's CKKS set-up, signed by its key dealer."""
    return dealt_setup(owners[DEALER].identity, signed.study_id, ckks.public().to_bytes())


@pytest.fixture
def signer(coordinator: Identity) -> ControlSigner:
    return ControlSigner(coordinator)


@pytest.fixture
def coord(signer: ControlSigner, signed: SignedManifest, setup: CkksSpec) -> Coordinator:
    return Coordinator(signer, signed, setup)


@pytest.fixture
def make_member(
    tmp_path: Path, member_keys: dict[str, MemberKeys], signed: SignedManifest
) -> Iterator[MakeMember]:
    """make_member(member_id, *, approve=(signed,), **kwargs) -> an in-process member with
    its work directory under tmp_path and its operator's approvals; closed at teardown."""
    made: list[CommitteeMember] = []

    def make(
        member_id: str, *, approved: Sequence[SignedManifest] = (signed,), **kwargs: Any
    ) -> CommitteeMember:
        keys = member_keys[member_id]
        home = tmp_path / member_id
        for manifest in approved:
            approve(manifest, workdir=home, identity=keys.identity, role=Role.MEMBER)
        m = CommitteeMember(keys, workdir=home, **kwargs)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def member(make_member: MakeMember, coord: Coordinator) -> CommitteeMember:
    """member-1, configured for the default study with round 1 open."""
    m = make_member("member-1")
    coord.configure(m)
    coord.open_round(m, 1)
    return m


@pytest.fixture
def members(make_member: MakeMember, coord: Coordinator) -> list[CommitteeMember]:
    """All three members, configured, round 1 open."""
    out = []
    for mid in MEMBER_IDS:
        m = make_member(mid)
        coord.configure(m)
        coord.open_round(m, 1)
        out.append(m)
    return out


@pytest.fixture
def seal(ckks: CkksSecretContext, owners: dict[str, Owner], signed: SignedManifest) -> SealFn:
    """seal(owner_id, member_info, round=1, vector=None, study_id=<default>) -> envelope bytes.

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
        study_id: str | None = None,
    ) -> bytes:
        owner = owners[owner_id]
        values = np.asarray(owner.vector if vector is None else vector, dtype=np.float64)
        key = (owner_id, values.tobytes())
        if key not in ciphertexts:
            ciphertexts[key] = ckks.encrypt(values)
        envelope = build_envelope(
            owner.identity,
            recipient.identity,
            study_id=study_id or signed.study_id,
            round=round,
            payload=ciphertexts[key],
        )
        return envelope.to_bytes()

    return make


@pytest.fixture
def plain_sum(owners: dict[str, Owner]) -> Callable[[Sequence[str]], np.ndarray]:
    """Oracle: the plaintext sum of the given owners' updates."""

    def total(ids: Sequence[str]) -> np.ndarray:
        return np.asarray(np.sum([owners[i].vector for i in ids], axis=0))

    return total
