"""Typed client of one committee member, used by the coordinator and by data owners.

Data owners call :meth:`MemberClient.upload` and :meth:`MemberClient.info` (a liveness ping
that shows only the member's public identity); the coordinator sends
:class:`~cohort.aggregator.control.SignedControl` calls (configure, open_round, replicate,
aggregate, status), usually through :class:`cohort.aggregator.committee.Committee`; members
call :meth:`MemberClient.fetch` on each other (:class:`cohort.aggregator.peers.PeerFetcher`).

With ``tls`` the channel trusts only the study CA, checks the member id in the certificate
and pins the manifest's fingerprint (:func:`cohort.crypto.tls.open_channel`). The channel is
opened on the first call, so a client for a member that is down can be made; each call
retries the opening until it succeeds, and a call that finds the member unreachable drops the
channel, so the next call reconnects (and re-checks the pin) at once, for example after the
member restarted. A pin mismatch raises VerificationError.

gRPC errors come back as the Cohort error the member raised (the ``cohort-error`` trailing
metadata names the class; the status code is the fallback), so a caller can tell tampering
(VerificationError) from bad input (BadInputError) from a protocol state problem
(ProtocolAbort). A member that cannot be reached raises :class:`MemberUnavailable`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from cohort.aggregator.aggregate_fetch import AggregateFetch
from cohort.aggregator.control import SignedControl
from cohort.aggregator.member import (
    AggregateResult,
    PublicStatus,
    Replication,
    StudyStatus,
    Verdict,
)
from cohort.aggregator.mpc_records import ValidationVerdict
from cohort.aggregator.proto import committee_pb2 as pb
from cohort.aggregator.proto import committee_pb2_grpc as pb_grpc
from cohort.aggregator.replication import FetchRequest
from cohort.aggregator.service import (
    ERROR_METADATA_KEY,
    ERROR_TYPES,
    GRPC_OPTIONS,
    public_status_from_proto,
    replication_from_proto,
    result_from_proto,
    study_status_from_proto,
    verdict_from_proto,
    verdict_record_from_proto,
)
from cohort.crypto.tls import ChannelTls, TlsUnavailable, open_channel
from cohort.errors import BadInputError, CohortError, ProtocolAbort, VerificationError


class MemberUnavailable(ProtocolAbort):
    """The member did not answer (connection refused, timeout, shut down, no TLS)."""


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
    """Calls one committee member at ``endpoint`` ("host:port"). Close it, or use ``with``.

    ``tls=None`` is a plaintext channel: only for members run with ``--insecure``.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        tls: ChannelTls | None = None,
        timeout_s: float = 30.0,
        upload_timeout_s: float = 300.0,
        aggregate_timeout_s: float = 600.0,
    ) -> None:
        if timeout_s <= 0 or upload_timeout_s <= 0 or aggregate_timeout_s <= 0:
            raise BadInputError("member client: timeouts must be > 0 seconds")
        self.endpoint = endpoint
        self.tls = tls
        self._timeout = timeout_s
        self._upload_timeout = upload_timeout_s
        self._aggregate_timeout = aggregate_timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: pb_grpc.CommitteeStub | None = None
        self._closed = False

    def __enter__(self) -> MemberClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemberClient({self.endpoint!r}, tls={self.tls is not None})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None

    def _connect(self, timeout: float) -> pb_grpc.CommitteeStub:
        with self._lock:
            if self._closed:
                raise ProtocolAbort(f"committee member {self.endpoint}: client is closed")
            if self._stub is None:
                try:
                    self._channel = open_channel(
                        self.endpoint,
                        self.tls,
                        options=GRPC_OPTIONS,
                        preflight_timeout_s=min(timeout, 10.0),
                    )
                except TlsUnavailable as exc:
                    raise MemberUnavailable(str(exc)) from None
                self._stub = pb_grpc.CommitteeStub(self._channel)
            return self._stub

    def _call(self, rpc: str, request: Any, timeout: float) -> Any:
        stub = self._connect(timeout)
        method: Callable[..., Any] = getattr(stub, rpc)
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as exc:
            error = error_from_rpc(self.endpoint, exc)
            if isinstance(error, MemberUnavailable):
                self._drop(stub)
            raise error from None

    def _drop(self, stub: pb_grpc.CommitteeStub) -> None:
        """Forget a channel that failed to reach the member: the next call opens a fresh
        one (and, with a pin, checks the member's certificate again)."""
        with self._lock:
            if self._stub is stub and self._channel is not None:
                self._channel.close()
                self._channel = None
                self._stub = None

    # -- anyone --------------------------------------------------------------------------

    def info(self, *, timeout_s: float | None = None) -> PublicStatus:
        """The member's public identity and modes. Called by anyone (a liveness ping)."""
        reply = self._call("Info", pb.InfoRequest(), timeout_s or self._timeout)
        return public_status_from_proto(reply)

    def wait_ready(self, *, timeout_s: float) -> PublicStatus:
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

    # -- data owners ---------------------------------------------------------------------

    def upload(self, envelope: bytes) -> Verdict:
        """Send one upload (``CommitteeUpload.to_bytes()``, or ``Envelope.to_bytes()``).
        Called by a data owner.

        Returns the accepted verdict (with the payload hash and, for a committee upload, the
        member's signed receipt); a rejection raises the matching Cohort error whose message
        contains the reason code.
        """
        reply = self._call("Upload", pb.UploadRequest(envelope=envelope), self._upload_timeout)
        return verdict_from_proto(reply)

    # -- coordinator (signed calls) ------------------------------------------------------

    def configure(self, control: SignedControl) -> str:
        """Send a signed Configure; returns the study id the member is now configured for."""
        reply = self._call("Configure", control.to_proto(), self._timeout)
        return str(reply.study_id)

    def open_round(self, control: SignedControl) -> int:
        """Send a signed OpenRound; returns the round now open."""
        reply = self._call("OpenRound", control.to_proto(), self._timeout)
        return int(reply.round)

    def replicate(self, control: SignedControl) -> Replication:
        """Send a signed Replicate; returns what the member holds after fetching, and the
        copies it could not take. Fetching can take long: the aggregate timeout applies."""
        reply = self._call("Replicate", control.to_proto(), self._aggregate_timeout)
        return replication_from_proto(reply)

    # -- members -------------------------------------------------------------------------

    def fetch(self, request: FetchRequest) -> bytes:
        """Ask this member for its copy of one upload. Called by another member (signed
        request); returns ``CommitteeUpload.to_bytes()`` sealed to the requester."""
        reply = self._call("Fetch", request.to_proto(), self._upload_timeout)
        return bytes(reply.upload)

    # -- data owners -------------------------------------------------------------------

    def fetch_aggregate(self, request: AggregateFetch) -> bytes:
        """Ask this member for its aggregate of a round. Called by a data owner of the
        client set (signed request); returns the ciphertext, unchecked: the owner holds it
        to the hash a quorum signed."""
        reply = self._call("FetchAggregate", request.to_proto(), self._upload_timeout)
        return bytes(reply.aggregate)

    def aggregate(self, control: SignedControl) -> AggregateResult:
        """Send a signed Aggregate; returns the member's signed result."""
        reply = self._call("Aggregate", control.to_proto(), self._aggregate_timeout)
        return result_from_proto(reply.result)

    def validate(
        self,
        control: SignedControl,
        *,
        timeout_s: float,
        participants: tuple[str, ...],
    ) -> ValidationVerdict:
        """Send a signed Validate (MPC) asked of ``participants``; returns the member's
        signed verdict. Blocks while the participants run the norm check together."""
        reply = self._call("Validate", control.to_proto(), timeout_s)
        return verdict_record_from_proto(
            reply, study_id=control.study_id, participants=participants
        )

    def confirm(self, control: SignedControl) -> AggregateResult:
        """Send a signed Confirm (MPC); returns the member's signed, attested aggregate."""
        reply = self._call("Confirm", control.to_proto(), self._aggregate_timeout)
        return result_from_proto(reply.result)

    def status(self, control: SignedControl) -> StudyStatus:
        """Send a signed Status; returns where the study stands at this member."""
        reply = self._call("Status", control.to_proto(), self._timeout)
        return study_status_from_proto(reply)
