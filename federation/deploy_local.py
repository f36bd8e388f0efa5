"""``cohort deploy local``: a whole deployed study as separate OS processes on 127.0.0.1.

The same topology as docker-compose.yml, with every party's files in its own folder under
``DIR`` and every role started with the command its guide gives (docs/guides):

* chain: anvil (npm ``@foundry-rs/anvil``) on a free port;
* certificates: ``cohort certs`` (a study CA, one server certificate per member and one for
  the SuperLink);
* keys: ``cohort keys new --role sponsor|member|owner`` per party, each with its own password
  file (mode 0600);
* data: the demo split written as one CSV per hospital (raw values) and the sponsor's held-out
  test split; the sponsor publishes ``cohort data normalizer`` of its test split;
* committee: ``cohort member --export-identity`` (the entries the sponsor's manifest lists),
  then ``cohort committee serve --config member.toml`` per member;
* sponsor: ``cohort study create --config study.toml`` (manifest + contract + bounty);
* approvals: ``cohort study approve`` by every member and hospital, each on its own files;
* Flower: ``flower-superlink`` with TLS and SuperNode authentication, each hospital's key
  registered with ``flwr supernode register``, one ``cohort node start --config
  hospital.toml`` per hospital;
* the study: ``cohort study launch --config study.toml`` (``flwr run``), whose ServerApp
  writes the summary; it is copied to ``DIR/summary.json``, and what the study publishes
  for auditors (manifest, summary, transcript, each hospital's ledger) to
  ``DIR/published/``, the layout ``cohort audit DIR/published`` reads.

Every process is started in its own session and logged to ``DIR/logs/<name>.log``;
``DIR/processes.json`` lists them (name, pid, command). All of them are stopped when the
study ends, fails or is interrupted (Ctrl-C, SIGTERM). Readiness is polled (ports, files),
never assumed after a fixed sleep.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from cohort.errors import ConfigError, ProtocolAbort
from cohort.federation.deploy_config import CLIENTAPP_RUNNERS
from cohort.federation.manifest import SecureMode
from cohort.files import PRIVATE, write_atomic
from cohort.logs import fields, get_logger

log = get_logger(__name__)

MARKER = ".cohort-deployment"
ANVIL_ENV = "COHORT_ANVIL"
ANVIL_CHAIN_ID = 31337
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
SPONSOR_FUNDS_WEI = 10**21


def anvil_binary() -> Path:
    """anvil from ``COHORT_ANVIL`` or the project's ``npm ci`` (node_modules)."""
    configured = os.environ.get(ANVIL_ENV)
    candidates = [Path(configured)] if configured else []
    import cohort.federation

    root = Path(cohort.federation.__file__).resolve().parent.parent
    candidates.append(root / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    found = shutil.which("anvil")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError(
        "anvil not found: run `npm ci` in the Cohort folder (package @foundry-rs/anvil) or set "
        f"{ANVIL_ENV}=/path/to/anvil"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(
    what: str, check: Any, *, timeout_s: float = START_TIMEOUT_S, proc: Any = None
) -> None:
    """Poll ``check()`` until it is true; ProtocolAbort naming ``what`` on timeout or death."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while not check():
        if proc is not None and proc.poll() is not None:
            raise ProtocolAbort(f"{what}: the process exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise ProtocolAbort(f"{what}: not ready after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def port_open(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Processes:
    """The OS processes one deployment started; each in its own session, stopped together."""

    logs: Path
    record: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)
    _files: list[IO[bytes]] = field(default_factory=list)

    def start(
        self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        handle = (self.logs / f"{name}.log").open("ab")
        self._files.append(handle)
        proc = subprocess.Popen(
            list(argv),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env if env is not None else self.env,
            start_new_session=True,
        )
        self.procs[name] = proc
        self.commands[name] = list(argv)
        if env is not None:
            self.envs[name] = env
        self._write_record()
        log.info("process started", extra=fields(name=name, pid=proc.pid))
        return proc

    def _write_record(self) -> None:
        data = {n: {"pid": p.pid, "command": self.commands[n]} for n, p in self.procs.items()}
        write_atomic(self.record, (json.dumps(data, indent=1) + "\n").encode("utf-8"))

    def stop(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            try:
                self.stop(name)
            except Exception as exc:  # keep stopping the others
                log.warning("could not stop a process", extra=fields(name=name, error=str(exc)))
        for handle in self._files:
            handle.close()
        self._files.clear()


def run_commands(
    commands: dict[str, list[str]],
    *,
    env: dict[str, str],
    logs: Path,
    record: dict[str, list[str]] | None = None,
) -> None:
    """Run one-shot commands in parallel; ProtocolAbort naming the first that failed."""
    logs.mkdir(parents=True, exist_ok=True)
    if record is not None:
        record.update(commands)
    running = {}
    for name, argv in commands.items():
        handle = (logs / f"{name}.log").open("ab")
        running[name] = (
            subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            ),
            handle,
        )
    failed = []
    for name, (proc, handle) in running.items():
        proc.wait()
        handle.close()
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        name = failed[0]
        tail = (logs / f"{name}.log").read_text(encoding="utf-8", errors="replace").strip()
        last = tail.splitlines()[-1] if tail else "(no output)"
        raise ProtocolAbort(f"{name} failed: {last}")


#: Where ``cohort deploy local``'s SuperLink keeps its runs, registered nodes and message
#: objects. ``memory``: Flower's own default, in the SuperLink's process, for exactly as long
#: as the local topology lives (it never restarts the SuperLink). ``file``: SQLite in
#: OUT/superlink/state.db, as a long-lived SuperLink should run (docs/guides/sponsor.md):
#: it survives a restart of the SuperLink, at the price of SQLAlchemy and SQLite work in
#: every request (on the 2-core reference machine the SuperLink took 2.3 CPU seconds per
#: round of the 3-hospital study, against 0.7 with ``memory``; bench/deploy.py measures both).
SUPERLINK_STATES = ("memory", "file")


def superlink_database(state: str, folder: Path) -> str:
    """``flower-superlink --database`` for ``state`` (one of :data:`SUPERLINK_STATES`)."""
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

    return FLWR_IN_MEMORY_DB_NAME if state == "memory" else str(folder / "state.db")


@dataclass(frozen=True)
class LocalPlan:
    """What ``cohort deploy local`` runs."""

    hospitals: int = 3
    members: int = 3
    rounds: int = 3
    quorum: int | None = None
    secure: SecureMode = SecureMode.CKKS
    epsilon: float = 3.0
    seed: int = 0
    alpha: float = 1.0
    min_clients: int = 2
    bounty_wei: int = 10**18
    model: str = "mlp"
    clientapp: str = "warm"  # each hospital.toml's [hospital] clientapp
    superlink_state: str = "memory"  # one of SUPERLINK_STATES

    def __post_init__(self) -> None:
        if self.hospitals < 2:
            raise ConfigError(f"--hospitals must be >= 2, got {self.hospitals}")
        if self.members < 1:
            raise ConfigError(f"--members must be >= 1, got {self.members}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if not 2 <= self.min_clients <= self.hospitals:
            raise ConfigError(f"--min-clients must be in 2..{self.hospitals}")
        if not self.epsilon > 0:
            raise ConfigError(f"--epsilon must be > 0, got {self.epsilon}")
        if self.superlink_state not in SUPERLINK_STATES:
            raise ConfigError(
                f"--superlink-state must be one of {', '.join(SUPERLINK_STATES)}, "
                f"got {self.superlink_state!r}"
            )
        if self.clientapp not in CLIENTAPP_RUNNERS:
            raise ConfigError(
                f"--clientapp must be one of {', '.join(CLIENTAPP_RUNNERS)}, got {self.clientapp!r}"
            )

    @property
    def committee_quorum(self) -> int:
        return self.quorum if self.quorum is not None else self.members // 2 + 1


def prepare_out(out: Path) -> None:
    """A fresh deployment folder: an earlier ``deploy local`` run is cleared, else refused."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(
                f"--out {out}: holds files that are not a Cohort deployment; use an empty or "
                "new directory"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by cohort deploy local; cleared by the next run\n")


def _password_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, secrets.token_urlsafe(24).encode("ascii"), mode=PRIVATE)
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value)
    if any(c in text for c in '"\\\n'):
        raise ConfigError(f"{text!r}: quotes and backslashes are not allowed here")
    return f'"{text}"'


def write_toml(path: Path, tables: dict[str, dict[str, object]]) -> Path:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the cleanup below runs for both."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cohort() -> list[str]:
    script = Path(sys.executable).parent / "cohort"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "cohort.federation.cli"]


def _bin(name: str) -> str:
    script = Path(sys.executable).parent / name
    return str(script) if script.is_file() else name


def _fund(url: str, address: str) -> None:
    from web3 import HTTPProvider, Web3
    from web3.types import RPCEndpoint

    web3 = Web3(HTTPProvider(url))
    web3.provider.make_request(RPCEndpoint("anvil_setBalance"), [address, hex(SPONSOR_FUNDS_WEI)])


class LocalDeployment:
    """One deployed study on this machine: :meth:`start` the topology, :meth:`launch` the study.

    A context manager: leaving it stops every process it started. :meth:`stop` stops one
    party (a committee member going down), :meth:`kill_coordinator` the ServerApp (a
    coordinator crash, for the recovery tests and drills).
    """

    def __init__(self, plan: LocalPlan, out: Path) -> None:
        prepare_out(out)
        self.plan = plan
        self.out = out = out.resolve()
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("COHORT_LOG_LEVEL", "INFO")
        self.env = env
        self.logs = out / "logs"
        self.procs = Processes(logs=self.logs, record=out / "processes.json", env=env)
        self.member_ids = [f"member-{i + 1}" for i in range(plan.members)]
        self.hospital_ids = [f"hospital-{i + 1}" for i in range(plan.hospitals)]
        ports = free_ports(2 + 2 * plan.members + plan.hospitals)
        self.chain_port, self.link_port = ports[0], ports[1]
        self.member_ports = dict(zip(self.member_ids, ports[2 : 2 + plan.members], strict=True))
        end = 2 + plan.members + plan.hospitals
        self.node_ports = dict(zip(self.hospital_ids, ports[2 + plan.members : end], strict=True))
        #: each member's MPC party (MPC mode: the first participant of a check hosts it)
        self.mpc_ports = dict(zip(self.member_ids, ports[end:], strict=True))
        self.chain_url = f"http://127.0.0.1:{self.chain_port}"
        self.sponsor = out / "sponsor"
        self.study_config = self.sponsor / "study.toml"
        self.cohort = _cohort()
        self.ran: dict[str, list[str]] = {}

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.procs.stop_all()

    @property
    def state_file(self) -> Path:
        """The coordinator's resumable state (see coordinator_state)."""
        return self.sponsor / "out" / "coordinator-state" / "state.json"

    def finished_round(self) -> int:
        try:
            return int(json.loads(self.state_file.read_text(encoding="utf-8"))["finished_round"])
        except (OSError, ValueError, KeyError):
            return 0

    def stop(self, name: str) -> None:
        """Stop one party's process (SIGTERM to its session, then SIGKILL)."""
        self.procs.stop(name)

    def restart(self, name: str) -> None:
        """Start a stopped party again with the same command (it keeps its files)."""
        self.procs.stop(name)
        self.procs.start(name, self.procs.commands[name], env=self.procs.envs.get(name))

    def kill_coordinator(self) -> int:
        """SIGKILL every ServerApp process (``flwr-serverapp``) of this deployment's SuperLink."""
        killed = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"flwr-serverapp") for a in argv[:2]) and str(
                self.link_port
            ).encode() in b" ".join(argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed += 1
        return killed

    def start(self) -> None:
        """Set every party up and start every long-running process (see module doc)."""
        from cohort.clients.data import demo_split, write_csv
        from cohort.federation.deploy_config import StudyFile
        from cohort.federation.sponsor import flwr_env

        plan, out, env, logs, procs = self.plan, self.out, self.env, self.logs, self.procs
        member_ids, hospital_ids = self.member_ids, self.hospital_ids
        chain_port, link_port = self.chain_port, self.link_port
        member_ports, node_ports = self.member_ports, self.node_ports
        chain_url, sponsor = self.chain_url, self.sponsor
        cohort = self.cohort
        certs = out / "certs"
        public = out / "public"
        public.mkdir(parents=True, exist_ok=True)
        chain = procs.start(
            "chain",
            [
                str(anvil_binary()),
                "--host",
                "127.0.0.1",
                "--port",
                str(chain_port),
                "--chain-id",
                str(ANVIL_CHAIN_ID),
                "--silent",
            ],
        )
        # one-shot set-up, in parallel where the parties are independent
        setup: dict[str, list[str]] = {
            "certs": [
                *cohort,
                "certs",
                "--out",
                str(certs),
                *(a for m in [*member_ids, "superlink"] for a in ("--member", m)),
            ],
            "keys-sponsor": [
                *cohort,
                "keys",
                "new",
                "--role",
                "sponsor",
                "--dir",
                str(sponsor / "keys"),
                "--password-file",
                str(_password_file(sponsor / "password")),
            ],
        }
        for m in member_ids:
            setup[f"keys-{m}"] = [
                *cohort,
                "keys",
                "new",
                "--role",
                "member",
                "--dir",
                str(out / m),
                "--party-id",
                m,
                "--password-file",
                str(_password_file(out / m / "password")),
            ]
        for h in hospital_ids:
            setup[f"keys-{h}"] = [
                *cohort,
                "keys",
                "new",
                "--role",
                "owner",
                "--dir",
                str(out / h),
                "--party-id",
                h,
                "--password-file",
                str(_password_file(out / h / "password")),
            ]
        run_commands(setup, env=env, logs=logs, record=self.ran)

        # data: each hospital's own CSV (raw values), the sponsor's test split
        parts, test = demo_split(
            num_hospitals=plan.hospitals, seed=plan.seed, alpha=plan.alpha, standardize=False
        )
        for h, part in zip(hospital_ids, parts, strict=True):
            write_csv(part, out / h / "data.csv")
        write_csv(test, sponsor / "test.csv")

        member_configs = {}
        for m in member_ids:
            member_configs[m] = write_toml(
                out / m / "member.toml",
                {
                    "member": {
                        "workdir": str(out / m),
                        "member-id": m,
                        "host": "127.0.0.1",
                        "port": member_ports[m],
                        "endpoint": f"127.0.0.1:{member_ports[m]}",
                        "tls-cert": str(certs / f"{m}.pem"),
                        "tls-key": str(certs / f"{m}-key.pem"),
                        "password-file": str(out / m / "password"),
                    }
                },
            )
        hospital_configs = {}
        for h in hospital_ids:
            policy: dict[str, object] = {
                "epsilon-cap": plan.epsilon,
                "min-clients": plan.min_clients,
                "modes": [plan.secure.value],
                # seeded so that the study is reproducible against `cohort simulate`;
                # `cohort audit` reports it as unfit for real patient data
                "noise-seed": plan.seed,
                "chain-url": chain_url,
            }
            hospital_configs[h] = write_toml(
                out / h / "hospital.toml",
                {
                    "hospital": {
                        "party-id": h,
                        "workdir": str(out / h),
                        "data": str(out / h / "data.csv"),
                        "clientapp": plan.clientapp,
                        # every hospital on this one machine: one torch thread each, as
                        # `cohort simulate` gives each ClientApp one CPU (Ray)
                        "threads": 1,
                    },
                    "policy": policy,
                    "superlink": {
                        "address": f"127.0.0.1:{link_port}",
                        "root-certificates": str(certs / "ca.pem"),
                        "node-port": node_ports[h],
                    },
                },
            )
        exports: dict[str, list[str]] = {
            f"export-{m}": [
                *cohort,
                "member",
                "--workdir",
                str(out / m),
                "--export-identity",
                str(public / f"{m}.json"),
                "--endpoint",
                f"127.0.0.1:{member_ports[m]}",
                "--tls-cert",
                str(certs / f"{m}.pem"),
                "--tls-key",
                str(certs / f"{m}-key.pem"),
            ]
            for m in member_ids
        }
        for h in hospital_ids:
            shutil.copyfile(out / h / "owner-entry.json", public / f"{h}.json")
        exports["normalizer"] = [
            *cohort,
            "data",
            "normalizer",
            str(sponsor / "test.csv"),
            "--out",
            str(sponsor / "normalizer.json"),
        ]
        run_commands(exports, env=env, logs=logs, record=self.ran)

        wait_for("anvil", lambda: port_open(chain_port), proc=chain)
        study_config = write_toml(
            sponsor / "study.toml",
            {
                "study": {
                    "name": "cohort-deploy-local",
                    "secure": plan.secure.value,
                    "rounds": plan.rounds,
                    "quorum": plan.committee_quorum,
                    "min-clients": plan.min_clients,
                    "model": plan.model,
                    "classes": 2,
                    "bounty-wei": plan.bounty_wei,
                    "key-dealer": hospital_ids[0],
                    "seed": plan.seed,
                },
                "study.dp": {"epsilon": plan.epsilon},
                **(
                    {
                        "study.mpc": {
                            "rendezvous": [f"127.0.0.1:{self.mpc_ports[m]}" for m in member_ids]
                        }
                    }
                    if plan.secure is SecureMode.MPC
                    else {}
                ),
                "sponsor": {
                    "keys": str(sponsor / "keys"),
                    "password-file": str(sponsor / "password"),
                    "out": str(sponsor / "out"),
                },
                "data": {
                    "test": str(sponsor / "test.csv"),
                    "normalizer": str(sponsor / "normalizer.json"),
                },
                "committee": {
                    "ca": str(certs / "ca.pem"),
                    "members": [str(public / f"{m}.json") for m in member_ids],
                },
                "owners": {"entries": [str(public / f"{h}.json") for h in hospital_ids]},
                "chain": {"url": chain_url},
                "superlink": {
                    "address": f"127.0.0.1:{link_port}",
                    "root-certificates": str(certs / "ca.pem"),
                },
            },
        )
        from cohort.federation.keyfiles import SponsorKeys

        _fund(chain_url, SponsorKeys.public(sponsor / "keys").sponsor_address)
        run_commands(
            {"study-create": [*cohort, "study", "create", "--config", str(study_config)]},
            env=env,
            logs=logs,
            record=self.ran,
        )
        manifest = sponsor / "out" / "manifest.json"
        approvals = {
            f"approve-{m}": [
                *cohort,
                "study",
                "approve",
                str(manifest),
                "--workdir",
                str(out / m),
                "--role",
                "member",
            ]
            for m in member_ids
        }
        for h in hospital_ids:
            approvals[f"approve-{h}"] = [
                *cohort,
                "study",
                "approve",
                str(manifest),
                "--workdir",
                str(out / h),
                "--role",
                "owner",
                "--policy",
                str(hospital_configs[h]),
                "--chain-url",
                chain_url,
            ]
        run_commands(approvals, env=env, logs=logs, record=self.ran)

        for m in member_ids:
            member = procs.start(
                m, [*cohort, "committee", "serve", "--config", str(member_configs[m])]
            )
            port = member_ports[m]
            wait_for(m, functools.partial(port_open, port), proc=member)

        study = StudyFile.load(study_config)
        link_env = dict(env)
        link_env["FLWR_HOME"] = str(out / "superlink" / "flwr-home")
        link = procs.start(
            "superlink",
            [
                _bin("flower-superlink"),
                "--ssl-ca-certfile",
                str(certs / "ca.pem"),
                "--ssl-certfile",
                str(certs / "superlink.pem"),
                "--ssl-keyfile",
                str(certs / "superlink-key.pem"),
                "--enable-supernode-auth",
                "--database",
                superlink_database(plan.superlink_state, out / "superlink"),
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
            ],
            env=link_env,
        )
        wait_for("superlink", lambda: port_open(link_port), proc=link)
        sponsor_env = flwr_env(study)
        run_commands(
            {
                f"register-{h}": [
                    _bin("flwr"),
                    "supernode",
                    "register",
                    str(out / h / "keystore" / "supernode-auth.pub"),
                    "cohort",
                    "--name",
                    h,
                ]
                for h in hospital_ids
            },
            env=sponsor_env,
            logs=logs,
            record=self.ran,
        )
        for h in hospital_ids:
            node_env = dict(env)
            node_env["FLWR_HOME"] = str(out / h / "flwr-home")
            procs.start(
                h, [*cohort, "node", "start", "--config", str(hospital_configs[h])], env=node_env
            )
        self.study = study
        everything = {**self.ran, **procs.commands}
        write_atomic(
            out / "commands.json", (json.dumps(everything, indent=1) + "\n").encode("utf-8")
        )

    def publish(self) -> Path:
        """What a study publishes for auditors, in the layout ``cohort audit`` reads:
        ``published/manifest.json``, ``summary.json``, the coordinator's transcript and each
        hospital's ledger as ``hospitals/<id>/ledger-*.json`` (each hospital publishes its
        own; nothing secret is copied)."""
        from cohort.federation.server_app import SUMMARY, TRANSCRIPT
        from cohort.federation.sponsor import MANIFEST

        folder = self.out / "published"
        coordinator = self.sponsor / "out"
        folder.mkdir(exist_ok=True)
        for name in (MANIFEST, SUMMARY, TRANSCRIPT):
            if (coordinator / name).is_file():
                shutil.copyfile(coordinator / name, folder / name)
        for h in self.hospital_ids:
            target = folder / "hospitals" / h
            target.mkdir(parents=True, exist_ok=True)
            for ledger in sorted((self.out / h).glob("ledger-*.json")):
                shutil.copyfile(ledger, target / ledger.name)
        return folder

    def launch(self) -> dict[str, Any]:
        """``cohort study launch``: run (or resume) the study; its summary."""
        from cohort.federation.sponsor import launch_study

        return launch_study(self.study, log_file=self.logs / "launch.log")


def deploy_local(plan: LocalPlan, out: Path) -> dict[str, Any]:
    """Run ``plan`` as processes under ``out``; return the study's summary (see module doc)."""
    from cohort.federation.config import write_json

    with _interruptible(), LocalDeployment(plan, out) as deployment:
        deployment.start()
        summary = deployment.launch()
    summary["deployment"] = {
        "out": str(deployment.out),
        "processes": sorted(deployment.procs.commands),
        "logs": str(deployment.logs),
    }
    write_json(deployment.out / "summary.json", summary)
    deployment.publish()
    return summary
