"""Contract tests every AggregationMode passes (CKKS and MPC inherit the same class), and
each mode's own checks."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.aggregator.modes import (
    AggregationMode,
    CkksMode,
    CkksSpec,
    ModeSpec,
    MpcMode,
    MpcSpec,
    build_mode,
    context_fingerprint,
    dealt_context_digest,
    sign_dealt_context,
)
from cohort.aggregator.modes.mpc import lazy_adds_u32
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.fixed_point import PRIME, FieldEncoding
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import ShamirScheme, share
from cohort.crypto.share_payload import SharePayload, unpack_field
from cohort.errors import BadInputError, ConfigError, VerificationError

LENGTH = 6
STUDY_ID = "ab" * 32


class AggregationModeContract(ABC):
    """Subclass per mode: provide the mode, an encoder of one update and a decoder."""

    @abstractmethod
    def mode(self) -> AggregationMode: ...

    @abstractmethod
    def encode(self, vector: np.ndarray) -> bytes: ...

    @abstractmethod
    def decode(self, blob: bytes) -> np.ndarray: ...

    tolerance = 1e-3

    def combine(self, mode: AggregationMode, payloads: list[bytes], *, round: int = 1) -> bytes:
        """What a member does at Aggregate: combine the accepted payloads with their senders."""
        keys = [tagged_hash(Tag.PAYLOAD, p) for p in payloads]
        senders = [f"owner-{i}" for i in range(len(payloads))]
        return mode.combine_kept(round, keys, payloads.__getitem__, senders=senders)

    def test_has_a_name(self) -> None:
        assert isinstance(type(self.mode()).name, str)
        assert type(self.mode()).name

    def test_check_accepts_a_good_payload(self) -> None:
        self.mode().check(self.encode(np.ones(LENGTH)), length=LENGTH)

    @pytest.mark.parametrize("bad", [b"", b"\x00" * 64, b"garbage" * 100])
    def test_check_rejects_garbage(self, bad: bytes) -> None:
        with pytest.raises(BadInputError):
            self.mode().check(bad, length=LENGTH)

    def test_check_rejects_a_wrong_length(self) -> None:
        with pytest.raises(BadInputError):
            self.mode().check(self.encode(np.ones(LENGTH + 1)), length=LENGTH)

    def test_combine_is_deterministic_and_sums(self) -> None:
        rng = np.random.default_rng(3)
        vectors = [rng.normal(size=LENGTH) for _ in range(3)]
        payloads = [self.encode(v) for v in vectors]
        first = self.combine(self.mode(), payloads)
        assert self.combine(self.mode(), payloads) == first
        np.testing.assert_allclose(
            self.decode(first)[:LENGTH], np.sum(vectors, axis=0), atol=self.tolerance
        )

    def test_combine_kept_equals_combine(self) -> None:
        rng = np.random.default_rng(4)
        payloads = [self.encode(rng.normal(size=LENGTH)) for _ in range(3)]
        mode = self.mode()
        keys = [bytes([i]) * 32 for i in range(3)]
        for payload, key in zip(payloads, keys, strict=True):
            mode.accept(payload, length=LENGTH, round=1, key=key)
        senders = [f"owner-{i}" for i in range(3)]
        kept = mode.combine_kept(1, keys, payloads.__getitem__, senders=senders)
        assert kept == self.combine(self.mode(), payloads)

    @pytest.mark.parametrize("bad", [b"", b"garbage" * 100])
    def test_accept_rejects_what_check_rejects(self, bad: bytes) -> None:
        with pytest.raises(BadInputError):
            self.mode().accept(bad, length=LENGTH, round=1, key=bytes(32))

    @settings(
        max_examples=8,
        deadline=None,
        # one contract, one executor per mode class: each subclass replays its own examples
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
    )
    @given(
        st.lists(
            st.lists(
                st.floats(-10, 10, allow_nan=False, allow_infinity=False),
                min_size=LENGTH,
                max_size=LENGTH,
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_combine_matches_the_plaintext_oracle(self, rows: list[list[float]]) -> None:
        vectors = [np.asarray(r) for r in rows]
        combined = self.combine(self.mode(), [self.encode(v) for v in vectors])
        np.testing.assert_allclose(
            self.decode(combined)[:LENGTH], np.sum(vectors, axis=0), atol=self.tolerance
        )


_SECRET = CkksSecretContext.generate()


class TestCkksMode(AggregationModeContract):
    def mode(self) -> AggregationMode:
        return build_mode(CkksSpec(_SECRET.public().to_bytes()))

    def encode(self, vector: np.ndarray) -> bytes:
        return _SECRET.encrypt(vector)

    def decode(self, blob: bytes) -> np.ndarray:
        return _SECRET.decrypt(blob)

    def test_is_ckks(self) -> None:
        assert isinstance(self.mode(), CkksMode)
        assert CkksMode.name == CkksSpec.name == "ckks"

    def test_refuses_a_secret_context(self) -> None:
        with pytest.raises(BadInputError):
            build_mode(CkksSpec(_SECRET.to_bytes()))

    def test_spec_repr_hides_the_context(self) -> None:
        assert "bytes>" in repr(CkksSpec(b"x" * 100))


class TestMpcMode(AggregationModeContract):
    """MPC with one member and threshold one: its share is the secret, so a partial is the
    sum (the t-of-k behaviour is tested below and in test_aggregator_mpc.py)."""

    scheme = ShamirScheme(1, 1)

    def mode(self) -> AggregationMode:
        return build_mode(
            MpcSpec(bytes(32)),
            study_id=STUDY_ID,
            members=("member-1",),
            member_id="member-1",
            threshold=1,
            prime=PRIME,
        )

    def encode(self, vector: np.ndarray) -> bytes:
        secret = FieldEncoding().encode(np.asarray(vector, dtype=np.float64), clients=4)
        (only,) = share(secret, self.scheme, domains=[bytes(32)])
        return SharePayload(self.scheme, int(secret.size), only).to_bytes()

    def decode(self, blob: bytes) -> np.ndarray:
        return FieldEncoding().decode(unpack_field(blob, len(blob) * 8 // 23, PRIME))

    def test_is_mpc_and_partial(self) -> None:
        assert isinstance(self.mode(), MpcMode)
        assert MpcMode.partial
        assert not CkksMode.partial

    def test_combine_needs_the_senders(self) -> None:
        payload = self.encode(np.ones(LENGTH))
        with pytest.raises(BadInputError, match="sender"):
            self.mode().combine_kept(1, [bytes(32)], [payload].__getitem__)


MEMBERS = ("member-1", "member-2", "member-3")


@settings(max_examples=10, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-3, 3, allow_nan=False), min_size=LENGTH, max_size=LENGTH),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from([(0, 1), (0, 2), (1, 2), (0, 1, 2)]),
)
def test_mpc_partials_of_any_threshold_open_to_the_exact_sum(
    rows: list[list[float]], who: tuple[int, ...]
) -> None:
    """k = 3, t = 2: each member combines its own (seeded or full) shares into a partial;
    any two or all three partials open to the field sum of the encoded updates."""
    scheme = ShamirScheme(3, 2)
    encoding = FieldEncoding()
    modes = [
        build_mode(
            MpcSpec(bytes(32)),
            study_id=STUDY_ID,
            members=MEMBERS,
            member_id=m,
            threshold=2,
            prime=PRIME,
        )
        for m in MEMBERS
    ]
    senders = [f"owner-{i}" for i in range(len(rows))]
    payloads: list[list[bytes]] = [[] for _ in MEMBERS]
    expected = np.zeros(LENGTH, dtype=np.int64)
    for i, (sender, row) in enumerate(zip(senders, rows, strict=True)):
        secret = encoding.encode(np.asarray(row), clients=4)
        expected = (expected + secret) % PRIME
        domains = [share_domain(STUDY_ID, 1, m, sender) for m in MEMBERS]
        for s in share(secret, scheme, domains=domains, seeded=[i % 3]):
            payloads[s.index].append(SharePayload(scheme, LENGTH, s).to_bytes())
    partials = {}
    for j, mode in enumerate(modes):
        keys = [tagged_hash(Tag.PAYLOAD, p) for p in payloads[j]]
        partials[MEMBERS[j]] = mode.combine_kept(1, keys, payloads[j].__getitem__, senders=senders)
    chosen = {MEMBERS[j]: partials[MEMBERS[j]] for j in who}
    opened = modes[0].open_partials(chosen, length=LENGTH)
    assert opened.wrong == ()
    assert np.array_equal(unpack_field(opened.aggregate, LENGTH, PRIME), expected)


def test_an_mpc_member_takes_only_its_own_share_of_its_studys_scheme() -> None:
    scheme = ShamirScheme(3, 2)
    secret = FieldEncoding().encode(np.ones(LENGTH), clients=4)
    domains = [share_domain(STUDY_ID, 1, m, "owner-0") for m in MEMBERS]
    shares = share(secret, scheme, domains=domains)
    mode = build_mode(
        MpcSpec(bytes(32)),
        study_id=STUDY_ID,
        members=MEMBERS,
        member_id="member-2",
        threshold=2,
        prime=PRIME,
    )
    mode.check(SharePayload(scheme, LENGTH, shares[1]).to_bytes(), length=LENGTH)
    with pytest.raises(BadInputError, match="member 0's"):
        mode.check(SharePayload(scheme, LENGTH, shares[0]).to_bytes(), length=LENGTH)
    other = ShamirScheme(3, 3)
    (_, second, _) = share(secret, other, domains=domains)
    with pytest.raises(BadInputError, match="t=3"):
        mode.check(SharePayload(other, LENGTH, second).to_bytes(), length=LENGTH)


def test_ckks_uploads_are_parsed_once_into_a_running_sum() -> None:
    """accept adds each upload to its round's running sum; combine_kept finishes that sum
    without loading any upload when it holds exactly the client set, and otherwise sums the
    stored uploads: a smaller set, a payload hash other than the one added, a restart."""
    spec = CkksSpec(_SECRET.public().to_bytes())
    rng = np.random.default_rng(5)
    length = 2 * 4096 + 11
    payloads = [_SECRET.encrypt(rng.normal(0, 1, length)) for _ in range(4)]
    keys = [tagged_hash(Tag.CKKS_CONTEXT, p) for p in payloads]
    senders = [f"owner-{i}" for i in range(4)]
    plain = build_mode(spec)
    loaded: list[int] = []

    def load(i: int) -> bytes:
        loaded.append(i)
        return payloads[i]

    def accepted(rounds: tuple[int, ...]) -> AggregationMode:
        mode = build_mode(spec)
        for rnd in rounds:
            for payload, key, sender in zip(payloads, keys, senders, strict=True):
                mode.accept(payload, length=length, round=rnd, key=key, sender=sender)
        return mode

    mode = accepted((1, 2))
    # A second upload from a sender does not enter the sum.
    mode.accept(payloads[0], length=length, round=1, key=keys[0], sender=senders[1])
    assert mode.combine_kept(1, keys, load, senders=senders) == plain.combine(payloads)
    assert loaded == []
    # Round 1 is released; round 2's sum is still there.
    assert mode.combine_kept(2, keys, load, senders=senders) == plain.combine(payloads)
    assert loaded == []
    # Round 2 was finished and dropped: asking again sums the stored uploads.
    assert mode.combine_kept(2, keys, load, senders=senders) == plain.combine(payloads)
    assert loaded == [0, 1, 2, 3]

    loaded.clear()
    smaller = accepted((3,)).combine_kept(3, keys[:3], load, senders=senders[:3])
    assert smaller == plain.combine(payloads[:3])
    assert loaded == [0, 1, 2]

    loaded.clear()
    swapped = [keys[0], keys[2], keys[2], keys[3]]  # the store kept another upload for owner-1
    assert accepted((4,)).combine_kept(4, swapped, load, senders=senders) == plain.combine(payloads)
    assert loaded == [0, 1, 2, 3]

    loaded.clear()
    restarted = build_mode(spec)  # nothing accepted since the restart
    assert restarted.combine_kept(5, keys, load, senders=senders) == plain.combine(payloads)
    assert loaded == [0, 1, 2, 3]


def test_unknown_spec_is_a_config_error() -> None:
    class Unknown(ModeSpec):
        name = "unknown"

        def setup_digest(self) -> bytes:
            return bytes(32)

        def verify_dealt(self, study_id: str, dealer: PublicIdentity | None) -> None:
            return None

    with pytest.raises(ConfigError, match="unsupported"):
        build_mode(Unknown())


def test_the_dealt_context_digest_binds_study_and_context() -> None:
    context = _SECRET.public().to_bytes()
    digest = dealt_context_digest(STUDY_ID, context)
    assert digest == tagged_hash(
        Tag.DEALT_CONTEXT, bytes.fromhex(STUDY_ID), _SECRET.public().fingerprint()
    )
    assert context_fingerprint(context) == _SECRET.public().fingerprint()
    assert dealt_context_digest("cd" * 32, context) != digest
    other = CkksSecretContext.generate().public().to_bytes()
    assert dealt_context_digest(STUDY_ID, other) != digest
    with pytest.raises(BadInputError, match="64"):
        dealt_context_digest("study-1", context)


def test_a_dealt_spec_verifies_only_for_its_dealer_and_study() -> None:
    dealer = Identity.generate("hospital-a", seed=b"\x01" * 32)
    other = Identity.generate("hospital-b", seed=b"\x02" * 32)
    context = _SECRET.public().to_bytes()
    spec = CkksSpec(context, sign_dealt_context(dealer, STUDY_ID, context))
    spec.verify_dealt(STUDY_ID, dealer.public)
    assert spec.setup_digest() == context_fingerprint(context)
    for study, who in ((STUDY_ID, other.public), ("cd" * 32, dealer.public), (STUDY_ID, None)):
        with pytest.raises(VerificationError):
            spec.verify_dealt(study, who)
    with pytest.raises(VerificationError):
        CkksSpec(context).verify_dealt(STUDY_ID, dealer.public)


def test_mpc_running_sum_serves_the_full_set_and_every_other_set_is_loaded() -> None:
    """accept adds each share to its round's running sum: combine_kept over exactly those
    shares loads no upload. A smaller client set, a sender whose stored share is not the one
    summed, or a restarted member (no running sum) sums the stored uploads instead, with the
    same result; a sender's second share never enters the sum; a round's sum is released."""
    scheme = ShamirScheme(3, 2)

    def mode() -> MpcMode:
        built = build_mode(
            MpcSpec(bytes(32)),
            study_id=STUDY_ID,
            members=MEMBERS,
            member_id=MEMBERS[1],
            threshold=2,
            prime=PRIME,
        )
        assert isinstance(built, MpcMode)
        return built

    rng = np.random.default_rng(9)
    length = 1001
    senders = [f"owner-{i}" for i in range(4)]
    secrets, payloads = [], []
    for i, sender in enumerate(senders):
        secret = FieldEncoding().encode(rng.normal(0, 1, length), clients=4)
        domains = [share_domain(STUDY_ID, 1, m, sender) for m in MEMBERS]
        shares = share(secret, scheme, domains=domains, seeded=[i % 2])  # seeds and full
        secrets.append(secret)
        payloads.append(SharePayload(scheme, length, shares[1]).to_bytes())
    keys = [tagged_hash(Tag.PAYLOAD, p) for p in payloads]
    loaded: list[int] = []

    def load(i: int) -> bytes:
        loaded.append(i)
        return payloads[i]

    def reference(indices: list[int]) -> bytes:
        fresh = mode()
        return fresh.combine_kept(
            1, [keys[i] for i in indices], lambda j: payloads[indices[j]],
            senders=[senders[i] for i in indices],
        )  # fmt: skip

    first = mode()
    for payload, key, sender in zip(payloads, keys, senders, strict=True):
        first.accept(payload, length=length, round=1, key=key, sender=sender)
    # a second share of owner-0 (another payload) is checked but stays out of the sum
    first.accept(payloads[1], length=length, round=1, key=keys[1], sender=senders[0])
    full = first.combine_kept(1, keys, load, senders=senders)
    assert loaded == []
    assert full == reference([0, 1, 2, 3])
    assert full != reference([0, 1, 2])  # the sum depends on the set (the test can fail)
    # released: the same call again (a replayed Aggregate) sums the stored uploads
    assert first.combine_kept(1, keys, load, senders=senders) == full
    assert loaded == [0, 1, 2, 3]

    cases: list[tuple[list[bytes], list[str], bytes]] = [
        (keys[:3], senders[:3], reference([0, 1, 2])),  # owner-3 dropped by the norm check
        ([*keys[:3], keys[2]], senders, full),  # the store holds another share of owner-3
    ]
    for wanted, from_senders, expected in cases:
        loaded.clear()
        again = mode()
        for payload, key, sender in zip(payloads, keys, senders, strict=True):
            again.accept(payload, length=length, round=1, key=key, sender=sender)
        assert again.combine_kept(1, wanted, load, senders=from_senders) == expected
        assert loaded, "a set other than the running sum's must be loaded"
    loaded.clear()
    restarted = mode()
    assert restarted.combine_kept(1, keys, load, senders=senders) == full
    assert loaded == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("prime", "owners"),
    [(PRIME, 2 * lazy_adds_u32(PRIME) + 100), (2**31 - 1, 7)],  # sums past 2^32
)
def test_mpc_running_sum_reduces_before_uint32_can_overflow(prime: int, owners: int) -> None:
    """The running sum is uint32, reduced mod p every lazy_adds_u32(p) additions: with
    values near p it would wrap without those reductions. It equals the int64 sum of the
    stored uploads (the path a restarted member takes)."""
    assert lazy_adds_u32(PRIME) == 511
    assert lazy_adds_u32(2**31 - 1) == 1
    scheme = ShamirScheme(3, 2, prime)
    length = 16
    senders = [f"owner-{i:04d}" for i in range(owners)]
    rng = np.random.default_rng(owners)
    payloads = []
    for sender in senders:
        secret = rng.integers(prime - 1000, prime, length)  # near p: the worst case
        domains = [share_domain(STUDY_ID, 1, m, sender) for m in MEMBERS]
        (_, mine, _) = share(secret, scheme, domains=domains, seeded=[0])
        payloads.append(SharePayload(scheme, length, mine).to_bytes())
    keys = [tagged_hash(Tag.PAYLOAD, p) for p in payloads]

    def mode() -> MpcMode:
        return MpcMode(study_id=STUDY_ID, members=MEMBERS, member_id=MEMBERS[1], scheme=scheme)

    running = mode()
    for payload, key, sender in zip(payloads, keys, senders, strict=True):
        running.accept(payload, length=length, round=1, key=key, sender=sender)
    fast = running.combine_kept(1, keys, payloads.__getitem__, senders=senders)
    slow = mode().combine_kept(1, keys, payloads.__getitem__, senders=senders)
    assert fast == slow
    values = [
        mode().values(p, length=length, round=1, sender=s)
        for p, s in zip(payloads, senders, strict=True)
    ]
    expected = np.sum(np.array(values, dtype=object), axis=0) % prime
    np.testing.assert_array_equal(unpack_field(fast, length, prime), expected.astype(np.int64))
