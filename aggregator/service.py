"""gRPC face of a committee member, and the wire <-> dataclass conversions.

The servicer decodes every request once into the dataclasses of
``cohort.aggregator.member`` / ``cohort.aggregator.control`` (a coordinator call's body stays
serialized until the member has checked its signature and counter) and maps Cohort errors
to status codes, with the reason in the details and the exact error class in the
``cohort-error`` trailing metadata:

=====================  ====================  ======================================
Cohort error           gRPC status           meaning
=====================  ====================  ======================================
BadInputError          INVALID_ARGUMENT      malformed request or payload
VerificationError      PERMISSION_DENIED     tampering: signature, hash, replay ...
ProtocolAbort          FAILED_PRECONDITION   wrong state: not configured, round ...
anything else          INTERNAL              a bug; details say only "internal error"
=====================  ====================  ======================================

:func:`serve` serves TLS with the member's certificate, or plaintext when given none (the
``--insecure`` flag of ``python -m cohort.aggregator``). Messages may be large (one CKKS
update of 1M values is ~81 MB), so server and channels raise gRPC's 4 MB default to
:data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from cohort.aggregator.aggregate_fetch import AggregateFetch
from cohort.aggregator.control import SignedControl
from cohort.aggregator.member import (
    AggregateResult,
    CommitteeMember,
    CopyFailure,
    MemberInfo,
    PublicStatus,
    Reason,
    Rejection,
    Replication,
    StudyStatus,
    Verdict,
)
from cohort.aggregator.mpc_records import ValidationVerdict
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.proto import committee_pb2_grpc as pb_grpc
from cohort.aggregator.records import Holding
from cohort.aggregator.replication import FetchRequest
from cohort.crypto.identity import PublicIdentity
from cohort.crypto.tls import CertKey, server_credentials
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


def public_status_to_proto(status: PublicStatus) -> pb.InfoReply:
    return pb.InfoReply(
        member=info_to_proto(status.info),
        modes=list(status.modes),
        tls_fingerprint=status.tls_fingerprint,
    )


def public_status_from_proto(msg: pb.InfoReply) -> PublicStatus:
    return PublicStatus(
        info=info_from_proto(msg.member),
        modes=tuple(msg.modes),
        tls_fingerprint=msg.tls_fingerprint,
    )


def _failures_to_proto(failures: tuple[CopyFailure, ...]) -> list[pb.CopyFailure]:
    return [
        pb.CopyFailure(sender=f.sender, relayer=f.relayer, reason=f.reason.value, detail=f.detail)
        for f in failures
    ]


def _failures_from_proto(msgs: Any) -> tuple[CopyFailure, ...]:
    try:
        return tuple(CopyFailure(f.sender, f.relayer, Reason(f.reason), f.detail) for f in msgs)
    except ValueError as exc:
        raise BadInputError("copy failure: unknown reason") from exc


def study_status_to_proto(status: StudyStatus) -> pb.StatusReply:
    reply = pb.StatusReply(
        study_id=status.study_id,
        highest_round=status.highest_round,
        received=list(status.received),
        aggregated=list(status.aggregated),
        copy_failures=_failures_to_proto(status.copy_failures),
    )
    if status.open_round is not None:
        reply.open_round = status.open_round
    return reply


def study_status_from_proto(msg: pb.StatusReply) -> StudyStatus:
    return StudyStatus(
        study_id=msg.study_id,
        open_round=msg.open_round if msg.HasField("open_round") else None,
        highest_round=msg.highest_round,
        received=tuple(msg.received),
        aggregated=tuple(msg.aggregated),
        copy_failures=_failures_from_proto(msg.copy_failures),
    )


def replication_to_proto(replication: Replication) -> pb.ReplicateReply:
    return pb.ReplicateReply(
        round=replication.round,
        held=[pb.Holding(sender=h.sender, payload_hash=h.payload_hash) for h in replication.held],
        failures=_failures_to_proto(replication.failures),
    )


def replication_from_proto(msg: pb.ReplicateReply) -> Replication:
    return Replication(
        round=msg.round,
        held=tuple(Holding(h.sender, h.payload_hash) for h in msg.held),
        failures=_failures_from_proto(msg.failures),
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


def verdict_record_to_proto(verdict: ValidationVerdict) -> pb.ValidateReply:
    return pb.ValidateReply(
        member_id=verdict.member_id,
        round=verdict.round,
        accepted=verdict.accepted,
        rejected=verdict.rejected,
        signature=verdict.signature,
    )


def verdict_record_from_proto(
    msg: pb.ValidateReply, *, study_id: str = "", participants: tuple[str, ...] = ()
) -> ValidationVerdict:
    """The verdict as received; the caller fills in the study and participants it asked
    about (they are signed, so a verdict for anything else fails :meth:`verify`)."""
    return ValidationVerdict(
        member_id=msg.member_id,
        study_id=study_id,
        round=msg.round,
        participants=participants,
        accepted=tuple(msg.accepted),
        rejected=tuple(msg.rejected),
        signature=msg.signature,
    )


def verdict_to_proto(verdict: Verdict) -> pb.UploadReply:
    return pb.UploadReply(
        member_id=verdict.member_id,
        sender=verdict.sender,
        round=verdict.round or 0,
        payload_hash=verdict.payload_hash,
        receipt=verdict.receipt,
    )


def verdict_from_proto(msg: pb.UploadReply) -> Verdict:
    return Verdict(
        msg.member_id,
        True,
        msg.sender,
        msg.round,
        payload_hash=msg.payload_hash,
        receipt=msg.receipt,
    )


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
            # tampering (signatures, replays, approvals) is worth an operator's attention
            level = logging.WARNING if isinstance(exc, VerificationError) else logging.INFO
            log.log(
                level,
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
        """Anyone: who the member is and which modes it runs."""
        return self._run(
            context, "Info", lambda: public_status_to_proto(self._member.public_status())
        )

    def Configure(self, request: pb.SignedControl, context: Any) -> pb.ConfigureReply:  # noqa: N802
        """Coordinator (signed): bind the member to an approved study."""

        def body() -> pb.ConfigureReply:
            study_id = self._member.configure(SignedControl.from_proto(request))
            return pb.ConfigureReply(study_id=study_id)

        return self._run(context, "Configure", body)

    def OpenRound(self, request: pb.SignedControl, context: Any) -> pb.OpenRoundReply:  # noqa: N802
        """Coordinator (signed): open a round."""

        def body() -> pb.OpenRoundReply:
            number = self._member.open_round(SignedControl.from_proto(request))
            return pb.OpenRoundReply(round=number)

        return self._run(context, "OpenRound", body)

    def Upload(self, request: pb.UploadRequest, context: Any) -> pb.UploadReply:  # noqa: N802
        """Data owner: one envelope. A rejection aborts with its reason code."""

        def body() -> pb.UploadReply:
            verdict = self._member.accept(request.envelope)
            verdict.raise_if_rejected()  # "<reason code>: <detail>" as the details
            return verdict_to_proto(verdict)

        return self._run(context, "Upload", body)

    def Replicate(self, request: pb.SignedControl, context: Any) -> pb.ReplicateReply:  # noqa: N802
        """Coordinator (signed): fetch the open round's uploads this member lacks."""

        def body() -> pb.ReplicateReply:
            replication = self._member.replicate(SignedControl.from_proto(request))
            return replication_to_proto(replication)

        return self._run(context, "Replicate", body)

    def Fetch(self, request: pb.FetchRequest, context: Any) -> pb.FetchReply:  # noqa: N802
        """Another member (signed request): this member's copy of one upload."""

        def body() -> pb.FetchReply:
            return pb.FetchReply(upload=self._member.fetch(FetchRequest.from_proto(request)))

        return self._run(context, "Fetch", body)

    def FetchAggregate(  # noqa: N802
        self, request: pb.AggregateFetch, context: Any
    ) -> pb.AggregateFetchReply:
        """Data owner of the client set (signed): the round's aggregate, to decrypt."""

        def body() -> pb.AggregateFetchReply:
            fetch = AggregateFetch.from_proto(request)
            return pb.AggregateFetchReply(aggregate=self._member.fetch_aggregate(fetch))

        return self._run(context, "FetchAggregate", body)

    def Aggregate(self, request: pb.SignedControl, context: Any) -> pb.AggregateReply:  # noqa: N802
        """Coordinator (signed): aggregate the agreed client set and sign."""

        def body() -> pb.AggregateReply:
            result = self._member.aggregate(SignedControl.from_proto(request))
            return pb.AggregateReply(result=result_to_proto(result))

        return self._run(context, "Aggregate", body)

    def Validate(self, request: pb.SignedControl, context: Any) -> pb.ValidateReply:  # noqa: N802
        control = SignedControl.from_proto(request)

        def body() -> pb.ValidateReply:
            return verdict_record_to_proto(self._member.validate(control))

        return self._run(context, "Validate", body)

    def Confirm(self, request: pb.SignedControl, context: Any) -> pb.AggregateReply:  # noqa: N802
        control = SignedControl.from_proto(request)

        def body() -> pb.AggregateReply:
            return pb.AggregateReply(result=result_to_proto(self._member.confirm(control)))

        return self._run(context, "Confirm", body)

    def Status(self, request: pb.SignedControl, context: Any) -> pb.StatusReply:  # noqa: N802
        """Coordinator (signed): where a study stands, who uploaded this round."""

        def body() -> pb.StatusReply:
            status = self._member.status(SignedControl.from_proto(request))
            return study_status_to_proto(status)

        return self._run(context, "Status", body)


SERVER_OPTIONS: list[tuple[str, int]] = [*GRPC_OPTIONS, ("grpc.so_reuseport", 0)]
"""Server options: the message limits, and no SO_REUSEPORT, so a second member cannot
bind a port that one already serves."""


def serve(
    member: CommitteeMember,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: CertKey | None = None,
    max_workers: int = 8,
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``member``; returns it (started) and the bound port.

    Run by the committee member's process. ``port=0`` picks a free port. With ``tls`` the
    server presents that certificate (:func:`cohort.crypto.tls.server_credentials`);
    without it the server is plaintext, which only ``--insecure`` runs and tests ask for.
    ConfigError ``port in use`` when ``host:port`` is taken.
    """
    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
    pb_grpc.add_CommitteeServicer_to_server(CommitteeServicer(member), server)
    address = f"{host}:{port}"
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError:
        bound = 0
    if bound == 0:
        server.stop(grace=None)
        raise ConfigError(f"committee member: cannot listen on {address}: port in use")
    server.start()
    log.info(
        "member serving",
        extra=fields(member=member.member_id, host=host, port=bound, tls=tls is not None),
    )
    return server, bound
