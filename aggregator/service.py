"""gRPC face of a committee member, and the wire <-> dataclass conversions.

The servicer decodes every request once into the dataclasses of
``cohort.aggregator.member`` and maps Cohort errors to status codes, with the reason in the
details and the exact error class in the ``cohort-error`` trailing metadata:

=====================  ====================  ======================================
Cohort error           gRPC status           meaning
=====================  ====================  ======================================
BadInputError          INVALID_ARGUMENT      malformed request or payload
VerificationError      PERMISSION_DENIED     tampering: signature, hash, replay ...
ProtocolAbort          FAILED_PRECONDITION   wrong state: not configured, round ...
anything else          INTERNAL              a bug; details say only "internal error"
=====================  ====================  ======================================

Messages may be large (one CKKS update of 1M values is ~81 MB), so server and channels
raise gRPC's 4 MB default to :data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from cohort.aggregator.member import (
    AggregateResult,
    CommitteeMember,
    DataOwner,
    MemberInfo,
    MemberStatus,
    Reason,
    Rejection,
    StudyConfig,
    Verdict,
)
from cohort.aggregator.modes import CkksSpec, ModeSpec
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.proto import committee_pb2_grpc as pb_grpc
from cohort.crypto.identity import PublicIdentity
from cohort.errors import (
    BadInputError,
    BudgetExhausted,
    CohortError,
    ConfigError,
    ProtocolAbort,
    VerificationError,
)
from cohort.logs import fields, get_logger

log = get_logger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Largest request or reply (256 MiB): room for ~100 MB payloads plus framing."""

GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
"""Channel and server options every Cohort committee endpoint uses."""

ERROR_METADATA_KEY = "cohort-error"

ERROR_TYPES: dict[str, type[CohortError]] = {
    cls.__name__: cls
    for cls in (
        BadInputError,
        ConfigError,
        VerificationError,
        ProtocolAbort,
        BudgetExhausted,
    )
}
"""Cohort error classes that may cross the wire, by name."""


def status_for(error: CohortError) -> grpc.StatusCode:
    """gRPC status code of a Cohort error (see the module table)."""
    if isinstance(error, BadInputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, VerificationError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(error, ProtocolAbort):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


# --------------------------------------------------------------------------- wire codecs


def identity_to_proto(identity: PublicIdentity) -> pb.PublicIdentity:
    return pb.PublicIdentity(
        party_id=identity.party_id, sign_key=identity.sign_key, box_key=identity.box_key
    )


def identity_from_proto(msg: pb.PublicIdentity, *, what: str) -> PublicIdentity:
    if not msg.party_id:
        raise BadInputError(f"{what}: party_id is empty")
    if len(msg.sign_key) != 32 or len(msg.box_key) != 32:
        raise BadInputError(f"{what}: sign_key and box_key must be 32 bytes each")
    return PublicIdentity(party_id=msg.party_id, sign_key=msg.sign_key, box_key=msg.box_key)


def info_to_proto(info: MemberInfo) -> pb.MemberInfo:
    return pb.MemberInfo(
        member_id=info.member_id,
        identity=identity_to_proto(info.identity),
        eth_address=info.eth_address,
    )


def info_from_proto(msg: pb.MemberInfo) -> MemberInfo:
    identity = identity_from_proto(msg.identity, what="member identity")
    if identity.party_id != msg.member_id:
        raise BadInputError("member info: identity party_id differs from member_id")
    return MemberInfo(msg.member_id, identity, msg.eth_address)


def status_to_proto(status: MemberStatus) -> pb.InfoReply:
    reply = pb.InfoReply(
        member=info_to_proto(status.info),
        modes=list(status.modes),
        study_id=status.study_id or "",
        received=list(status.received),
    )
    if status.open_round is not None:
        reply.open_round = status.open_round
    return reply


def status_from_proto(msg: pb.InfoReply) -> MemberStatus:
    return MemberStatus(
        info=info_from_proto(msg.member),
        modes=tuple(msg.modes),
        study_id=msg.study_id or None,
        open_round=msg.open_round if msg.HasField("open_round") else None,
        received=tuple(msg.received),
    )


def study_to_proto(study: StudyConfig) -> pb.StudyConfig:
    msg = pb.StudyConfig(
        study_id=study.study_id,
        owners=[
            pb.DataOwner(identity=identity_to_proto(o.identity), payout_address=o.payout_address)
            for o in study.owners
        ],
        update_length=study.update_length,
        committee=list(study.committee),
        quorum=study.quorum,
        chain_id=study.chain_id,
        contract=study.contract,
    )
    if isinstance(study.mode, CkksSpec):
        msg.ckks.public_context = study.mode.public_context
    else:
        raise ConfigError(f"study config: mode {study.mode.name!r} has no wire form")
    return msg


def study_from_proto(msg: pb.StudyConfig) -> StudyConfig:
    """Decode and validate a study config (ConfigError/BadInputError naming the field)."""
    kind = msg.WhichOneof("mode")
    mode: ModeSpec
    if kind == "ckks":
        mode = CkksSpec(public_context=msg.ckks.public_context)
    else:
        raise ConfigError("study config: mode is missing or unsupported")
    owners = tuple(
        DataOwner(identity_from_proto(o.identity, what="data owner"), o.payout_address)
        for o in msg.owners
    )
    return StudyConfig(
        study_id=msg.study_id,
        owners=owners,
        mode=mode,
        update_length=msg.update_length,
        committee=tuple(msg.committee),
        quorum=msg.quorum,
        chain_id=msg.chain_id,
        contract=msg.contract,
    )


def result_to_proto(result: AggregateResult) -> pb.AggregateResult:
    return pb.AggregateResult(
        member_id=result.member_id,
        study_id=result.study_id,
        round=result.round,
        client_ids=list(result.client_ids),
        aggregate=result.aggregate,
        aggregate_hash=result.aggregate_hash,
        signature=result.signature,
        eth_address=result.eth_address,
        eth_signature=result.eth_signature,
        rejections=[
            pb.Rejection(sender=r.sender, reason=r.reason.value, count=r.count)
            for r in result.rejections
        ],
    )


def result_from_proto(msg: pb.AggregateResult) -> AggregateResult:
    try:
        rejections = tuple(Rejection(r.sender, Reason(r.reason), r.count) for r in msg.rejections)
    except ValueError as exc:
        raise BadInputError("aggregate result: unknown rejection reason") from exc
    return AggregateResult(
        member_id=msg.member_id,
        study_id=msg.study_id,
        round=msg.round,
        client_ids=tuple(msg.client_ids),
        aggregate=msg.aggregate,
        aggregate_hash=msg.aggregate_hash,
        signature=msg.signature,
        eth_address=msg.eth_address,
        eth_signature=msg.eth_signature,
        rejections=rejections,
    )


def verdict_to_proto(verdict: Verdict) -> pb.UploadReply:
    return pb.UploadReply(
        member_id=verdict.member_id,
        sender=verdict.sender,
        round=verdict.round or 0,
        payload_hash=verdict.payload_hash,
    )


def verdict_from_proto(msg: pb.UploadReply) -> Verdict:
    return Verdict(msg.member_id, True, msg.sender, msg.round, payload_hash=msg.payload_hash)


# --------------------------------------------------------------------------- servicer

_Reply = TypeVar("_Reply")


class CommitteeServicer(pb_grpc.CommitteeServicer):
    """Serves one :class:`CommitteeMember` over gRPC (see module doc for error codes)."""

    def __init__(self, member: CommitteeMember) -> None:
        self._member = member

    def _run(self, context: Any, rpc: str, body: Callable[[], _Reply]) -> _Reply:
        try:
            return body()
        except CohortError as exc:
            code, details, name = status_for(exc), str(exc), type(exc).__name__
            log.info(
                "rpc refused",
                extra=fields(member=self._member.member_id, rpc=rpc, code=code.name, error=details),
            )
        except Exception:
            log.exception("rpc failed", extra=fields(member=self._member.member_id, rpc=rpc))
            code, details, name = grpc.StatusCode.INTERNAL, "internal error", ""
        if name:
            context.set_trailing_metadata(((ERROR_METADATA_KEY, name),))
        context.abort(code, details)  # raises
        raise RuntimeError("grpc context.abort returned")

    def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoReply:  # noqa: N802
        """Anyone: who the member is and where it stands."""
        return self._run(context, "Info", lambda: status_to_proto(self._member.status()))

    def Configure(self, request: pb.ConfigureRequest, context: Any) -> pb.ConfigureReply:  # noqa: N802
        """Coordinator: bind the member to a study."""

        def body() -> pb.ConfigureReply:
            study = study_from_proto(request.study)
            self._member.configure(study, reset=request.reset)
            return pb.ConfigureReply(study_id=study.study_id)

        return self._run(context, "Configure", body)

    def OpenRound(self, request: pb.OpenRoundRequest, context: Any) -> pb.OpenRoundReply:  # noqa: N802
        """Coordinator: open a round."""

        def body() -> pb.OpenRoundReply:
            self._member.open_round(
                request.round,
                study_id=request.study_id or None,
                deadline=request.deadline if request.HasField("deadline") else None,
            )
            return pb.OpenRoundReply(round=request.round)

        return self._run(context, "OpenRound", body)

    def Upload(self, request: pb.UploadRequest, context: Any) -> pb.UploadReply:  # noqa: N802
        """Data owner: one envelope. A rejection aborts with its reason code."""

        def body() -> pb.UploadReply:
            verdict = self._member.accept(request.envelope)
            verdict.raise_if_rejected()  # "<reason code>: <detail>" as the details
            return verdict_to_proto(verdict)

        return self._run(context, "Upload", body)

    def Aggregate(self, request: pb.AggregateRequest, context: Any) -> pb.AggregateReply:  # noqa: N802
        """Coordinator: aggregate the agreed client set and sign."""

        def body() -> pb.AggregateReply:
            result = self._member.aggregate(
                request.round, list(request.client_ids), study_id=request.study_id or None
            )
            return pb.AggregateReply(result=result_to_proto(result))

        return self._run(context, "Aggregate", body)


def serve(
    member: CommitteeMember, *, host: str = "127.0.0.1", port: int = 0, max_workers: int = 8
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``member``; returns it (started) and the bound port.

    Run by the committee member's process. ``port=0`` picks a free port. The server is
    plaintext: bind to loopback or put it behind TLS termination (see docs/committee.md).
    """
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS)
    pb_grpc.add_CommitteeServicer_to_server(CommitteeServicer(member), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise ConfigError(f"committee member: could not bind {host}:{port} (address in use?)")
    server.start()
    log.info("member serving", extra=fields(member=member.member_id, host=host, port=bound))
    return server, bound
