"""The data owner's steps without Flower: key dealing, pinned terms, and decryption that only
ever opens a quorum-signed aggregate over enough owners."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from cohort.aggregator.member import aggregate_result_digest
from cohort.crypto.ckks import CkksPublicContext
from cohort.crypto.encoding import quantize
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError, VerificationError
from cohort.federation import hospital, wire

STUDY = "study-test-0001"


@pytest.fixture
def owners(tmp_path: Path) -> list[hospital.HospitalSettings]:
    return [
        hospital.HospitalSettings(
            party_id=f"hospital-{i + 1}",
            workdir=str(tmp_path / f"h{i + 1}"),
            data=f"demo:{i}",
            demo_hospitals=3,
            demo_seed=5,
        )
        for i in range(3)
    ]


@pytest.fixture
def members() -> list[Identity]:
    return [Identity.generate(f"member-{i}", seed=bytes([i]) * 32) for i in (1, 2, 3)]


def _deal(
    owners: list[hospital.HospitalSettings],
) -> tuple[list[wire.EnrollReply], wire.KeygenReply]:
    enrolled = [hospital.enroll(s, wire.EnrollRequest(study_id=STUDY)) for s in owners]
    dealt = hospital.keygen(
        owners[0],
        wire.KeygenRequest(
            study_id=STUDY,
            party_ids=tuple(e.party_id for e in enrolled),
            sign_keys=tuple(e.sign_key for e in enrolled),
            box_keys=tuple(e.box_key for e in enrolled),
        ),
    )
    return enrolled, dealt


def _install(
    owner: hospital.HospitalSettings,
    dealer: wire.EnrollReply,
    dealt: wire.KeygenReply,
    **overrides: object,
) -> wire.InstallKeyReply:
    index = dealt.recipients.index(owner.party_id)
    request = wire.InstallKeyRequest(
        study_id=STUDY,
        dealer_id=dealer.party_id,
        dealer_sign_key=dealer.sign_key,
        dealer_box_key=dealer.box_key,
        box=dealt.boxes[index],
        fingerprint=dealt.fingerprint,
    )
    return hospital.install_key(owner, dataclasses.replace(request, **overrides))  # type: ignore[arg-type]


def _pin(owners: list[hospital.HospitalSettings], members: list[Identity]) -> None:
    for owner in owners:
        owner.keystore.pin_terms(STUDY, [m.public for m in members], quorum=2, min_clients=2)


def test_enrolment_reveals_public_keys_and_counts_only(
    owners: list[hospital.HospitalSettings],
) -> None:
    reply = hospital.enroll(owners[0], wire.EnrollRequest(study_id=STUDY))
    identity = owners[0].keystore.identity()
    assert (reply.sign_key, reply.box_key) == (identity.public.sign_key, identity.public.box_key)
    assert reply.examples == owners[0].dataset().labels.shape[0]
    assert reply.payout_address.startswith("0x")
    # Idempotent: the key store is reused, not regenerated.
    assert hospital.enroll(owners[0], wire.EnrollRequest(study_id=STUDY)) == reply


def test_dealt_secret_context_reaches_every_owner_and_the_public_part_cannot_decrypt(
    owners: list[hospital.HospitalSettings],
) -> None:
    enrolled, dealt = _deal(owners)
    assert sorted(dealt.recipients) == ["hospital-2", "hospital-3"]
    for owner in owners[1:]:
        assert _install(owner, enrolled[0], dealt).fingerprint == dealt.fingerprint
    vector = np.linspace(-1, 1, 50)
    blob = owners[1].keystore.load_ckks(STUDY).encrypt(vector)
    np.testing.assert_allclose(owners[2].keystore.load_ckks(STUDY).decrypt(blob), vector, atol=1e-4)
    public = CkksPublicContext.from_bytes(dealt.public_context)
    assert public.fingerprint() == dealt.fingerprint


def test_install_key_rejects_a_tampered_box_or_fingerprint(
    owners: list[hospital.HospitalSettings],
) -> None:
    enrolled, dealt = _deal(owners)
    box = dealt.boxes[0]
    with pytest.raises(VerificationError):
        _install(owners[1], enrolled[0], dealt, box=box[:-1] + bytes([box[-1] ^ 1]))
    with pytest.raises(VerificationError, match="fingerprint"):
        _install(owners[1], enrolled[0], dealt, fingerprint=bytes(32))
    with pytest.raises(VerificationError):  # a box claimed to come from another owner
        _install(owners[1], enrolled[2], dealt)


def _aggregate_request(
    owners: list[hospital.HospitalSettings],
    client_ids: tuple[str, ...],
    signers: list[Identity],
    updates: dict[str, np.ndarray],
) -> wire.DecryptRequest:
    secret = owners[0].keystore.load_ckks(STUDY)
    aggregate = secret.public().add([secret.encrypt(updates[c]) for c in client_ids])
    digest = tagged_hash(Tag.AGGREGATE, aggregate)
    message = aggregate_result_digest(
        study_id=STUDY, round=1, client_ids=client_ids, aggregate_hash=digest
    )
    return wire.DecryptRequest(
        study_id=STUDY,
        round=1,
        client_ids=client_ids,
        aggregate=aggregate,
        aggregate_hash=digest,
        member_ids=tuple(m.party_id for m in signers),
        member_signatures=tuple(m.sign(message) for m in signers),
    )


@pytest.fixture
def ready(
    owners: list[hospital.HospitalSettings], members: list[Identity]
) -> dict[str, np.ndarray]:
    enrolled, dealt = _deal(owners)
    for owner in owners[1:]:
        _install(owner, enrolled[0], dealt)
    _pin(owners, members)
    rng = np.random.default_rng(0)
    grid = owners[0].keystore.load_ckks(STUDY).params.release_grid
    return {o.party_id: quantize(rng.normal(0, 0.05, 300), grid=grid) for o in owners}


def test_decrypt_opens_a_quorum_signed_aggregate_exactly(
    owners: list[hospital.HospitalSettings], members: list[Identity], ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2", "hospital-3")
    request = _aggregate_request(owners, ids, members[:2], ready)
    reply, vector = hospital.decrypt(owners[2], request)
    assert reply.length == 300
    np.testing.assert_array_equal(vector, sum(ready[c] for c in ids))


def test_decrypt_refuses_a_single_owners_ciphertext(
    owners: list[hospital.HospitalSettings], members: list[Identity], ready: dict[str, np.ndarray]
) -> None:
    request = _aggregate_request(owners, ("hospital-2",), members, ready)
    with pytest.raises(VerificationError, match="client set has 1 members, at least 2 required"):
        hospital.decrypt(owners[0], request)


def test_decrypt_refuses_without_a_quorum_of_pinned_members(
    owners: list[hospital.HospitalSettings], members: list[Identity], ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2")
    one = _aggregate_request(owners, ids, members[:1], ready)
    with pytest.raises(VerificationError, match="1 committee signatures, quorum is 2"):
        hospital.decrypt(owners[0], one)
    twice = dataclasses.replace(
        one, member_ids=one.member_ids * 2, member_signatures=one.member_signatures * 2
    )
    with pytest.raises(VerificationError, match="quorum is 2"):
        hospital.decrypt(owners[0], twice)
    outsider = Identity.generate("member-9", seed=b"\x09" * 32)
    forged = _aggregate_request(owners, ids, [members[0], outsider], ready)
    with pytest.raises(VerificationError, match="'member-9' is not a committee member"):
        hospital.decrypt(owners[0], forged)


def test_decrypt_refuses_a_mismatching_aggregate_or_client_set(
    owners: list[hospital.HospitalSettings], members: list[Identity], ready: dict[str, np.ndarray]
) -> None:
    ids = ("hospital-1", "hospital-2")
    request = _aggregate_request(owners, ids, members[:2], ready)
    swapped = dataclasses.replace(request, aggregate=request.aggregate[:-1] + b"\x00")
    with pytest.raises(VerificationError, match="does not match its hash"):
        hospital.decrypt(owners[0], swapped)
    other_set = dataclasses.replace(request, client_ids=("hospital-1", "hospital-3"))
    with pytest.raises(VerificationError):
        hospital.decrypt(owners[0], other_set)


def test_pinned_terms_cannot_change_mid_study(
    owners: list[hospital.HospitalSettings], members: list[Identity]
) -> None:
    _pin(owners[:1], members)
    store = owners[0].keystore
    with pytest.raises(VerificationError, match="differ from the terms"):
        store.pin_terms(STUDY, [m.public for m in members], quorum=1, min_clients=2)
    impostor = Identity.generate("member-3", seed=b"\x07" * 32)
    with pytest.raises(VerificationError, match="differ from the terms"):
        store.pin_terms(
            STUDY, [members[0].public, members[1].public, impostor.public], quorum=2, min_clients=2
        )
    assert store.pinned_terms(STUDY).quorum == 2


def test_weighted_ckks_mean_matches_the_plaintext_oracle_within_1e4(
    owners: list[hospital.HospitalSettings],
) -> None:
    """Ten owners' weighted updates, encrypted, summed by a member, decrypted: the released
    mean is within 1e-4 of the float64 FedAvg mean, and equals the quantised sum exactly."""
    _enrolled, dealt = _deal(owners)
    secret = owners[0].keystore.load_ckks(STUDY)
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


def test_csv_owner_standardises_with_the_published_normalizer(tmp_path: Path) -> None:
    import csv
    import json

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
    norm = tmp_path / "normalizer.json"
    norm.write_text(json.dumps(published))
    settings = hospital.HospitalSettings(
        party_id="site", workdir=str(tmp_path / "w"), data=str(path), normalizer=str(norm)
    )
    data = settings.dataset()
    expected = (raw.data[:40] - np.asarray(published["mean"])) / np.asarray(published["scale"])
    np.testing.assert_allclose(data.features, expected, rtol=1e-5, atol=1e-5)
    broken = dataclasses.replace(settings, normalizer=str(tmp_path / "missing.json"))
    with pytest.raises(BadInputError, match=r"normalizer .*missing\.json"):
        broken.dataset()


def test_changed_terms_are_refused_before_any_budget_is_spent(
    owners: list[hospital.HospitalSettings], members: list[Identity]
) -> None:
    _pin(owners[:1], members)
    impostor = Identity.generate("member-3", seed=b"\x07" * 32)
    roster = [members[0], members[1], impostor]
    instruction = wire.TrainInstruction(
        study_id=STUDY,
        round=2,
        total_rounds=5,
        weight_unit=10_000,
        secure="ckks",
        seed=1,
        model="mlp",
        epsilon=3.0,
        delta=1e-5,
        local_epochs=1,
        batch_size=32,
        max_grad_norm=1.0,
        lr=1.0,
        quorum=2,
        min_clients=2,
        **wire.committee_lists(
            [
                wire.MemberInfo(m.party_id, m.public.sign_key, m.public.box_key, "127.0.0.1:9")
                for m in roster
            ]
        ),
    )
    from cohort.clients.model import build_model, get_flat

    start = get_flat(build_model("mlp", in_features=30, num_classes=2))
    with pytest.raises(VerificationError, match="differ from the terms"):
        hospital.train(owners[0], instruction, start)
    ledger = owners[0].ledger_path(STUDY)
    assert not ledger.exists() or json.loads(ledger.read_text())["entries"] == []
