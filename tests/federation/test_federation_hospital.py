"""The data owner's steps without Flower, against a coordinator that sends whatever it likes.

Every term comes from the manifest the owner's operator approved and from its local policy:
these tests send the hospital messages a malicious coordinator would (unapproved or malformed
study ids, a fake dealer, a second dealing, rounds outside the manifest, lone ciphertexts,
two client sets for one round) and check each is refused with a reason, before any budget
is spent.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from studykit import Study, approve_owner, hospitals, make_study

from cohort.aggregator.member import aggregate_result_digest
from cohort.clients.model import build_model, get_flat
from cohort.crypto.ckks import CkksPublicContext, CkksSecretContext
from cohort.crypto.encoding import quantize
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, verify_signature
from cohort.errors import BadInputError, VerificationError
from cohort.federation import hospital, wire
from cohort.federation.manifest import CommitteeEntry, SecureMode
from cohort.federation.modes.ckks import owner as ckks_owner
from cohort.federation.policy import HospitalPolicy


@pytest.fixture
def owners(tmp_path: Path) -> list[hospital.HospitalSettings]:
    return hospitals(tmp_path, 3)


@pytest.fixture
def study(owners: list[hospital.HospitalSettings]) -> Study:
    return make_study(owners)


def _deal(study: Study) -> wire.KeygenReply:
    return hospital.keygen(study.owners[0], wire.KeygenRequest(study_id=study.study_id))


def _install(
    study: Study, owner: int, dealt: wire.KeygenReply, **kw: object
) -> wire.InstallKeyReply:
    target = study.owners[owner]
    request = wire.InstallKeyRequest(
        study_id=study.study_id,
        box=dealt.boxes[dealt.recipients.index(target.party_id)],
        fingerprint=dealt.fingerprint,
        dealer_signature=dealt.dealer_signature,
    )
    return hospital.install_key(target, dataclasses.replace(request, **kw))  # type: ignore[arg-type]


@pytest.fixture
def ready(study: Study) -> dict[str, np.ndarray]:
    dealt = _deal(study)
    for i in (1, 2):
        _install(study, i, dealt)
    rng = np.random.default_rng(0)
    grid = study.owners[0].keystore.load_ckks(study.study_id).params.release_grid
    return {o.party_id: quantize(rng.normal(0, 0.05, 300), grid=grid) for o in study.owners}


def _decrypt_request(
    study: Study,
    client_ids: tuple[str, ...],
    signers: list[Identity],
    updates: dict[str, np.ndarray],
    *,
    round: int = 1,
) -> wire.DecryptRequest:
    secret = study.owners[0].keystore.load_ckks(study.study_id)
    aggregate = secret.public().add([secret.encrypt(updates[c]) for c in client_ids])
    digest = tagged_hash(Tag.AGGREGATE, aggregate)
    message = aggregate_result_digest(
        study_id=study.study_id, round=round, client_ids=client_ids, aggregate_hash=digest
    )
    return wire.DecryptRequest(
        study_id=study.study_id,
        round=round,
        client_ids=client_ids,
        aggregate=aggregate,
        aggregate_hash=digest,
        member_ids=tuple(m.party_id for m in signers),
        member_signatures=tuple(m.sign(message) for m in signers),
    )


# ----------------------------------------------------------------------------- approval


def test_enrolment_needs_an_approved_manifest(study: Study) -> None:
    owner = study.owners[0]
    reply = hospital.enroll(owner, wire.EnrollRequest(study_id=study.study_id))
    assert reply.party_id == owner.party_id
    assert reply.examples == owner.dataset(study.manifest).labels.shape[0]
    other = study.resign(rounds=9)  # signed by the sponsor, but never approved by anyone
    with pytest.raises(VerificationError, match="not approved by the operator"):
        hospital.enroll(owner, wire.EnrollRequest(study_id=other.study_id))
    for bad in ("../../etc/passwd", "ab" * 31, study.study_id.upper()):
        with pytest.raises(VerificationError, match="manifest hash"):
            hospital.enroll(owner, wire.EnrollRequest(study_id=bad))


def test_policy_refuses_plaintext_and_unregistered_models_at_approval(
    owners: list[hospital.HospitalSettings],
) -> None:
    study = make_study(owners, approve_owners=False)
    plaintext = study.resign(secure=SecureMode.NONE)
    with pytest.raises(VerificationError, match="secure mode 'none' is refused"):
        approve_owner(owners[0], plaintext)
    code = study.resign(model="os:ftruncate")
    with pytest.raises(VerificationError, match="model 'os:ftruncate' is not a built-in"):
        approve_owner(owners[0], code)
    small = dataclasses.replace(owners[0], policy=HospitalPolicy(epsilon_cap=3.0, min_clients=3))
    with pytest.raises(VerificationError, match="min_clients 2 is below"):
        approve_owner(small, study.signed)


def test_a_tampered_manifest_file_is_not_acted_on(study: Study) -> None:
    owner = study.owners[1]
    path = Path(owner.workdir) / "studies" / study.study_id / "manifest.json"
    doc = json.loads(path.read_text())
    doc["manifest"]["min_clients"] = 3
    path.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="sponsor signature"):
        hospital.enroll(owner, wire.EnrollRequest(study_id=study.study_id))


# ----------------------------------------------------------------------------- keys


def test_the_manifest_dealer_boxes_the_key_to_the_manifest_roster_only(study: Study) -> None:
    dealt = _deal(study)
    assert sorted(dealt.recipients) == ["hospital-2", "hospital-3"]
    assert _deal(study) == dealt  # asking again re-sends the same dealing, no new key
    dealer = study.manifest.owner("hospital-1")
    assert dealer is not None
    public = CkksPublicContext.from_bytes(dealt.public_context)
    assert public.fingerprint() == dealt.fingerprint
    for i in (1, 2):
        assert _install(study, i, dealt).fingerprint == dealt.fingerprint
    vector = np.linspace(-1, 1, 50)
    blob = study.owners[1].keystore.load_ckks(study.study_id).encrypt(vector)
    decrypted = study.owners[2].keystore.load_ckks(study.study_id).decrypt(blob)
    np.testing.assert_allclose(decrypted, vector, atol=1e-4)
    with pytest.raises(VerificationError, match="names 'hospital-1' as key dealer"):
        hospital.keygen(study.owners[1], wire.KeygenRequest(study_id=study.study_id))


def test_a_fake_dealer_or_a_second_dealing_is_refused(study: Study) -> None:
    dealt = _deal(study)
    box = dealt.boxes[0]
    with pytest.raises(VerificationError):
        _install(study, 1, dealt, box=box[:-1] + bytes([box[-1] ^ 1]))
    with pytest.raises(VerificationError, match="fingerprint"):
        _install(study, 1, dealt, fingerprint=bytes(32))
    with pytest.raises(VerificationError, match="signature"):
        _install(study, 1, dealt, dealer_signature=bytes(64))
    # The coordinator deals its own context, boxed with its own key: the Box does not open
    # under the manifest's dealer key.
    fake = CkksSecretContext.generate()
    target = study.owners[1].keystore.identity().public
    forged = study.coordinator.box_to(target, fake.to_bytes())
    with pytest.raises(VerificationError, match="does not open"):
        _install(study, 1, dealt, box=forged, fingerprint=fake.public().fingerprint())
    # The real key is installed; a second, different dealing never overwrites it.
    _install(study, 1, dealt)
    held = study.owners[1].keystore.load_ckks(study.study_id).public().fingerprint()
    other = study.owners[0].keystore.identity().box_to(target, fake.to_bytes())
    with pytest.raises(VerificationError):
        _install(study, 1, dealt, box=other, fingerprint=fake.public().fingerprint())
    assert study.owners[1].keystore.load_ckks(study.study_id).public().fingerprint() == held


# ----------------------------------------------------------------------------- decryption


def test_decrypt_opens_a_quorum_signed_aggregate_and_signs_what_it_returns(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2", "hospital-3")
    request = _decrypt_request(study, ids, study.members[:2], ready)
    reply, vector = hospital.decrypt(study.owners[2], request)
    np.testing.assert_array_equal(vector, sum(ready[c] for c in ids))
    assert reply.plain_hash == wire.plaintext_hash(vector)
    owner = study.owners[2].keystore.identity().public
    digest = wire.decryption_digest(
        study_id=study.study_id,
        round=1,
        aggregate_hash=request.aggregate_hash,
        plain_hash=reply.plain_hash,
    )
    verify_signature(owner, digest, reply.signature)
    # The same request again reveals nothing new and is answered the same way.
    again, vector2 = hospital.decrypt(study.owners[2], request)
    assert again.plain_hash == reply.plain_hash
    np.testing.assert_array_equal(vector, vector2)


def test_the_coordinator_takes_a_checking_owners_hash_and_checks_any_sum_it_sends(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from cohort.federation.modes.ckks.coordinator import CkksCoordinator

    ids = ("hospital-1", "hospital-2", "hospital-3")
    request = _decrypt_request(study, ids, study.members[:2], ready)
    reply, vector = hospital.decrypt(study.owners[2], request)
    coordinator = CkksCoordinator(
        cast(Any, SimpleNamespace(manifest=study.manifest)), cast(Any, None)
    )

    def check(content: object, **kw: bool) -> tuple[bytes, np.ndarray | None]:
        return coordinator.check_decryption("hospital-3", 1, request, cast(Any, content), **kw)

    # Asked for its hash only: the signed hash is the answer.
    assert check(reply.to_record(), vector=False) == (reply.plain_hash, None)
    # Asked for the sum and sent none.
    with pytest.raises(BadInputError, match="carries no vector"):
        check(reply.to_record())
    # A sum sent anyway is held to the signed hash, asked for or not.
    for kw in ({}, {"vector": False}):
        with pytest.raises(VerificationError, match="does not match its signed hash"):
            check(wire.put_vector(reply.to_record(), vector + 1.0), **kw)
    total = check(wire.put_vector(reply.to_record(), vector), vector=False)[1]
    assert total is not None
    np.testing.assert_array_equal(total, vector)
    # Another owner's signed reply does not pass as this one's.
    with pytest.raises(VerificationError):
        coordinator.check_decryption("hospital-2", 1, request, reply.to_record(), vector=False)


def test_a_large_aggregate_is_fetched_only_after_every_check_and_held_to_its_hash(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2", "hospital-3")
    full = _decrypt_request(study, ids, study.members[:2], ready)
    named = dataclasses.replace(full, aggregate=b"")  # as the coordinator sends a large one
    asked: list[dict[str, object]] = []

    def fetch(identity: Identity, manifest: object, **terms: object) -> bytes:
        asked.append(terms)
        return full.aggregate

    _, expected = hospital.decrypt(study.owners[2], full)
    _, vector = ckks_owner.decrypt(study.owners[2], named, fetch=fetch)
    np.testing.assert_array_equal(vector, expected)
    assert asked == [
        {
            "round": 1,
            "members": full.member_ids,
            "aggregate_hash": full.aggregate_hash,
        }
    ]
    # a request that fails a check fetches nothing
    asked.clear()
    lone = dataclasses.replace(named, member_ids=(), member_signatures=())
    with pytest.raises(VerificationError, match="committee signatures"):
        ckks_owner.decrypt(study.owners[2], lone, fetch=fetch)
    assert asked == []
    # whatever the fetch returns, the owner decrypts only bytes with the signed hash
    with pytest.raises(VerificationError, match="aggregate does not match its hash"):
        ckks_owner.decrypt(study.owners[2], named, fetch=lambda *a, **k: full.aggregate[:-1])


def test_decrypt_refuses_lone_ciphertexts_and_foreign_signers(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    lone = _decrypt_request(study, ("hospital-2",), study.members, ready)
    with pytest.raises(VerificationError, match="1 distinct members, at least 2 required"):
        hospital.decrypt(study.owners[1], lone)
    ids = ("hospital-1", "hospital-2")
    one = _decrypt_request(study, ids, study.members[:1], ready)
    with pytest.raises(VerificationError, match="1 committee signatures, quorum is 2"):
        hospital.decrypt(study.owners[0], one)
    twice = dataclasses.replace(
        one, member_ids=one.member_ids * 2, member_signatures=one.member_signatures * 2
    )
    with pytest.raises(VerificationError, match="quorum is 2"):
        hospital.decrypt(study.owners[0], twice)
    outsider = Identity.generate("member-9")
    forged = _decrypt_request(study, ids, [study.members[0], outsider], ready)
    with pytest.raises(VerificationError, match="'member-9' is not a committee member"):
        hospital.decrypt(study.owners[0], forged)
    # A decryptor outside S, a set with a non-roster id, rounds outside the manifest.
    with pytest.raises(VerificationError, match="not in the client set"):
        hospital.decrypt(study.owners[2], _decrypt_request(study, ids, study.members, ready))
    ghost = dataclasses.replace(one, client_ids=("hospital-1", "ghost"))
    with pytest.raises(VerificationError, match="'ghost' is not in the study's roster"):
        hospital.decrypt(study.owners[0], ghost)
    for rnd in (0, 4):
        late = _decrypt_request(study, ids, study.members[:2], ready, round=rnd)
        with pytest.raises(VerificationError, match=r"rounds 1\.\.3"):
            hospital.decrypt(study.owners[0], late)


def test_one_aggregate_per_round_defeats_differencing(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    """S and then S minus {hospital-3} in the same round: the second is refused, so the
    difference (hospital-3's update) is never released."""
    full = _decrypt_request(study, ("hospital-1", "hospital-2", "hospital-3"), study.members, ready)
    hospital.decrypt(study.owners[0], full)
    minus = _decrypt_request(study, ("hospital-1", "hospital-2"), study.members, ready)
    with pytest.raises(VerificationError, match="already decrypted another aggregate"):
        hospital.decrypt(study.owners[0], minus)
    # The record is durable: a fresh process (same work directory) refuses it too.
    hospital._load_dataset.cache_clear()
    with pytest.raises(VerificationError, match="already decrypted another aggregate"):
        hospital.decrypt(dataclasses.replace(study.owners[0]), minus)


def test_decrypt_refuses_a_mismatching_aggregate_or_client_set(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2")
    request = _decrypt_request(study, ids, study.members[:2], ready)
    swapped = dataclasses.replace(request, aggregate=request.aggregate[:-1] + b"\x00")
    with pytest.raises(VerificationError, match="does not match its hash"):
        hospital.decrypt(study.owners[0], swapped)
    other_set = dataclasses.replace(request, client_ids=("hospital-1", "hospital-3"))
    with pytest.raises(VerificationError):
        hospital.decrypt(study.owners[0], other_set)


# ----------------------------------------------------------------------------- training


def _global(study: Study) -> np.ndarray:
    return get_flat(build_model("mlp", in_features=30, num_classes=2))


def _entries(owner: hospital.HospitalSettings) -> list[object]:
    path = owner.ledger_path
    return [] if not path.exists() else list(json.loads(path.read_text())["entries"])


def test_rounds_outside_the_manifest_are_refused_before_any_budget_is_spent(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    owner = study.owners[0]
    for rnd in (0, 4, 2**63):
        instruction = wire.TrainInstruction(study_id=study.study_id, round=rnd, weight_unit=10_000)
        with pytest.raises(VerificationError, match=r"rounds 1\.\.3"):
            hospital.train(owner, instruction, _global(study))
    wrong = wire.TrainInstruction(study_id=study.study_id, round=1, weight_unit=10_000)
    with pytest.raises(BadInputError, match="global model has 3 values"):
        hospital.train(owner, wrong, np.zeros(3, dtype=np.float32))
    assert _entries(owner) == []


def test_a_dead_committee_costs_no_budget(study: Study, ready: dict[str, np.ndarray]) -> None:
    """The manifest's members listen nowhere: the owner declines before training."""
    owner = study.owners[1]
    instruction = wire.TrainInstruction(study_id=study.study_id, round=1, weight_unit=10_000)
    outcome = hospital.train(owner, instruction, _global(study))
    assert outcome.receipt.status == "declined"
    assert "0 of 3 committee members reachable, quorum is 2" in outcome.receipt.reason
    assert outcome.update is None
    assert _entries(owner) == []


def test_weighted_ckks_mean_matches_the_plaintext_oracle_within_1e4(study: Study) -> None:
    """Ten owners' weighted updates, encrypted, summed by a member, decrypted: the released
    mean is within 1e-4 of the float64 FedAvg mean, and equals the quantised sum exactly."""
    dealt = _deal(study)
    secret = study.owners[0].keystore.load_ckks(study.study_id)
    public = CkksPublicContext.from_bytes(dealt.public_context)
    rng = np.random.default_rng(42)
    examples = rng.integers(30, 121, size=10)
    updates = [rng.normal(0, 0.05, 5000) for _ in examples]
    unit = int(examples.max())
    quantized = [
        quantize(u * (n / unit), grid=secret.params.release_grid)
        for u, n in zip(updates, examples, strict=True)
    ]
    total = secret.decrypt(public.add([secret.encrypt(q) for q in quantized]))
    np.testing.assert_array_equal(total, np.sum(quantized, axis=0))
    mean = total / (examples.sum() / unit)
    oracle = (
        np.sum([u * n for u, n in zip(updates, examples, strict=True)], axis=0) / examples.sum()
    )
    assert np.max(np.abs(mean - oracle)) < 1e-4


def test_csv_owner_standardises_with_the_manifest_normalizer(tmp_path: Path) -> None:
    import csv

    from sklearn.datasets import load_breast_cancer

    from cohort.clients.data import demo_normalizer

    published = demo_normalizer(seed=0).to_dict()
    raw = load_breast_cancer()
    path = tmp_path / "site.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*published["feature_names"], "label"])
        for row, label in zip(raw.data[:40], raw.target[:40], strict=True):
            writer.writerow([*row, int(label)])
    owners = hospitals(tmp_path, 2)
    site = dataclasses.replace(owners[0], data=str(path))
    study = make_study([site, owners[1]], approve_owners=False)
    with_norm = study.resign(normalizer=published)
    data = site.dataset(with_norm.manifest)
    expected = (raw.data[:40] - np.asarray(published["mean"])) / np.asarray(published["scale"])
    np.testing.assert_allclose(data.features, expected, rtol=1e-5, atol=1e-5)
    narrow = study.resign(features=29)
    with pytest.raises(BadInputError, match="30 feature columns, the study's manifest says 29"):
        site.dataset(narrow.manifest)


def test_an_owner_with_a_chain_checks_the_contract_before_decrypting(
    study: Study, ready: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``chain-url`` in its policy the owner asks its own chain view first; here the
    contract the manifest names does not exist there, so nothing is decrypted or recorded."""
    from cohort.bounties.chain import EmbeddedChain
    from cohort.bounties.study import StudyContract

    chain = EmbeddedChain()
    asked: list[str] = []

    def connect(url: str, address: str) -> StudyContract:
        asked.append(url)
        return StudyContract.at(chain, address)  # its checks are StudyReads's (tests/bounties)

    monkeypatch.setattr(ckks_owner, "StudyReads", connect)
    owner = dataclasses.replace(
        study.owners[0],
        policy=dataclasses.replace(study.owners[0].policy, chain_url="http://127.0.0.1:8545"),
    )
    ids = ("hospital-1", "hospital-2")
    request = _decrypt_request(study, ids, study.members[:2], ready)
    with pytest.raises(BadInputError, match="no contract at"):
        hospital.decrypt(owner, request)
    assert asked == ["http://127.0.0.1:8545"]
    assert owner.keystore.load_record("decryptions", study.study_id) == {}


def _stored_receipt(
    study: Study,
    owner: hospital.HospitalSettings,
    rnd: int,
    model: np.ndarray,
    *,
    epsilon: float,
) -> wire.TrainReceipt:
    """A receipt the owner keeps for round ``rnd`` trained from ``model`` (train_receipts):
    what it answers when asked for that round from exactly that model again."""
    from cohort.federation import train_receipts

    receipt = wire.TrainReceipt(
        party_id=owner.party_id,
        status="ok",
        reason="",
        examples=40,
        epsilon=epsilon,
        payload_hash=b"p" * 32,
        delivered=("m1",),
        receipts=(b"r" * 80,),
    )
    train_receipts.save(
        Path(owner.workdir),
        study.study_id,
        train_receipts.StoredReceipt(rnd, wire.plaintext_hash(model), receipt),
    )
    return receipt


def test_a_round_asked_again_gets_the_stored_receipt_and_costs_nothing(
    study: Study, ready: dict[str, np.ndarray]
) -> None:
    """A resumed coordinator asks for round 1 again: the owner that trained it answers with
    its stored receipt (same global model) or declines (another model); neither trains."""

    owner = study.owners[0]
    model = _global(study)
    receipt = _stored_receipt(study, owner, 1, model, epsilon=1.25)
    instruction = wire.TrainInstruction(study_id=study.study_id, round=1, weight_unit=10_000)
    again = hospital.train(owner, instruction, model)
    assert again.receipt == receipt
    assert again.update is None
    other = hospital.train(owner, instruction, model + 0.5)
    assert other.receipt.status == "declined"
    assert "already trained on another global model" in other.receipt.reason
    assert _entries(owner) == []  # the committee is dead: only the stored receipt answered


# ------------------------------------------------- a round's sum revealed with the next round


def _fold(
    study: Study, *, round: int = 2, weight: float = 1.5, **reveal: object
) -> tuple[wire.TrainInstruction, wire.DecryptRequest, dict[str, np.ndarray]]:
    """Round ``round``'s train instruction carrying round ``round - 1``'s quorum-signed
    aggregate of all three owners' model-sized updates (cohort.federation.reveal)."""
    dealt = _deal(study)
    for i in (1, 2):
        _install(study, i, dealt)
    grid = study.owners[0].keystore.load_ckks(study.study_id).params.release_grid
    rng = np.random.default_rng(1)
    size = study.manifest.update_length
    updates = {o.party_id: quantize(rng.normal(0, 0.01, size), grid=grid) for o in study.owners}
    ids = tuple(sorted(updates))
    request = _decrypt_request(study, ids, study.members[:2], updates, round=round - 1)
    instruction = wire.TrainInstruction(
        study_id=study.study_id, round=round, weight_unit=10_000, reveal_weight=weight
    )
    return instruction, dataclasses.replace(request, **reveal), updates  # type: ignore[arg-type]


def test_a_reveal_riding_with_training_decrypts_then_trains_from_the_model_it_gives(
    study: Study,
) -> None:
    """The owner opens round 1's sum under the decryption checks, applies the mean update
    with the coordinator's arithmetic, and trains round 2 from that model: a stored round-2
    receipt for exactly that model is what it answers (nothing else would match)."""
    from cohort.federation.reveal import next_model

    instruction, request, updates = _fold(study)
    owner = study.owners[1]
    model = _global(study)
    total = np.sum([updates[p] for p in sorted(updates)], axis=0)
    expected = next_model(model, total, weight=1.5, server_lr=study.manifest.server_lr)
    stored = _stored_receipt(study, owner, 2, expected, epsilon=1.0)
    outcome = hospital.train(owner, instruction, model, request)
    assert outcome.receipt == stored
    assert outcome.revealed is not None
    answer, vector = outcome.revealed
    np.testing.assert_array_equal(vector, total)
    digest = wire.decryption_digest(
        study_id=study.study_id,
        round=1,
        aggregate_hash=request.aggregate_hash,
        plain_hash=wire.plaintext_hash(total),
    )
    verify_signature(owner.keystore.identity().public, digest, answer.signature)
    # The same message twice: the same aggregate decrypts again, the same receipt answers.
    again = hospital.train(owner, instruction, model, request)
    assert again.receipt == stored
    assert again.revealed is not None
    assert again.revealed[0] == answer
    np.testing.assert_array_equal(again.revealed[1], total)
    # Without the reveal the coordinator's model is another one: declined, nothing trained.
    plain = dataclasses.replace(instruction, reveal_weight=0.0)
    assert hospital.train(owner, plain, model).receipt.status == "declined"
    assert _entries(owner) == []


def test_a_reveal_out_of_order_or_with_a_bad_weight_is_refused_before_decrypting(
    study: Study,
) -> None:
    instruction, request, _ = _fold(study)
    owner = study.owners[0]
    model = _global(study)
    bad = [
        (dataclasses.replace(request, round=2), instruction, "only round 1 rides with it"),
        (dataclasses.replace(request, round=0), instruction, "only round 1 rides with it"),
        (
            dataclasses.replace(request, study_id="cd" * 32),
            instruction,
            "the reveal names study",
        ),
    ]
    for weight in (0.0, -1.0, 3.5, float("nan"), float("inf")):
        bad.append((request, dataclasses.replace(instruction, reveal_weight=weight), "weight"))
    for wrong, told, reason in bad:
        with pytest.raises(BadInputError, match=reason):
            hospital.train(owner, told, model, wrong)
    with pytest.raises(BadInputError, match="a reveal weight and no reveal"):
        hospital.train(owner, instruction, model)
    assert owner.keystore.load_record("decryptions", study.study_id) == {}
    assert _entries(owner) == []


def test_a_reveal_gets_no_more_than_a_decryption_message_would(study: Study) -> None:
    """Every decryption check holds for a reveal: an owner outside the client set, a lone
    aggregate, a foreign signer, and a second aggregate for a round already decrypted are
    each refused, before any budget is spent."""
    instruction, request, updates = _fold(study)
    model = _global(study)
    two = tuple(sorted(updates))[:2]
    smaller = _decrypt_request(study, two, study.members[:2], updates, round=1)
    with pytest.raises(VerificationError, match="this owner is not in the client set"):
        hospital.train(study.owners[2], instruction, model, smaller)
    lone = _decrypt_request(study, two[:1], study.members[:2], updates, round=1)
    with pytest.raises(VerificationError, match="at least 2 required"):
        hospital.train(
            study.owners[0], dataclasses.replace(instruction, reveal_weight=1.0), model, lone
        )
    foreign = _decrypt_request(
        study, tuple(sorted(updates)), [study.sponsor, study.members[0]], updates, round=1
    )
    with pytest.raises(VerificationError, match="not a committee member"):
        hospital.train(study.owners[0], instruction, model, foreign)
    owner = study.owners[1]
    hospital.train(
        owner, instruction, model, smaller
    )  # decrypts S = {1, 2}; declines (dead committee)
    with pytest.raises(VerificationError, match="already decrypted another aggregate"):
        hospital.train(owner, instruction, model, request)
    assert _entries(owner) == []


def test_foreseeing_a_study_at_enrolment_leaves_its_rounds_no_accounting_to_do(
    study: Study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a deployed owner works out once its enrolment reply has left: the noise
    calibration and every round's projection, for the event its training will record (the
    approved manifest's terms, its own data). Each round then, in a fresh process, guards
    and records without calibrating or running the PRV accountant."""
    from cohort.clients import accounting
    from cohort.clients.privacy import PrivacyLedger
    from cohort.federation.dp_terms import dp_config

    owner = study.owners[0]
    accounting.use_disk_memo(tmp_path / "memo")
    accounting._prv_epsilon.cache_clear()  # the enrolment's fork: a fresh process too
    accounting.calibrate_noise_multiplier.cache_clear()
    try:
        hospital.foresee_study(owner, study.study_id)
        assert not owner.ledger_path.exists()  # nothing recorded, no ledger created

        def runs(*_: object) -> float:
            raise AssertionError("the accountant ran during a round")

        monkeypatch.setattr(accounting, "_prv_epsilon_uncached", runs)
        monkeypatch.setattr(accounting, "_calibrate", runs)
        examples = int(owner.dataset(study.manifest).labels.shape[0])
        for rnd in range(1, study.manifest.rounds + 1):
            accounting._prv_epsilon.cache_clear()  # each round: a fresh ClientApp process
            accounting.calibrate_noise_multiplier.cache_clear()
            ledger = PrivacyLedger.open(
                owner.ledger_path,
                owner=owner.party_id,
                epsilon_cap=owner.policy.epsilon_cap,
                delta=owner.policy.delta,
            )
            event = dp_config(study.manifest).event(examples, round=rnd)
            ledger.guard(event, study_id=study.study_id, study_cap=study.manifest.dp.epsilon)
            ledger.record(
                event,
                study_id=study.study_id,
                epsilon=ledger.projected_epsilon(event),
                seeded=False,
            )
        assert len(PrivacyLedger.load(owner.ledger_path).entries) == study.manifest.rounds
    finally:
        accounting.use_disk_memo(None)
        accounting._prv_epsilon.cache_clear()
        accounting.calibrate_noise_multiplier.cache_clear()


def test_the_committee_liveness_is_asked_once_a_round_as_it_begins(
    study: Study, ready: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``begin`` sends the pings at once (before the owner checks and decrypts the last
    sum); ``prepare`` waits on those answers and asks nobody again; a mode not begun asks
    in ``prepare``."""
    import threading

    from cohort.federation import owner_net
    from cohort.federation.modes import owner_mode

    asked: list[str] = []
    all_asked = threading.Event()

    def ping(manifest: object, entry: CommitteeEntry) -> str | None:
        member = entry.member_id
        asked.append(member)
        if len(asked) == len(study.manifest.committee):
            all_asked.set()
        return member

    monkeypatch.setattr(owner_net, "_ping", ping)
    mode = owner_mode(study.owners[0], study.manifest)
    mode.begin()
    assert all_asked.wait(10)  # before prepare
    assert mode.prepare() is None
    assert sorted(asked) == sorted(m.member_id for m in study.manifest.committee)
    asked.clear()
    assert owner_mode(study.owners[0], study.manifest).prepare() is None
    assert len(asked) == len(study.manifest.committee)
