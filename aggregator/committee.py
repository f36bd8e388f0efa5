"""The committee as the coordinator sees it, and a local committee of subprocesses.

:class:`Committee` is the coordinator's handle, built from the study manifest: one
:class:`MemberRef` per committee entry (keys, Ethereum address, endpoint, TLS pin) and one
:class:`MemberClient` per member over TLS pinned to the manifest, with signed control calls
(:class:`~cohort.aggregator.control.ControlSigner`). Fan-out calls never raise because some
members are down: they return the errors by member id, so the coordinator goes on while a
quorum remains.

:class:`LocalCommittee` starts k real members on one machine as ``python -m
cohort.aggregator`` subprocesses on loopback, each with its own work directory and a TLS
certificate from a fresh study CA, and stops them on exit. It exposes what a sponsor puts
into a manifest (:meth:`LocalCommittee.entries`, :attr:`LocalCommittee.ca_pem`) and approves
manifests on behalf of its synthetic members (:meth:`LocalCommittee.approve`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from cohort.aggregator.client import MemberClient
from cohort.aggregator.control import (
    AggregateBody,
    ConfigureBody,
    ConfirmBody,
    ControlSigner,
    OpenRoundBody,
    ReplicateBody,
    StatusBody,
    UploadSource,
    ValidateBody,
)
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import (
    KEYS_DIR,
    AggregateResult,
    MemberInfo,
    Replication,
    StudyStatus,
)
from cohort.aggregator.modes import ModeSpec
from cohort.aggregator.mpc_records import ValidationVerdict
from cohort.aggregator.quorum import AttestationCheck, QuorumDecision, decide
from cohort.crypto.identity import PublicIdentity
from cohort.crypto.tls import ChannelTls, cert_fingerprint
from cohort.errors import BadInputError, CohortError, ConfigError, ProtocolAbort
from cohort.federation.approval import Role, approve
from cohort.federation.certs import CA_CERT, member_files, write_study_certs
from cohort.federation.manifest import CommitteeEntry, Manifest, SignedManifest
from cohort.logs import fields, get_logger

log = get_logger(__name__)

_T = TypeVar("_T")


#: How long a Validate call may block while the participants run the MPC norm check.
VALIDATE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class MemberRef:
    """One committee member as the manifest lists it: keys, address, endpoint, TLS pin.

    What the coordinator hands data owners (to seal and upload) and :func:`decide` (to
    check signatures).
    """

    member_id: str
    identity: PublicIdentity
    eth_address: str
    endpoint: str
    tls_fingerprint: bytes = b""

    @classmethod
    def from_entry(cls, entry: CommitteeEntry) -> MemberRef:
        return cls(
            entry.member_id, entry.identity, entry.eth_address, entry.endpoint,
            entry.tls_fingerprint,
        )  # fmt: skip

    @property
    def info(self) -> MemberInfo:
        return MemberInfo(self.member_id, self.identity, self.eth_address)

    def channel_tls(self, ca_pem: str) -> ChannelTls | None:
        """How to check this member's TLS certificate (None when the study has no CA)."""
        if not ca_pem:
            return None
        return ChannelTls(ca_pem.encode("ascii"), self.member_id, self.tls_fingerprint or None)


class Committee:
    """A study's committee for the coordinator: roster, clients, signed calls. Close it."""

    def __init__(
        self,
        manifest: Manifest,
        signer: ControlSigner,
        *,
        timeout_s: float = 30.0,
        upload_timeout_s: float = 300.0,
        aggregate_timeout_s: float = 600.0,
    ) -> None:
        if signer.public.sign_key != manifest.coordinator_key:
            raise ConfigError("committee: the signer's key is not the manifest's coordinator_key")
        self._manifest = manifest
        self._signer = signer
        self._roster = tuple(MemberRef.from_entry(e) for e in manifest.committee)
        if not manifest.tls:
            log.warning(
                "committee without TLS: control calls travel in plaintext",
                extra=fields(study=manifest.study_id),
            )
        self._clients = {
            ref.member_id: MemberClient(
                ref.endpoint,
                tls=ref.channel_tls(manifest.tls_ca),
                timeout_s=timeout_s,
                upload_timeout_s=upload_timeout_s,
                aggregate_timeout_s=aggregate_timeout_s,
            )
            for ref in self._roster
        }

    def __enter__(self) -> Committee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @property
    def study_id(self) -> str:
        return self._manifest.study_id

    @property
    def roster(self) -> tuple[MemberRef, ...]:
        """The roster, as data owners and :func:`cohort.aggregator.quorum.decide` take it."""
        return self._roster

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(ref.member_id for ref in self._roster)

    def client(self, member_id: str) -> MemberClient:
        try:
            return self._clients[member_id]
        except KeyError:
            raise BadInputError(f"committee: no member {member_id!r}") from None

    def _fan_out(
        self, call: Callable[[str], _T], members: Sequence[str] | None = None
    ) -> tuple[dict[str, _T], dict[str, CohortError]]:
        ids = list(self.member_ids if members is None else members)
        for member_id in ids:
            self.client(member_id)
        done: dict[str, _T] = {}
        errors: dict[str, CohortError] = {}
        if not ids:
            return done, errors
        with ThreadPoolExecutor(max_workers=len(ids)) as pool:
            futures = {m: pool.submit(call, m) for m in ids}
            for member_id, future in futures.items():
                try:
                    done[member_id] = future.result()
                except CohortError as exc:
                    errors[member_id] = exc
        for member_id, error in errors.items():
            log.warning("member call failed", extra=fields(member=member_id, error=str(error)))
        return done, errors

    # -- coordinator calls ---------------------------------------------------------------

    def configure(self, signed: SignedManifest, setup: ModeSpec) -> dict[str, CohortError]:
        """Configure every member for the study (the coordinator, once per study; a retry
        is a no-op at members already configured). Returns the errors by member id."""
        if signed.study_id != self.study_id:
            raise ConfigError("committee: the signed manifest is not this committee's study")
        body = ConfigureBody(signed.to_bytes(), setup)

        def call(member_id: str) -> str:
            control = self._signer.sign(self.study_id, member_id, body)
            return self._clients[member_id].configure(control)

        return self._fan_out(call)[1]

    def open_round(self, round: int, *, deadline: float | None = None) -> dict[str, CohortError]:
        """Open ``round`` on every member (the coordinator, each round); errors by member."""
        body = OpenRoundBody(round, deadline)

        def call(member_id: str) -> int:
            control = self._signer.sign(self.study_id, member_id, body)
            return self._clients[member_id].open_round(control)

        return self._fan_out(call)[1]

    def status(self, member_id: str) -> StudyStatus:
        """Where the study stands at one member, and who uploaded in its open round."""
        control = self._signer.sign(self.study_id, member_id, StatusBody())
        return self.client(member_id).status(control)

    def status_all(
        self, members: Sequence[str] | None = None
    ) -> tuple[dict[str, StudyStatus], dict[str, CohortError]]:
        """:meth:`status` of ``members`` (default: all) in parallel: who answers right now."""
        return self._fan_out(self.status, members)

    def replicate(self, member_id: str, round: int, sources: Sequence[UploadSource]) -> Replication:
        """Have one member fetch the uploads of ``round`` it lacks from ``sources`` (the
        members whose receipts the data owners forwarded)."""
        control = self._signer.sign(self.study_id, member_id, ReplicateBody(round, tuple(sources)))
        return self.client(member_id).replicate(control)

    def replicate_all(
        self,
        round: int,
        sources: Sequence[UploadSource],
        *,
        members: Sequence[str] | None = None,
    ) -> tuple[dict[str, Replication], dict[str, CohortError]]:
        """:meth:`replicate` on ``members`` (default: all) in parallel; (replies, errors)."""
        return self._fan_out(lambda m: self.replicate(m, round, sources), members)

    def aggregate(
        self,
        member_id: str,
        round: int,
        client_ids: Sequence[str],
        *,
        ledger_commitments: Sequence[bytes] = (),
    ) -> AggregateResult:
        """One member's signed aggregate of ``round`` over ``client_ids``, with the owners'
        signed ledger commitments for it to attest."""
        body = AggregateBody(round, tuple(client_ids), tuple(ledger_commitments))
        control = self._signer.sign(self.study_id, member_id, body)
        return self.client(member_id).aggregate(control)

    def aggregate_all(
        self,
        round: int,
        client_ids: Sequence[str],
        *,
        members: Sequence[str] | None = None,
        ledger_commitments: Sequence[bytes] = (),
    ) -> tuple[list[AggregateResult], dict[str, CohortError]]:
        """Ask ``members`` (default: all) in parallel; returns (results, errors by member)."""
        done, errors = self._fan_out(
            lambda m: self.aggregate(m, round, client_ids, ledger_commitments=ledger_commitments),
            members,
        )
        return list(done.values()), errors

    def validate(
        self, member_id: str, round: int, client_ids: Sequence[str], participants: Sequence[str]
    ) -> ValidationVerdict:
        """One participant's signed verdict of the MPC norm check over ``client_ids``, run
        by ``participants`` together (call them all at once: :meth:`validate_all`)."""
        body = ValidateBody(round, tuple(client_ids), tuple(participants))
        control = self._signer.sign(self.study_id, member_id, body)
        return self.client(member_id).validate(
            control, timeout_s=VALIDATE_TIMEOUT_S, participants=tuple(participants)
        )

    def validate_all(
        self, round: int, client_ids: Sequence[str], participants: Sequence[str]
    ) -> tuple[dict[str, ValidationVerdict], dict[str, CohortError]]:
        """:meth:`validate` on every participant in parallel; (verdicts, errors)."""
        return self._fan_out(
            lambda m: self.validate(m, round, client_ids, participants), participants
        )

    def confirm(self, member_id: str, body: ConfirmBody) -> AggregateResult:
        """One member's attested aggregate, reconstructed from the partials in ``body``."""
        control = self._signer.sign(self.study_id, member_id, body)
        return self.client(member_id).confirm(control)

    def decide(
        self,
        results: Sequence[AggregateResult],
        *,
        round: int,
        client_ids: Sequence[str],
        ledger_commitments: Sequence[bytes] = (),
    ) -> QuorumDecision:
        """The quorum decision over ``results`` with the manifest's quorum, roster and chain
        (attestation signatures checked too)."""
        return decide(
            results,
            quorum=self._manifest.quorum,
            roster=self._roster,
            study_id=self.study_id,
            round=round,
            client_ids=client_ids,
            attestation=AttestationCheck.for_manifest(
                self._manifest, client_ids, round=round, ledger_commitments=ledger_commitments
            ),
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


# --------------------------------------------------------------------------- local committee


@dataclass
class _Process:
    member_id: str
    home: Path
    keys: MemberKeys
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_handle: IO[bytes] | None = None

    @property
    def port_file(self) -> Path:
        return self.home / "port"

    @property
    def log_path(self) -> Path:
        return self.home / "member.log"


class LocalCommittee:
    """k committee members as local subprocesses; a context manager.

    ``with LocalCommittee(3, workdir=tmp) as local:`` then put ``local.entries()`` and
    ``local.ca_pem`` into a manifest, sign it, ``local.approve(signed)`` and
    ``local.connect(manifest, signer)``. Member i runs from ``workdir/member-i`` (its key
    store in ``keys/``, approvals in ``studies/``, ``state.sqlite``, ``port``,
    ``member.log``); the study CA and member certificates are in ``workdir/certs`` (made on
    first use, reused afterwards). ``tls=False`` runs members with ``--insecure`` (tests of
    the plaintext path only). Exiting the block (also on an exception) terminates every
    member, SIGKILL after a grace period; members also exit if this process dies.
    """

    def __init__(
        self,
        size: int,
        *,
        workdir: Path,
        tls: bool = True,
        startup_timeout_s: float = 60.0,
        log_level: str = "WARNING",
        python: str = sys.executable,
    ) -> None:
        if size < 1:
            raise ConfigError(f"local committee: size must be >= 1 (members), got {size}")
        if startup_timeout_s <= 0:
            raise ConfigError("local committee: startup_timeout_s must be > 0 (seconds)")
        self.size = size
        self.workdir = Path(workdir)
        self.tls = tls
        self._timeout = startup_timeout_s
        self._log_level = log_level
        self._python = python
        self._procs: dict[str, _Process] = {}
        self._ca_pem = ""
        self._fingerprints: dict[str, bytes] = {}

    # -- what a sponsor needs ------------------------------------------------------------

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(f"member-{i}" for i in range(1, self.size + 1))

    @property
    def ca_pem(self) -> str:
        """The study CA certificate (PEM text) for the manifest's ``tls_ca``; "" without TLS."""
        return self._ca_pem

    def entries(self) -> list[CommitteeEntry]:
        """One manifest committee entry per member: keys, address, endpoint, TLS pin."""
        self._require_started()
        return [
            CommitteeEntry(
                member_id=p.member_id,
                sign_key=p.keys.identity.public.sign_key,
                box_key=p.keys.identity.public.box_key,
                eth_address=p.keys.eth_address,
                endpoint=f"127.0.0.1:{p.port}",
                tls_fingerprint=self._fingerprints.get(p.member_id, b""),
            )
            for p in self._procs.values()
        ]

    @property
    def roster(self) -> tuple[MemberRef, ...]:
        return tuple(MemberRef.from_entry(e) for e in self.entries())

    def approve(self, signed: SignedManifest) -> None:
        """Record every member operator's approval of ``signed`` in its work directory
        (the simulation approves on behalf of its synthetic members)."""
        self._require_started()
        for proc in self._procs.values():
            approve(signed, workdir=proc.home, identity=proc.keys.identity, role=Role.MEMBER)

    def connect(self, manifest: Manifest, signer: ControlSigner, **kwargs: float) -> Committee:
        """The coordinator's :class:`Committee` for ``manifest`` (close it when done)."""
        return Committee(manifest, signer, **kwargs)

    def home(self, member_id: str) -> Path:
        """The work directory of ``member_id``."""
        return self._proc(member_id).home

    def endpoint(self, member_id: str) -> str:
        return f"127.0.0.1:{self._proc(member_id).port}"

    def channel_tls(self, member_id: str) -> ChannelTls | None:
        """How a caller checks ``member_id``'s certificate (None without TLS)."""
        if not self._ca_pem:
            return None
        return ChannelTls(self._ca_pem.encode("ascii"), member_id, self._fingerprints[member_id])

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.popen.pid for p in self._procs.values() if p.popen is not None)

    @property
    def exit_codes(self) -> tuple[int | None, ...]:
        """Exit code of each member process (None while it runs); 0 after a clean stop."""
        return tuple(p.popen.poll() if p.popen else None for p in self._procs.values())

    def _proc(self, member_id: str) -> _Process:
        try:
            return self._procs[member_id]
        except KeyError:
            raise BadInputError(f"local committee: no member {member_id!r}") from None

    def _require_started(self) -> None:
        if not self._procs:
            raise ProtocolAbort("local committee: not started (use it as a context manager)")

    # -- processes -----------------------------------------------------------------------

    def __enter__(self) -> LocalCommittee:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _certs(self) -> Path:
        certs = self.workdir / "certs"
        if not (certs / CA_CERT).exists():
            write_study_certs(certs, members=self.member_ids, hosts=("127.0.0.1", "localhost"))
        self._ca_pem = (certs / CA_CERT).read_text(encoding="ascii")
        for member_id in self.member_ids:
            cert_name, _ = member_files(member_id)
            self._fingerprints[member_id] = cert_fingerprint((certs / cert_name).read_bytes())
        return certs

    def _start(self) -> None:
        certs = self._certs() if self.tls else None
        for member_id in self.member_ids:
            home = self.workdir / member_id
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            keys = MemberKeys.load_or_create(home / KEYS_DIR, member_id=member_id)
            self._procs[member_id] = _Process(member_id, home, keys)
        for proc in self._procs.values():
            self._spawn(proc, certs)
        deadline = time.monotonic() + self._timeout
        for proc in self._procs.values():
            self._wait_ready(proc, deadline)
        log.info("local committee up", extra=fields(size=self.size, workdir=str(self.workdir)))

    def _spawn(self, proc: _Process, certs: Path | None) -> None:
        proc.port_file.unlink(missing_ok=True)
        env = dict(os.environ, COHORT_LOG_LEVEL=self._log_level)
        cmd = [
            self._python, "-m", "cohort.aggregator",
            "--workdir", str(proc.home), "--member-id", proc.member_id,
            "--host", "127.0.0.1", "--port", str(proc.port),
            "--port-file", str(proc.port_file), "--exit-with-parent",
        ]  # fmt: skip
        if certs is None:
            cmd.append("--insecure")
        else:
            cert_name, key_name = member_files(proc.member_id)
            cmd += ["--tls-cert", str(certs / cert_name), "--tls-key", str(certs / key_name)]
        if proc.log_handle is None:
            proc.log_handle = proc.log_path.open("ab")
        proc.popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=proc.log_handle, stderr=proc.log_handle, env=env
        )

    def _wait_ready(self, proc: _Process, deadline: float) -> None:
        proc.port = self._wait_port(proc, deadline)
        with MemberClient(self.endpoint(proc.member_id), tls=self.channel_tls(proc.member_id)) as c:
            status = c.wait_ready(timeout_s=max(0.5, deadline - time.monotonic()))
        if status.info.identity != proc.keys.identity.public:
            raise ProtocolAbort(
                f"local committee: {self.endpoint(proc.member_id)} answers as "
                f"{status.info.member_id}, not {proc.member_id}"
            )

    def _wait_port(self, proc: _Process, deadline: float) -> int:
        popen = proc.popen
        if popen is None:
            raise ProtocolAbort(f"local committee: {proc.member_id} was never started")
        while True:
            code = popen.poll()
            if code is not None:
                raise ProtocolAbort(
                    f"local committee: {proc.member_id} exited with code {code} before it was "
                    f"ready; see {proc.log_path}"
                )
            try:
                text = proc.port_file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text)
            if time.monotonic() > deadline:
                raise ProtocolAbort(
                    f"local committee: {proc.member_id} not ready within {self._timeout:g} s;"
                    f" see {proc.log_path}"
                )
            time.sleep(0.05)

    def kill(self, member_id: str) -> None:
        """SIGKILL one member (a crash: no clean shutdown) and wait for it to die."""
        proc = self._proc(member_id)
        if proc.popen is not None and proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait()

    def restart(self, member_id: str, *, crash: bool = True) -> None:
        """Stop one member (SIGKILL with ``crash``, else SIGTERM) and start it again from
        the same work directory on the same port; returns once it answers Info."""
        proc = self._proc(member_id)
        if crash:
            self.kill(member_id)
        else:
            self._terminate([proc], grace_s=10.0)
        self._spawn(proc, self.workdir / "certs" if self.tls else None)
        self._wait_ready(proc, time.monotonic() + self._timeout)

    def _terminate(self, procs: Sequence[_Process], *, grace_s: float) -> None:
        for proc in procs:
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for proc in procs:
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("member did not stop; killing", extra=fields(member=proc.member_id))
                proc.popen.kill()
                proc.popen.wait()

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Terminate every member (SIGTERM, then SIGKILL after ``grace_s``). Idempotent."""
        procs = list(self._procs.values())
        self._terminate(procs, grace_s=grace_s)
        for proc in procs:
            if proc.log_handle is not None:
                proc.log_handle.close()
                proc.log_handle = None
