"""The committee as the coordinator sees it, and a local committee of subprocesses.

:class:`Committee` is the coordinator's handle: the roster (member id, public identity,
Ethereum address, endpoint) and one :class:`MemberClient` per member, with calls that fan
out to every member. :class:`LocalCommittee` starts k real members on one machine as
``python -m cohort.aggregator`` subprocesses on free loopback ports and stops them on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cohort.aggregator.client import MemberClient
from cohort.aggregator.member import AggregateResult, MemberInfo, StudyConfig
from cohort.crypto.identity import PublicIdentity
from cohort.errors import BadInputError, CohortError, ConfigError, ProtocolAbort
from cohort.logs import fields, get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class MemberRef:
    """One roster entry: who the member is and where to reach it.

    What the coordinator hands data owners (to seal and upload) and :func:`decide` (to
    check signatures). Built from a member's Info answer by :meth:`Committee.connect`.
    """

    member_id: str
    identity: PublicIdentity
    eth_address: str
    endpoint: str

    @classmethod
    def from_info(cls, info: MemberInfo, endpoint: str) -> MemberRef:
        return cls(info.member_id, info.identity, info.eth_address, endpoint)

    @property
    def info(self) -> MemberInfo:
        return MemberInfo(self.member_id, self.identity, self.eth_address)


class Committee:
    """Roster plus one client per member. Used by the coordinator; close it when done."""

    def __init__(self, roster: Sequence[MemberRef], *, timeout_s: float = 30.0) -> None:
        ids = [ref.member_id for ref in roster]
        if not ids or len(set(ids)) != len(ids):
            raise ConfigError("committee: needs at least one member and distinct member ids")
        self._roster = tuple(roster)
        self._clients = {r.member_id: MemberClient(r.endpoint, timeout_s=timeout_s) for r in roster}

    @classmethod
    def connect(cls, endpoints: Sequence[str], *, timeout_s: float = 10.0) -> Committee:
        """Ask each endpoint who it is (Info, retried up to ``timeout_s``) and build the roster."""
        roster = []
        for endpoint in endpoints:
            with MemberClient(endpoint) as probe:
                status = probe.wait_ready(timeout_s=timeout_s)
            roster.append(MemberRef.from_info(status.info, endpoint))
        return cls(roster)

    def __enter__(self) -> Committee:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def configure(self, study: StudyConfig, *, reset: bool = False) -> None:
        """Configure every member for ``study`` (the coordinator, once per study)."""
        for ref in self._roster:
            self._clients[ref.member_id].configure(study, reset=reset)

    def open_round(
        self, round: int, *, study_id: str | None = None, deadline: float | None = None
    ) -> None:
        """Open ``round`` on every member (the coordinator, each round)."""
        for ref in self._roster:
            self._clients[ref.member_id].open_round(round, study_id=study_id, deadline=deadline)

    def aggregate(
        self, round: int, client_ids: Sequence[str], *, study_id: str | None = None
    ) -> tuple[list[AggregateResult], dict[str, CohortError]]:
        """Ask every member in parallel; returns (results, errors by member id)."""

        def ask(member_id: str) -> AggregateResult:
            return self._clients[member_id].aggregate(round, client_ids, study_id=study_id)

        results: list[AggregateResult] = []
        errors: dict[str, CohortError] = {}
        with ThreadPoolExecutor(max_workers=len(self._roster)) as pool:
            futures = {m: pool.submit(ask, m) for m in self.member_ids}
            for member_id, future in futures.items():
                try:
                    results.append(future.result())
                except CohortError as exc:
                    errors[member_id] = exc
        return results, errors

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


@dataclass
class _Process:
    member_id: str
    popen: subprocess.Popen[bytes]
    port_file: Path
    log_path: Path
    log_handle: IO[bytes]


class LocalCommittee:
    """k committee members as local subprocesses; a context manager.

    ``with LocalCommittee(3, workdir=tmp) as local: local.committee.configure(...)``.
    Member i keeps its key store, port file and log under ``workdir/member-i``. Exiting
    the block (also on an exception) terminates every member, SIGKILL after a grace
    period; members also exit by themselves if this process dies.
    """

    def __init__(
        self,
        size: int,
        *,
        workdir: Path,
        startup_timeout_s: float = 60.0,
        log_level: str = "WARNING",
        python: str = sys.executable,
    ) -> None:
        if size < 1:
            raise ConfigError(f"local committee: size must be >= 1 (members), got {size}")
        if startup_timeout_s <= 0:
            raise ConfigError("local committee: startup_timeout_s must be > 0 (seconds)")
        self.size = size
        self.workdir = workdir
        self._timeout = startup_timeout_s
        self._log_level = log_level
        self._python = python
        self._procs: list[_Process] = []
        self._committee: Committee | None = None

    @property
    def committee(self) -> Committee:
        if self._committee is None:
            raise ProtocolAbort("local committee: not started (use it as a context manager)")
        return self._committee

    @property
    def roster(self) -> tuple[MemberRef, ...]:
        return self.committee.roster

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.popen.pid for p in self._procs)

    @property
    def exit_codes(self) -> tuple[int | None, ...]:
        """Exit code of each member process (None while it runs); 0 after a clean stop."""
        return tuple(p.popen.poll() for p in self._procs)

    def __enter__(self) -> LocalCommittee:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self) -> None:
        env = dict(os.environ, COHORT_LOG_LEVEL=self._log_level)
        for i in range(1, self.size + 1):
            member_id = f"member-{i}"
            home = self.workdir / member_id
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            port_file = home / "port"
            port_file.unlink(missing_ok=True)
            log_path = home / "member.log"
            handle = log_path.open("ab")
            cmd = [
                self._python, "-m", "cohort.aggregator",
                "--keystore", str(home / "keys"), "--member-id", member_id,
                "--host", "127.0.0.1", "--port", "0",
                "--port-file", str(port_file), "--exit-with-parent",
            ]  # fmt: skip
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, env=env
            )
            self._procs.append(_Process(member_id, popen, port_file, log_path, handle))
        deadline = time.monotonic() + self._timeout
        endpoints = [self._wait_port(proc, deadline) for proc in self._procs]
        roster = []
        for proc, endpoint in zip(self._procs, endpoints, strict=True):
            with MemberClient(endpoint) as probe:
                status = probe.wait_ready(timeout_s=max(0.5, deadline - time.monotonic()))
            if status.info.member_id != proc.member_id:
                raise ProtocolAbort(
                    f"local committee: {endpoint} answers as {status.info.member_id}"
                )
            roster.append(MemberRef.from_info(status.info, endpoint))
        self._committee = Committee(roster)
        log.info("local committee up", extra=fields(size=self.size, workdir=str(self.workdir)))

    def _wait_port(self, proc: _Process, deadline: float) -> str:
        while True:
            code = proc.popen.poll()
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
                return f"127.0.0.1:{int(text)}"
            if time.monotonic() > deadline:
                raise ProtocolAbort(
                    f"local committee: {proc.member_id} not ready within {self._timeout:g} s;"
                    f" see {proc.log_path}"
                )
            time.sleep(0.05)

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Terminate every member (SIGTERM, then SIGKILL after ``grace_s``). Idempotent."""
        if self._committee is not None:
            self._committee.close()
            self._committee = None
        for proc in self._procs:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for proc in self._procs:
            try:
                proc.popen.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("member did not stop; killing", extra=fields(member=proc.member_id))
                proc.popen.kill()
                proc.popen.wait()
            proc.log_handle.close()
