"""Typed client of one committee member, used by the coordinator and by data owners.

gRPC errors come back as the Cohort error the member raised (the ``cohort-error`` trailing
metadata names the class; the status code is the fallback), so a caller can tell tampering
(VerificationError) from bad input (BadInputError) from a protocol state problem
(ProtocolAbort). A member that cannot be reached raises :class:`MemberUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from cohort.aggregator.member import AggregateResult, MemberStatus, StudyConfig, Verdict
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.proto import committee_pb2_grpc as pb_grpc
from cohort.aggregator.service import (
    ERROR_METADATA_KEY,
    ERROR_TYPES,
    GRPC_OPTIONS,
    result_from_proto,
    status_from_proto,
    study_to_proto,
    verdict_from_proto,
)
from cohort.errors import BadInputError, CohortError, ProtocolAbort, VerificationError


class MemberUnavailable(ProtocolAbort):
    """The member did not answer (connection refused, timeout, shut down)."""


_BY_STATUS: dict[grpc.StatusCode, type[CohortError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadInputError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: BadInputError,
    grpc.StatusCode.PERMISSION_DENIED: VerificationError,
    grpc.StatusCode.FAILED_PRECONDITION: ProtocolAbort,
    grpc.StatusCode.UNAVAILABLE: MemberUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: MemberUnavailable,
    grpc.StatusCode.CANCELLED: MemberUnavailable,
}


def error_from_rpc(endpoint: str, error: grpc.RpcError) -> CohortError:
    """The Cohort error matching a failed call (message names the endpoint)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else ""
    cls: type[CohortError] | None = None
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_METADATA_KEY and isinstance(value, str):
            cls = ERROR_TYPES.get(value)
    if cls is None:
        cls = _BY_STATUS.get(code, ProtocolAbort)
    return cls(f"committee member {endpoint}: {details or code.name}")


class MemberClient:
    """Calls one committee member at ``endpoint`` ("host:port"). Close it, or use ``with``."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 30.0,
        upload_timeout_s: float = 300.0,
        aggregate_timeout_s: float = 600.0,
    ) -> None:
        if timeout_s <= 0 or upload_timeout_s <= 0 or aggregate_timeout_s <= 0:
            raise BadInputError("member client: timeouts must be > 0 seconds")
        self.endpoint = endpoint
        self._timeout = timeout_s
        self._upload_timeout = upload_timeout_s
        self._aggregate_timeout = aggregate_timeout_s
        self._channel = grpc.insecure_channel(endpoint, options=GRPC_OPTIONS)
        self._stub = pb_grpc.CommitteeStub(self._channel)

    def __enter__(self) -> MemberClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., Any], request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(self.endpoint, exc) from None

    def info(self, *, timeout_s: float | None = None) -> MemberStatus:
        """Who the member is and where it stands. Called by the coordinator and data owners."""
        reply = self._call(self._stub.Info, pb.InfoRequest(), timeout_s or self._timeout)
        return status_from_proto(reply)

    def wait_ready(self, *, timeout_s: float) -> MemberStatus:
        """Poll Info until the member answers; MemberUnavailable after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                return self.info(timeout_s=max(0.2, min(2.0, left)))
            except MemberUnavailable:
                if time.monotonic() >= deadline:
                    raise MemberUnavailable(
                        f"committee member {self.endpoint}: no answer within {timeout_s:g} s"
                    ) from None
                time.sleep(0.05)

    def configure(self, study: StudyConfig, *, reset: bool = False) -> None:
        """Bind the member to ``study``. Called by the coordinator."""
        request = pb.ConfigureRequest(study=study_to_proto(study), reset=reset)
        self._call(self._stub.Configure, request, self._timeout)

    def open_round(
        self, round: int, *, study_id: str | None = None, deadline: float | None = None
    ) -> None:
        """Open ``round`` for uploads. Called by the coordinator."""
        request = pb.OpenRoundRequest(study_id=study_id or "", round=round)
        if deadline is not None:
            request.deadline = deadline
        self._call(self._stub.OpenRound, request, self._timeout)

    def upload(self, envelope: bytes) -> Verdict:
        """Send one envelope (``Envelope.to_bytes()``). Called by a data owner.

        Returns the accepted verdict (with the payload hash as receipt); a rejection raises
        the matching Cohort error whose message contains the reason code.
        """
        reply = self._call(
            self._stub.Upload, pb.UploadRequest(envelope=envelope), self._upload_timeout
        )
        return verdict_from_proto(reply)

    def aggregate(
        self, round: int, client_ids: Sequence[str], *, study_id: str | None = None
    ) -> AggregateResult:
        """Ask for the signed aggregate of ``round`` over ``client_ids``. Coordinator."""
        request = pb.AggregateRequest(study_id=study_id or "", round=round, client_ids=client_ids)
        reply = self._call(self._stub.Aggregate, request, self._aggregate_timeout)
        return result_from_proto(reply.result)
