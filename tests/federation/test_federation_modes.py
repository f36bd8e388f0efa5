"""Contract tests every secure mode's owner side and coordinator side passes (none, CKKS,
MPC): the round steps call them without knowing the mode, so each must behave alike where
the steps rely on it.

The owners are real (keys, approvals, DP-SGD, the demo data); the committee is unreachable
on purpose (placeholder endpoints), which is what the owner-side contract is about: no
budget is spent on a round whose committee cannot take it.
"""

from __future__ import annotations

from abc import ABC
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest
from studykit import Study, hospitals, make_study

from cohort.clients.model import build_model, get_flat
from cohort.errors import BadInputError
from cohort.federation import hospital, wire
from cohort.federation.manifest import SecureMode
from cohort.federation.modes import (
    CoordinatorMode,
    OwnerMode,
    RoundSkipped,
    coordinator_mode,
    owner_mode,
)
from cohort.federation.policy import HospitalPolicy

ALL = frozenset(SecureMode)


class ModeContract(ABC):
    """Subclass per mode; ``secure`` names it, ``committee`` says whether it has one."""

    secure: ClassVar[SecureMode]
    committee: ClassVar[bool] = True
    #: a non-finite update: BadInputError (True) or a ``failed`` delivery naming it (False)
    refuses_by_raising: ClassVar[bool] = True

    @pytest.fixture
    def study(self, tmp_path: Path) -> Study:
        owners = hospitals(tmp_path, 3, policy=HospitalPolicy(epsilon_cap=3.0, modes=ALL))
        return make_study(owners, secure=self.secure)

    def owner(self, study: Study) -> OwnerMode:
        return owner_mode(study.owners[0], study.manifest)

    def coordinator(self, study: Study) -> CoordinatorMode:
        attrs = {"manifest": study.manifest, "timed": lambda self, phase: nullcontext()}
        host = cast(Any, type("Host", (), attrs)())
        return coordinator_mode(host, cast(Any, None))

    def train(self, study: Study) -> hospital.TrainOutcome:
        instruction = wire.TrainInstruction(study.study_id, round=1, weight_unit=10_000)
        start = get_flat(build_model("mlp", in_features=30, num_classes=2))
        return hospital.train(study.owners[0], instruction, start)

    def test_the_mode_is_the_manifests(self, study: Study) -> None:
        assert self.owner(study).name is self.secure
        assert self.coordinator(study).name is self.secure

    def test_a_committee_that_cannot_take_the_round_costs_no_budget(self, study: Study) -> None:
        outcome = self.train(study)
        if not self.committee:
            assert outcome.receipt.status == "ok"
            return
        assert outcome.receipt.status == "declined"
        assert "reachable" in outcome.receipt.reason
        assert outcome.receipt.epsilon == 0.0
        assert outcome.update is None

    def test_only_the_plaintext_mode_reads_an_update_from_a_reply(self, study: Study) -> None:
        content = wire.put_vector(
            wire.TrainInstruction(study.study_id, 1, 1).to_record(),
            np.zeros(study.manifest.update_length, dtype=np.float32),
        )
        update = self.coordinator(study).read_update(content)
        assert (update is not None) is (not self.committee)

    def test_finish_never_releases_a_sum_below_min_clients(self, study: Study) -> None:
        """With one usable receipt (and no member holding anything) the round is skipped."""
        receipt = wire.TrainReceipt(
            party_id="hospital-1",
            status="ok",
            reason="",
            examples=10,
            epsilon=0.1,
            payload_hash=b"",
            delivered=(),
            receipts=(),
        )
        updates = {"hospital-1": np.zeros(study.manifest.update_length)}
        mode = self.coordinator(study)
        if self.committee:
            mode.members = cast(Any, _NoMembers(study.manifest.member_ids))
        with pytest.raises(RoundSkipped):
            mode.finish(1, [], {"hospital-1": receipt}, updates, {1: "hospital-1"})

    def test_a_non_finite_update_is_never_sent(self, study: Study) -> None:
        mode = self.owner(study)
        bad = np.full(study.manifest.update_length, np.nan)
        identity = study.owners[0].keystore.identity()
        if self.refuses_by_raising:
            with pytest.raises(BadInputError, match="finite"):
                mode.deliver(identity, round=1, update=bad)
            return
        delivery = mode.deliver(identity, round=1, update=bad)
        assert delivery.status == "failed"
        assert "finite" in delivery.reason
        assert delivery.delivered == ()


class _NoMembers:
    """A committee whose members answer nothing (every call fails as unreachable)."""

    def __init__(self, member_ids: tuple[str, ...]) -> None:
        self.member_ids = member_ids

    def status_all(self, members: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
        from cohort.errors import ProtocolAbort

        return {}, {m: ProtocolAbort("unreachable") for m in (members or self.member_ids)}

    def replicate_all(self, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}


class TestPlainMode(ModeContract):
    secure = SecureMode.NONE
    committee = False


class TestCkksMode(ModeContract):
    secure = SecureMode.CKKS

    @pytest.fixture
    def study(self, tmp_path: Path) -> Study:
        """As the contract's, with the dealer's CKKS key dealt to every owner."""
        owners = hospitals(tmp_path, 3, policy=HospitalPolicy(epsilon_cap=3.0, modes=ALL))
        study = make_study(owners, secure=self.secure)
        dealt = hospital.keygen(owners[0], wire.KeygenRequest(study_id=study.study_id))
        for owner, box in zip(owners[1:], dealt.boxes, strict=True):
            hospital.install_key(
                owner,
                wire.InstallKeyRequest(
                    study.study_id, box, dealt.fingerprint, dealt.dealer_signature
                ),
            )
        return study

    def test_a_non_finite_update_is_never_sent(self, study: Study) -> None:
        mode = self.owner(study)
        assert mode.prepare() is not None  # the committee is unreachable, but the key loads
        bad = np.full(study.manifest.update_length, np.nan)
        with pytest.raises(BadInputError, match="finite"):
            mode.deliver(study.owners[0].keystore.identity(), round=1, update=bad)


class TestMpcMode(ModeContract):
    secure = SecureMode.MPC
    refuses_by_raising = False  # the range check is the owner's receipt: "failed", named

    def test_an_update_outside_the_field_range_is_refused_before_sharing(
        self, study: Study
    ) -> None:
        mode = self.owner(study)
        big = np.zeros(study.manifest.update_length)
        big[3] = 1e6
        delivery = mode.deliver(study.owners[0].keystore.identity(), round=1, update=big)
        assert delivery.status == "failed"
        assert "index 3" in delivery.reason
        assert delivery.delivered == ()
