"""Contract tests every AggregationMode passes (CKKS now; MPC inherits the same class later)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohort.aggregator.modes import (
    AggregationMode,
    CkksMode,
    CkksSpec,
    ModeSpec,
    build_mode,
    context_fingerprint,
    dealt_context_digest,
    sign_dealt_context,
)
from cohort.crypto.ckks import CkksSecretContext
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity
from cohort.errors import BadInputError, ConfigError, VerificationError

LENGTH = 6


class AggregationModeContract(ABC):
    """Subclass per mode: provide the mode, an encoder of one update and a decoder."""

    @abstractmethod
    def mode(self) -> AggregationMode: ...

    @abstractmethod
    def encode(self, vector: np.ndarray) -> bytes: ...

    @abstractmethod
    def decode(self, blob: bytes) -> np.ndarray: ...

    tolerance = 1e-3

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
        first = self.mode().combine(payloads)
        assert self.mode().combine(payloads) == first
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
        assert mode.combine_kept(1, keys, payloads.__getitem__) == mode.combine(payloads)

    @pytest.mark.parametrize("bad", [b"", b"garbage" * 100])
    def test_accept_rejects_what_check_rejects(self, bad: bytes) -> None:
        with pytest.raises(BadInputError):
            self.mode().accept(bad, length=LENGTH, round=1, key=bytes(32))

    @settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
        combined = self.mode().combine([self.encode(v) for v in vectors])
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


def test_ckks_kept_uploads_are_parsed_once_and_released(tmp_path: Path) -> None:
    """accept writes each upload's coefficients once; combine_kept sums the files without
    loading any upload (unless its file is gone or damaged) and removes them afterwards."""
    spec = CkksSpec(_SECRET.public().to_bytes())
    mode = build_mode(spec, kept=tmp_path / "kept")
    rng = np.random.default_rng(5)
    length = 4096 + 11
    payloads = [_SECRET.encrypt(rng.normal(0, 1, length)) for _ in range(4)]
    keys = [tagged_hash(Tag.CKKS_CONTEXT, p) for p in payloads]
    for rnd in (1, 2):
        for payload, key in zip(payloads, keys, strict=True):
            mode.accept(payload, length=length, round=rnd, key=key)
    assert len(list((tmp_path / "kept").glob("*.coef"))) == 8
    expected = build_mode(spec).combine(payloads)
    loaded: list[int] = []

    def load(i: int) -> bytes:
        loaded.append(i)
        return payloads[i]

    assert mode.combine_kept(1, keys, load) == expected
    assert loaded == []
    assert len(list((tmp_path / "kept").glob("*.coef"))) == 4  # round 1's files are gone
    # A restarted member (a new mode over the same folder) finds round 2's files; a missing
    # or truncated one is replaced by parsing the stored upload.
    again = build_mode(spec, kept=tmp_path / "kept")
    files = sorted((tmp_path / "kept").glob("*.coef"))
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:-8])
    assert again.combine_kept(2, keys, load) == expected
    assert len(loaded) == 2  # only the two uploads whose files were spoilt
    assert list((tmp_path / "kept").iterdir()) == []


def test_unknown_spec_is_a_config_error() -> None:
    class Unknown(ModeSpec):
        name = "unknown"

        def setup_digest(self) -> bytes:
            return bytes(32)

        def verify_dealt(self, study_id: str, dealer: PublicIdentity | None) -> None:
            return None

    with pytest.raises(ConfigError, match="unsupported"):
        build_mode(Unknown())


STUDY_ID = "ab" * 32


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
