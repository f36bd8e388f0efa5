"""The study manifest, its signature, approvals and the hospital's local policy."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, ConfigError, VerificationError
from cohort.federation.approval import Role, approve, approved_manifest, check_study_id
from cohort.federation.manifest import Manifest, SecureMode, SignedManifest, new_nonce
from cohort.federation.policy import HospitalPolicy

VECTORS = Path(__file__).parents[1] / "vectors"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen", VECTORS / "gen_manifest_vectors.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
BASE, SPONSOR = GEN.base_manifest()


def test_round_trip_and_id_is_the_hash_of_the_canonical_form() -> None:
    signed = SignedManifest.sign(BASE, SPONSOR)
    again = SignedManifest.from_bytes(signed.to_bytes())
    assert again.manifest == BASE
    assert again.study_id == BASE.study_id == BASE.digest().hex()
    assert len(BASE.study_id) == 64


@settings(max_examples=30, deadline=None)
@given(
    rounds=st.integers(1, 10_000),
    epsilon=st.floats(0.01, 100, allow_nan=False),
    quorum=st.integers(2, 3),
    min_clients=st.integers(2, 3),
)
def test_every_term_changes_the_study_id(
    rounds: int, epsilon: float, quorum: int, min_clients: int
) -> None:
    changed = dataclasses.replace(
        BASE,
        rounds=rounds,
        dp=dataclasses.replace(BASE.dp, epsilon=epsilon),
        quorum=quorum,
        min_clients=min_clients,
    )
    same = (rounds, epsilon, quorum, min_clients) == (5, 3.0, 2, 2)
    assert (changed.study_id == BASE.study_id) is same
    assert Manifest.from_dict(json.loads(changed.canonical())) == changed


def test_the_nonce_makes_equal_terms_distinct_studies() -> None:
    a = dataclasses.replace(BASE, nonce=new_nonce())
    b = dataclasses.replace(BASE, nonce=new_nonce())
    assert a.study_id != b.study_id


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"quorum": 1}, "strict majority"),
        ({"min_clients": 1}, "min_clients"),
        ({"rounds": 0}, "rounds"),
        ({"key_dealer": "nobody"}, "key_dealer"),
        ({"model": "x" * 65}, "registered architecture name"),
        ({"tls_ca": "-----BEGIN CERTIFICATE-----"}, "every member needs a tls_fingerprint"),
        ({"owners": BASE.owners[:1]}, "at least 2 data owners"),
    ],
)
def test_terms_are_validated_when_built(changes: dict[str, object], match: str) -> None:
    with pytest.raises((ConfigError, BadInputError), match=match):
        dataclasses.replace(BASE, **changes)


def test_the_sponsor_signature_binds_every_byte() -> None:
    signed = SignedManifest.sign(BASE, SPONSOR)
    forged = SignedManifest(dataclasses.replace(BASE, rounds=6), signed.signature)
    with pytest.raises(VerificationError, match="sponsor signature"):
        forged.verify()
    with pytest.raises(ConfigError, match="sponsor_key"):
        SignedManifest.sign(BASE, Identity.generate("sponsor"))


def test_study_ids_from_the_wire_are_checked_before_use_in_paths() -> None:
    assert check_study_id(BASE.study_id) == BASE.study_id
    for bad in ("", "../x", "g" * 64, BASE.study_id + "0", BASE.study_id + "\n", 5):
        with pytest.raises(VerificationError, match="manifest hash"):
            check_study_id(bad)


def test_approval_is_signed_by_the_party_and_checked_on_every_use(tmp_path: Path) -> None:
    signed = SignedManifest.sign(BASE, SPONSOR)
    owner = Identity.generate("hospital-1", seed=bytes([0x11]) * 32)
    member = Identity.generate("member-1", seed=bytes([0x21]) * 32)
    approval = approve(signed, workdir=tmp_path / "o", identity=owner, role=Role.OWNER)
    assert approval.party_id == "hospital-1"
    assert approved_manifest(tmp_path / "o", BASE.study_id, owner, Role.OWNER) == BASE
    approve(signed, workdir=tmp_path / "m", identity=member, role=Role.MEMBER)
    assert approved_manifest(tmp_path / "m", BASE.study_id, member, Role.MEMBER) == BASE
    # Not listed, listed in another role, or approved by someone else: refused.
    stranger = Identity.generate("hospital-1")
    with pytest.raises(VerificationError, match="not this party's keys"):
        approve(signed, workdir=tmp_path / "s", identity=stranger, role=Role.OWNER)
    with pytest.raises(VerificationError, match="not listed as member"):
        approve(signed, workdir=tmp_path / "x", identity=owner, role=Role.MEMBER)
    with pytest.raises(VerificationError):
        approved_manifest(tmp_path / "o", BASE.study_id, stranger, Role.OWNER)
    # A forged approval file (someone else's signature) is refused.
    path = tmp_path / "o" / "studies" / BASE.study_id / "approval.json"
    doc = json.loads(path.read_text())
    doc["signature"] = stranger.sign(b"x").hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="does not verify"):
        approved_manifest(tmp_path / "o", BASE.study_id, owner, Role.OWNER)


def test_policy_from_node_config_mapping() -> None:
    policy = HospitalPolicy.from_mapping({"epsilon-cap": 2, "modes": "ckks,none", "min-clients": 3})
    assert policy.epsilon_cap == 2.0
    assert policy.modes == frozenset({SecureMode.CKKS, SecureMode.NONE})
    with pytest.raises(ConfigError, match="epsilon-cap is required"):
        HospitalPolicy.from_mapping({})
    with pytest.raises(ConfigError, match="unknown key 'epsilon'"):
        HospitalPolicy.from_mapping({"epsilon": 3, "epsilon-cap": 3})
    for cap in (float("inf"), float("nan"), 0, -1):
        with pytest.raises(ConfigError, match="epsilon-cap must be finite and > 0"):
            HospitalPolicy(epsilon_cap=cap)
    with pytest.raises(ConfigError, match="built-in spec"):
        HospitalPolicy(epsilon_cap=1, models={"mlp": "torch.nn:Linear"})
    with pytest.raises(ConfigError, match="secure mode 'plain'"):
        HospitalPolicy.from_mapping({"epsilon-cap": 1, "modes": "plain"})
