"""A checker for docker-compose.yml that needs no Docker engine (these machines have none).

:class:`ComposeCheck` reads the compose file as the engine would, and checks every service's
command with the parser of the program it runs: Cohort's own typer app (the cohort
executable) and the TOML loaders its role commands use, Flower's own argparse and typer
parsers (flower-superlink, flower-supernode, flower-superexec, flwr), anvil's options (from
``anvil --help`` where npm's binary is installed) and the parsers of the scripts in
deploy/compose. Then it checks the things that only go wrong between services:

* every path a command or config file names lies in a volume or bind mount of that service;
  a file it reads is written by a service it depends on (or is in the image or a bind mount);
* addresses line up: the SuperLink's port, the members' endpoints, the chain's URL, the
  healthchecks' targets; the roster, committee entries and SuperNode keys match the parties;
* each role mounts only its own secret volumes, public volumes only get public files;
* the dependency graph: one-shot steps before the services that need them, no cycles;
* the network is internal, nothing is published;
* the Dockerfile: its COPY sources exist, every mount point is owned by its non-root user.

:func:`check` returns one line per problem, naming the service. tests/deploy/test_compose.py
runs it on the real file and on mutated copies.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import io
import re
import subprocess
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import typer
import yaml  # type: ignore[import-untyped]

from cohort.errors import CohortError

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
SCRIPTS = REPO / "deploy" / "compose"
#: The Dockerfile's WORKDIR (the source tree, the Flower App) and its scripts folder (on PATH).
APP_DIR = PurePosixPath("/opt/cohort")
SCRIPT_DIR = APP_DIR / "deploy" / "compose"
COHORT_IMAGE = "cohort:"
CHAIN_IMAGE = "ghcr.io/foundry-rs/foundry:"
#: Files that may be copied into a public volume (besides ``*.pub`` SuperNode keys).
PUBLIC_FILES = {"ca.pem", "owner-entry.json", "manifest.json"}
#: anvil's options where its binary is absent (else read from ``anvil --help``, npm's
#: @foundry-rs/anvil): option -> takes a value.
ANVIL_OPTIONS = {"--host": True, "--port": True, "--chain-id": True, "--state": True}
ANVIL_OPTIONS |= {"--state-interval": True, "--block-time": True, "--accounts": True}
ANVIL_BINARY = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
_ANVIL_HELP = re.compile(r"^\s+(?:-\w, )?(--[\w-]+)( <|$| \[<)", re.MULTILINE)
LOOPBACK = {"127.0.0.1", "localhost"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

Loc = tuple[str, str]  # ("volume:NAME" | "bind:SOURCE" | "image", path inside it)


@dataclass(frozen=True)
class Mount:
    source: str  # a volume name, or a bind source relative to the repository
    target: PurePosixPath
    bind: bool
    read_only: bool


def _mount(spec: Any) -> Mount:
    if isinstance(spec, dict):
        source, target = str(spec.get("source", "")), str(spec["target"])
        bind, read_only = spec.get("type") == "bind", bool(spec.get("read_only"))
    else:
        source, target, *mode = str(spec).split(":")
        bind, read_only = source.startswith((".", "/")), mode == ["ro"]
    return Mount(source, PurePosixPath(target), bind, read_only)


def parse_argv(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace | str:
    """Parse with ``parser``; its error line instead of exiting."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(list(args))
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        return lines[-1] if lines else "exits while parsing (--help or --version)"


def _click(root: click.Command, prog: str, args: Sequence[str]) -> tuple[str, dict[str, Any]] | str:
    """Resolve sub-commands and parse the rest strictly: (command path, params) or an error."""
    cmd, rest, path = root, list(args), [prog]
    ctx = click.Context(root, info_name=prog)
    while isinstance(cmd, click.Group):
        sub = cmd.get_command(ctx, rest[0]) if rest and not rest[0].startswith("-") else None
        if sub is None:
            return f"{' '.join(path)}: no such command {rest[0] if rest else '(none)'!r}"
        path.append(rest.pop(0))
        cmd, ctx = sub, click.Context(sub, info_name=path[-1], parent=ctx)
    try:
        parsed = cmd.make_context(path[-1], rest, parent=ctx.parent)
    except click.exceptions.Exit:
        return f"{' '.join(path)}: exits while parsing (--help)"
    except click.ClickException as exc:
        return f"{' '.join(path)}: {exc.format_message()}"
    return " ".join(path[1:]), dict(parsed.params)


@cache
def anvil_options() -> dict[str, bool]:
    """anvil's options (option -> takes a value), from its ``--help`` where it is installed."""
    if not ANVIL_BINARY.exists():
        return ANVIL_OPTIONS
    text = subprocess.run(
        [str(ANVIL_BINARY), "--help"], capture_output=True, text=True, check=True
    ).stdout
    return {m[1]: m[2] == " <" for m in _ANVIL_HELP.finditer(text)}


@cache
def _cohort_cli() -> click.Command:
    from cohort.federation.cli import app

    return typer.main.get_command(app)


@cache
def _flwr_cli() -> click.Command:
    from flwr.cli.app import app

    return typer.main.get_command(app)


@cache
def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"compose_{name[:-3]}", SCRIPTS / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flower_parser(program: str) -> argparse.ArgumentParser:
    if program == "flower-superlink":
        from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as make
    elif program == "flower-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as make
    else:
        from flwr.supercore.cli.flower_superexec import _parse_args as make
    parser: argparse.ArgumentParser = make()
    return parser


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += " " + line.removesuffix("\\")
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


class ComposeCheck:
    """Every problem of a compose dict, one line each, naming the service and what is wrong."""

    def __init__(self, compose: dict[str, Any]) -> None:
        self.compose = compose
        self.services: dict[str, dict[str, Any]] = compose.get("services") or {}
        self.volumes: dict[str, Any] = compose.get("volumes") or {}
        self.problems: list[str] = []
        self.reads: list[tuple[str, Loc, str]] = []
        self.writes: dict[Loc, set[str]] = {}
        self.copies: dict[Loc, Loc] = {}
        self.superlink_refs: list[tuple[str, str, str]] = []
        self.chain_refs: list[tuple[str, str, str]] = []
        self.serving: dict[str, list[tuple[str, str, int]]] = {"superlink": [], "chain": []}
        self.addresses: dict[str, set[str]] = {}
        self.hospitals: dict[str, Any] = {}  # node service -> HospitalConfig
        self.members: dict[str, Any] = {}  # member service -> MemberConfig
        self.exports: dict[str, tuple[str, Loc]] = {}  # member id -> (endpoint, entry file)
        self.owner_keys: dict[str, tuple[str, Loc | None]] = {}  # role -> (party id, --dir)
        # role -> (--role, workdir, policy file) of its cohort study approve
        self.approvals: dict[str, tuple[str, Loc | None, str | None]] = {}
        self.registered: dict[Loc, str] = {}
        self.studies: list[tuple[str, str, Any]] = []  # (service, sub-command, StudyFile)
        self.superexec: list[str] = []
        self.demo_splits: set[tuple[int, int]] = set()
        self.isolation_process = False

    def fail(self, message: str) -> None:
        self.problems.append(message)

    # ----------------------------------------------------------------- paths

    def role(self, svc: str) -> str:
        return str((self.services[svc].get("labels") or {}).get("cohort.role", ""))

    def mounts(self, svc: str) -> list[Mount]:
        return [_mount(v) for v in self.services[svc].get("volumes") or []]

    def locate(self, svc: str, raw: object) -> tuple[Mount, str] | None:
        """The mount of ``svc`` holding path ``raw``, and the path inside it."""
        path = PurePosixPath(str(raw))
        found = [m for m in self.mounts(svc) if path == m.target or m.target in path.parents]
        if not found:
            return None
        mount = max(found, key=lambda m: len(m.target.parts))
        return mount, str(path.relative_to(mount.target)) if path != mount.target else ""

    def loc(self, svc: str, raw: object) -> Loc | None:
        found = self.locate(svc, raw)
        if found is None:
            return None
        mount, rel = found
        return (f"{'bind' if mount.bind else 'volume'}:{mount.source}", rel)

    def path(self, svc: str, raw: object, what: str, kind: str = "in") -> Loc | None:
        """Check ``raw`` lies in a mount of ``svc``; record it as read ("in"), written
        ("out") or only named ("ref", a directory)."""
        path = PurePosixPath(str(raw))
        if not path.is_absolute():
            self.fail(f"{svc}: {what} {path} is not an absolute path")
            return None
        found = self.locate(svc, path)
        if found is None:
            if APP_DIR in path.parents and kind != "out":
                if not (REPO / path.relative_to(APP_DIR)).exists():
                    self.fail(f"{svc}: {what} {path} is not in the image (no such repo file)")
                return ("image", str(path.relative_to(APP_DIR)))
            self.fail(f"{svc}: {what} {path} is not inside any volume or bind mount of {svc}")
            return None
        mount, rel = found
        if mount.bind:
            source = (REPO / mount.source).resolve() / rel
            if kind == "out":
                self.fail(f"{svc}: {what} {path} is written into a bind mount")
            elif not source.exists():
                self.fail(f"{svc}: bind mount source {mount.source} does not exist ({what})")
            return (f"bind:{mount.source}", rel)
        loc = (f"volume:{mount.source}", rel)
        if kind == "out":
            if mount.read_only:
                self.fail(f"{svc}: {what} {path} is written, but {mount.target} is read-only")
            self.writes.setdefault(loc, set()).add(svc)
        elif kind == "in":
            self.reads.append((svc, loc, f"{what} {path}"))
        return loc

    def config(self, svc: str, raw: object, what: str) -> Path | None:
        """The repository file bind-mounted at ``raw`` (a role's TOML file)."""
        loc = self.path(svc, raw, what)
        if loc is None or not loc[0].startswith("bind:"):
            if loc is not None:
                self.fail(f"{svc}: {what} {raw} must be a file bind-mounted from deploy/compose")
            return None
        source = (REPO / loc[0].removeprefix("bind:")).resolve() / loc[1]
        if SCRIPTS not in source.parents:
            self.fail(f"{svc}: {what} {raw} comes from {source}, not from deploy/compose")
        return source if source.is_file() else None

    # ----------------------------------------------------------------- commands

    def command(self, svc: str, argv: Sequence[str], *, image: str) -> None:
        if not argv or not all(isinstance(a, str) for a in argv):
            self.fail(f"{svc}: command must be a non-empty list of strings (exec form)")
            return
        program, args = argv[0], list(argv[1:])
        scripts = {p.name for p in SCRIPTS.glob("*.py")}
        wants = CHAIN_IMAGE if program == "anvil" else COHORT_IMAGE
        if not image.startswith(wants):
            self.fail(f"{svc}: {program} runs in image {image}, not {wants}*")
        if program == "cohort":
            self.cohort(svc, args)
        elif program in ("flower-superlink", "flower-supernode", "flower-superexec"):
            ns = parse_argv(_flower_parser(program), args)
            if isinstance(ns, str):
                self.fail(f"{svc}: {program}: {ns}")
            else:
                getattr(self, program.replace("-", "_"))(svc, ns)
        elif program == "flwr":
            self.flwr(svc, args)
        elif program == "anvil":
            self.anvil(svc, args)
        elif program in scripts:
            self.script(svc, program, args)
        else:
            self.fail(
                f"{svc}: {program!r} is not a Cohort, Flower or anvil command, nor a script in "
                "deploy/compose"
            )

    def cohort(self, svc: str, args: list[str]) -> None:
        from cohort.federation.keyfiles import KeyRole, _key_files

        parsed = _click(_cohort_cli(), "cohort", args)
        if isinstance(parsed, str):
            self.fail(f"{svc}: {parsed}")
            return
        name, p = parsed
        if name == "keys new":
            keydir = self.path(svc, p["directory"], "--dir", "ref")
            if p["password_file"] is not None:
                self.path(svc, p["password_file"], "--password-file")
            if p["role"] not in set(KeyRole):
                self.fail(f"{svc}: cohort keys new --role {p['role']!r}: not a role")
                return
            for file in _key_files(Path(p["directory"]), KeyRole(p["role"])):
                self.path(svc, file, "key file", "out")
            if p["role"] == "owner" and keydir is not None:
                self.owner_keys[self.role(svc)] = (str(p["party_id"]), keydir)
        elif name == "certs":
            from cohort.federation.certs import CA_CERT, CA_KEY, FINGERPRINTS, member_files

            out = PurePosixPath(p["out"])
            issued = [f for m in p["member"] for f in member_files(m)]
            for pem in (CA_CERT, CA_KEY, FINGERPRINTS, *issued):
                self.path(svc, out / pem, "certificate file", "out")
        elif name == "member":
            self.path(svc, p["workdir"], "--workdir", "ref")
            for key in ("tls_cert", "tls_key", "password_file"):
                if p[key] is not None:
                    self.path(svc, p[key], f"--{key.replace('_', '-')}")
            if p["export_identity"] is not None:
                loc = self.path(svc, p["export_identity"], "--export-identity", "out")
                if loc is not None and p["member_id"]:
                    self.exports[str(p["member_id"])] = (str(p["endpoint"]), loc)
        elif name == "study approve":
            self.study_approve(svc, p)
        elif name == "data normalizer":
            for csv in p["csv"]:
                self.path(svc, csv, "CSV")
            self.path(svc, p["out"], "--out", "out")
        elif name == "node start":
            if (source := self.config(svc, p["config"], "--config")) is not None:
                self.node(svc, source)
        elif name == "committee serve":
            if (source := self.config(svc, p["config"], "--config")) is not None:
                self.member(svc, source)
        elif name in ("study create", "study launch", "study status"):
            if (source := self.config(svc, p["config"], "--config")) is not None:
                self.study(svc, name.split()[1], source, p)
        else:
            self.fail(f"{svc}: cohort {name} is not a step of this deployment")

    def study_approve(self, svc: str, p: dict[str, Any]) -> None:
        from cohort.federation.keyfiles import KeyRole, _key_files
        from cohort.federation.policy import HospitalPolicy

        self.path(svc, p["manifest"], "MANIFEST")
        workdir = self.path(svc, p["workdir"], "--workdir", "ref")
        if p["role"] not in ("owner", "member") or workdir is None:
            self.fail(f"{svc}: cohort study approve --role {p['role']!r}: owner or member")
            return
        self.path(svc, _key_files(Path(p["workdir"]), KeyRole(p["role"]))[0], "identity")
        policy = None
        if p["policy"] is not None and (source := self.config(svc, p["policy"], "--policy")):
            policy = str(source)
            try:
                HospitalPolicy.from_mapping(tomllib.loads(source.read_text("utf-8"))["policy"])
            except (CohortError, KeyError) as exc:
                self.fail(f"{svc}: --policy {p['policy']}: {exc}")
        if p["role"] == "owner" and policy is None:
            self.fail(f"{svc}: an owner approves with --policy (its own limits)")
        if p["chain_url"] is None:
            self.fail(f"{svc}: approve with --chain-url, so the contract binding is checked")
        else:
            self.chain_refs.append((svc, str(p["chain_url"]), "--chain-url"))
        self.approvals[self.role(svc)] = (str(p["role"]), workdir, policy)

    def node(self, svc: str, source: Path) -> None:
        from cohort.federation.cli_deploy import supernode_argv
        from cohort.federation.deploy_config import HospitalConfig

        try:
            config = HospitalConfig.load(source)
            with mock.patch.object(Path, "is_file", return_value=True):
                argv = supernode_argv(source)
        except CohortError as exc:
            self.fail(f"{svc}: {exc}")
            return
        self.hospitals[svc] = config
        self.path(svc, config.workdir, "[hospital] workdir", "ref")
        self.path(svc, config.data, "[hospital] data")
        if config.policy.chain_url is not None:
            self.chain_refs.append((svc, config.policy.chain_url, "[policy] chain-url"))
        ns = parse_argv(_flower_parser("flower-supernode"), argv[1:])
        if isinstance(ns, str):
            self.fail(f"{svc}: the flower-supernode command of cohort node start: {ns}")
        else:
            self.flower_supernode(svc, ns)

    def flower_supernode(self, svc: str, ns: argparse.Namespace) -> None:
        if ns.insecure or ns.root_certificates is None:
            self.fail(f"{svc}: the SuperNode must connect with TLS (--root-certificates)")
        else:
            self.path(svc, ns.root_certificates, "SuperNode --root-certificates")
        if ns.auth_supernode_private_key is None:
            self.fail(f"{svc}: the SuperNode has no --auth-supernode-private-key")
        else:
            self.path(svc, ns.auth_supernode_private_key, "SuperNode auth key")
        self.superlink_refs.append((svc, str(ns.superlink), "SuperNode --superlink"))
        self.addresses.setdefault(svc, set()).add(f"{ns.host}:{ns.port}")

    def member(self, svc: str, source: Path) -> None:
        from cohort.aggregator.__main__ import _parser
        from cohort.federation.deploy_config import MemberConfig

        try:
            config = MemberConfig.load(source)
        except CohortError as exc:
            self.fail(f"{svc}: {exc}")
            return
        ns = parse_argv(_parser(), config.argv())
        if isinstance(ns, str):
            self.fail(f"{svc}: the member service's arguments: {ns}")
        self.members[svc] = config
        self.path(svc, config.workdir, "[member] workdir", "ref")
        for what, value in (("tls-cert", config.tls_cert), ("tls-key", config.tls_key)):
            if value is None or config.insecure:
                self.fail(f"{svc}: [member] {what} missing: members serve TLS only")
            else:
                self.path(svc, value, f"[member] {what}")
        if config.password_file is not None:
            self.path(svc, config.password_file, "[member] password-file")
        if config.host != "0.0.0.0":
            self.fail(f"{svc}: [member] host {config.host}: others cannot reach it")
        if config.endpoint != f"{svc}:{config.port}":
            self.fail(f"{svc}: [member] endpoint {config.endpoint} is not {svc}:{config.port}")
        self.addresses.setdefault(svc, set()).add(config.endpoint)

    def study(self, svc: str, sub: str, source: Path, p: dict[str, Any]) -> None:
        from cohort.federation.deploy_config import StudyFile
        from cohort.federation.keyfiles import KeyRole, _key_files
        from cohort.federation.server_app import SUMMARY
        from cohort.federation.sponsor import MANIFEST, RUN_CONFIG

        try:
            study = StudyFile.load(source)
        except CohortError as exc:
            self.fail(f"{svc}: {exc}")
            return
        self.studies.append((svc, sub, study))
        reads = "in" if sub == "create" else "ref"
        self.path(svc, study.sponsor_keys, "[sponsor] keys", "ref")
        self.path(svc, study.out, "[sponsor] out", "ref")
        for key, value in (("test", study.test_data), ("normalizer", study.normalizer)):
            self.path(svc, value, f"[data] {key}", reads)
        self.path(svc, study.ca, "[committee] ca", reads)
        for member in study.members:
            self.path(svc, member, "[committee] members", reads)
        for owner in study.owners:
            self.path(svc, owner, "[owners] entries", reads)
        self.chain_refs.append((svc, study.chain_url, "[chain] url"))
        self.superlink_refs.append((svc, study.superlink.address, "[superlink] address"))
        if study.superlink.insecure or study.superlink.root_certificates is None:
            self.fail(f"{svc}: [superlink] of the study must use TLS")
        else:
            self.path(svc, study.superlink.root_certificates, "[superlink] root-certificates")
        if sub in ("create", "launch"):
            for file in _key_files(study.sponsor_keys, KeyRole.SPONSOR):
                self.path(svc, file, "sponsor key")
            if study.password_file is None:
                self.fail(f"{svc}: [sponsor] password-file missing")
            else:
                self.path(svc, study.password_file, "[sponsor] password-file")
        if sub == "create":
            self.path(svc, study.out / MANIFEST, "the manifest", "out")
        else:
            self.path(svc, study.out / MANIFEST, "the manifest")
        if sub == "launch":
            for output in (SUMMARY, RUN_CONFIG, "flwr/config.toml"):
                self.path(svc, study.out / output, "launch output", "out")
            app = PurePosixPath(str(p["app_dir"])) if p["app_dir"] is not None else None
            if app != APP_DIR or "[tool.flwr.app]" not in (REPO / "pyproject.toml").read_text():
                self.fail(f"{svc}: cohort study launch --app must be {APP_DIR} (the Flower App)")

    def flower_superlink(self, svc: str, ns: argparse.Namespace) -> None:
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

        if ns.insecure or not ns.enable_supernode_auth:
            self.fail(f"{svc}: flower-superlink must run with TLS and --enable-supernode-auth")
        for key in ("ssl_ca_certfile", "ssl_certfile", "ssl_keyfile"):
            if getattr(ns, key) is None:
                self.fail(f"{svc}: flower-superlink without --{key.replace('_', '-')}")
            else:
                self.path(svc, getattr(ns, key), f"--{key.replace('_', '-')}")
        if ns.database != FLWR_IN_MEMORY_DB_NAME:
            self.path(svc, ns.database, "--database", "out")
        if ns.host != "0.0.0.0":
            self.fail(f"{svc}: flower-superlink --host {ns.host}: nodes cannot reach it")
        if ns.runtime_dependency_install:
            self.fail(f"{svc}: flower-superlink would install app dependencies at run time")
        self.serving["superlink"].append((svc, svc, int(ns.port)))
        self.addresses.setdefault(svc, set()).update(
            f"{host}:{ns.port}" for host in (svc, *LOOPBACK)
        )
        self.isolation_process |= ns.isolation == "process"

    def flower_superexec(self, svc: str, ns: argparse.Namespace) -> None:
        if ns.insecure or ns.root_certificates is None:
            self.fail(f"{svc}: flower-superexec must reach the Runtime API with TLS")
        else:
            self.path(svc, ns.root_certificates, "--root-certificates")
        self.superlink_refs.append((svc, str(ns.runtime_api_address), "--runtime-api-address"))
        if ns.health_server_address:
            self.addresses.setdefault(svc, set()).add(str(ns.health_server_address))
        self.superexec.append(svc)

    def flwr(self, svc: str, args: list[str]) -> None:
        from flwr.cli.flower_config import parse_superlink_connection

        parsed = _click(_flwr_cli(), "flwr", args)
        if isinstance(parsed, str):
            self.fail(f"{svc}: {parsed}")
            return
        name, p = parsed
        if name != "supernode register":
            self.fail(f"{svc}: flwr {name} is not a step of this deployment")
            return
        key = self.path(svc, p["public_key"], "SuperNode public key")
        home = (self.services[svc].get("environment") or {}).get("FLWR_HOME", "/home/cohort/.flwr")
        source = self.config(svc, PurePosixPath(home) / "config.toml", "Flower CLI config")
        if source is None:
            return
        table = tomllib.loads(source.read_text(encoding="utf-8")).get("superlink", {})
        name = p["superlink"] or table.get("default")
        if name not in table:
            self.fail(f"{svc}: no Flower connection {name!r} in {source.name}")
            return
        connection = parse_superlink_connection(table[name], name)
        self.superlink_refs.append((svc, str(connection.address), f"{source.name} address"))
        if table[name].get("insecure") or connection.root_certificates is None:
            self.fail(f"{svc}: the Flower connection {name!r} must use TLS")
        else:
            self.path(svc, connection.root_certificates, "root-certificates")
        if key is not None:
            self.registered[key] = svc

    def anvil(self, svc: str, args: list[str]) -> None:
        values: dict[str, str] = {}
        it = iter(args)
        for arg in it:
            flag, eq, value = arg.partition("=")
            if flag not in anvil_options():
                self.fail(f"{svc}: anvil: unknown option {flag}")
            elif anvil_options()[flag]:
                values[flag] = value if eq else next(it, "")
        port, host = values.get("--port", "8545"), values.get("--host", "127.0.0.1")
        if not port.isdigit() or not values.get("--chain-id", "1").isdigit():
            self.fail(f"{svc}: anvil --port and --chain-id must be integers")
            return
        if host != "0.0.0.0":
            self.fail(f"{svc}: anvil --host {host}: the parties cannot reach the chain")
        if "--state" in values:
            self.path(svc, values["--state"], "anvil --state", "out")
        self.serving["chain"].append((svc, svc, int(port)))
        self.addresses.setdefault(svc, set()).update(f"{h}:{port}" for h in (svc, *LOOPBACK))

    def script(self, svc: str, name: str, args: list[str]) -> None:
        module = load_script(name)
        ns = parse_argv(module.build_parser(), args)
        if isinstance(ns, str):
            self.fail(f"{svc}: {name}: {ns}")
        elif name == "step.py":
            self.step(svc, module, args)
        elif name == "demo_data.py":
            self.path(svc, ns.out, "--out", "out")
            self.demo_splits.add((ns.hospitals, ns.seed))
        elif name == "fund.py":
            self.chain_refs.append((svc, str(ns.rpc_url), "fund.py --rpc-url"))
            self.path(svc, ns.keystore, "--keystore")
        else:
            self.fail(f"{svc}: {name} is a healthcheck, not a service command")

    def step(self, svc: str, module: ModuleType, args: list[str]) -> None:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                ns = module.parse(args)
        except SystemExit:
            self.fail(f"{svc}: step.py: no command after --")
            return
        for password in ns.password_file:
            self.path(svc, password, "--password-file", "out")
        if ns.once is not None:
            self.path(svc, ns.once, "--once", "out")
        if ns.command[0] == "step.py":
            self.fail(f"{svc}: step.py runs step.py")
        self.command(svc, ns.command, image=str(self.services[svc].get("image", "")))
        for source, dest in ns.copy:
            src = self.path(svc, source, "--copy source")
            dst = self.path(svc, dest, "--copy destination", "out")
            if src is None or dst is None:
                continue
            self.copies[dst] = src
            volume = self.volumes.get(dst[0].removeprefix("volume:")) or {}
            labels = volume.get("labels") or {}
            base, name = PurePosixPath(dst[1]).name, PurePosixPath(src[1]).name
            if labels.get("cohort.access") == "public" and not (
                name in PUBLIC_FILES or name.endswith(".pub")
            ):
                self.fail(f"{svc}: copies {source} into the public volume at {dest}")
            owner = labels.get("cohort.owner")
            if labels.get("cohort.issued-by") and base not in (
                "ca.pem",
                f"{owner}.pem",
                f"{owner}-key.pem",
            ):
                self.fail(f"{svc}: copies {source} into {owner}'s TLS volume")

    def healthcheck(self, svc: str, test: Any) -> None:
        if not isinstance(test, list) or test[:1] != ["CMD"] or len(test) < 2:
            self.fail(f"{svc}: healthcheck test must be [CMD, program, ...]")
            return
        program, args = test[1], list(test[2:])
        own = self.addresses.get(svc, set())
        if program == "cast" and str(self.services[svc].get("image", "")).startswith(CHAIN_IMAGE):
            url = args[args.index("--rpc-url") + 1] if "--rpc-url" in args else ""
            target = urlsplit(url).netloc
        elif program == "healthcheck.py":
            ns = parse_argv(load_script(program).build_parser(), args)
            if isinstance(ns, str):
                self.fail(f"{svc}: healthcheck: {ns}")
                return
            host, port = (ns.target[:2]) if hasattr(ns, "target") else ns.address
            target = f"{host}:{port}"
            if ns.check == "http" and host not in LOOPBACK:
                self.fail(f"{svc}: plain-HTTP healthcheck of {target}: loopback only")
            if getattr(ns, "ca", None) is not None:
                self.path(svc, ns.ca, "healthcheck --ca")
        else:
            self.fail(f"{svc}: healthcheck program {program!r} is not healthcheck.py")
            return
        if target not in own:
            self.fail(f"{svc}: healthcheck targets {target}; {svc} serves {sorted(own)}")

    # ----------------------------------------------------------------- whole file

    def ancestors(self, svc: str) -> set[str]:
        seen: set[str] = set()
        todo = [svc]
        while todo:
            for dep in self.services.get(todo.pop(), {}).get("depends_on") or {}:
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def run(self) -> list[str]:
        for svc, spec in self.services.items():
            if not self.role(svc):
                self.fail(f"{svc}: no cohort.role label")
            parts = [spec.get("entrypoint") or [], spec.get("command") or []]
            if any(not isinstance(part, list) for part in parts):
                self.fail(f"{svc}: entrypoint and command must be lists (exec form, no shell)")
                continue
            self.command(svc, [*parts[0], *parts[1]], image=str(spec.get("image", "")))
        for svc, spec in self.services.items():
            if "healthcheck" in spec:
                self.healthcheck(svc, spec["healthcheck"].get("test"))
            elif spec.get("restart") != "no":
                self.fail(f"{svc}: a long-running service without a healthcheck")
        self.check_volumes()
        self.check_graph()
        self.check_addresses()
        self.check_parties()
        self.check_dataflow()
        self.check_dockerfile()
        return self.problems

    def check_volumes(self) -> None:
        used: set[str] = set()
        for svc in self.services:
            for m in self.mounts(svc):
                if m.bind:
                    continue
                used.add(m.source)
                labels = (self.volumes.get(m.source) or {}).get("labels") or {}
                if m.source not in self.volumes:
                    self.fail(f"{svc}: volume {m.source} is not declared under volumes:")
                owner = labels.get("cohort.owner")
                if (
                    owner
                    and owner != self.role(svc)
                    and labels.get("cohort.issued-by") != self.role(svc)
                ):
                    self.fail(
                        f"{svc} (role {self.role(svc)}) mounts {m.source}, "
                        f"a secret volume of {owner}"
                    )
        for name, spec in self.volumes.items():
            labels = (spec or {}).get("labels") or {}
            owner = labels.get("cohort.owner")
            if (owner is None) == (labels.get("cohort.access") != "public"):
                self.fail(f"volume {name}: label it cohort.owner: ROLE or cohort.access: public")
            if owner is not None and not name.startswith(f"{owner}-"):
                self.fail(f"volume {name}: owned by {owner} but not named {owner}-*")
            if name not in used:
                self.fail(f"volume {name}: declared but no service mounts it")
        networks = self.compose.get("networks") or {}
        for svc, spec in self.services.items():
            if spec.get("ports") or spec.get("network_mode"):
                self.fail(f"{svc}: publishes ports or leaves the study network")
            for net in spec.get("networks") or ["default"]:
                if not (networks.get(net) or {}).get("internal"):
                    self.fail(f"{svc}: network {net} is not internal (no route out)")

    def check_graph(self) -> None:
        for svc, spec in self.services.items():
            for dep, cond in (spec.get("depends_on") or {}).items():
                condition = (cond or {}).get("condition", "service_started")
                if dep not in self.services or condition not in CONDITIONS:
                    self.fail(
                        f"{svc}: depends on {dep} ({condition}): no such service or condition"
                    )
                    continue
                once = self.services[dep].get("restart") == "no"
                if once != (condition == "service_completed_successfully"):
                    self.fail(f"{svc}: waits for {dep} with {condition}")
                if condition == "service_healthy" and "healthcheck" not in self.services[dep]:
                    self.fail(f"{svc}: waits for {dep} to be healthy; {dep} has no healthcheck")
            if svc in self.ancestors(svc):
                self.fail(f"{svc}: depends on itself (a cycle)")

    def check_addresses(self) -> None:
        for kind, refs, fmt in (
            ("superlink", self.superlink_refs, "{}:{}"),
            ("chain", self.chain_refs, "http://{}:{}"),
        ):
            if len(self.serving[kind]) != 1:
                self.fail(f"{len(self.serving[kind])} services serve the {kind}, want one")
                continue
            name, host, port = self.serving[kind][0]
            want = fmt.format(host, port)
            for svc, ref, what in refs:
                if ref.rstrip("/") != want:
                    self.fail(f"{svc}: {what} {ref}: {name} serves {want}")
        if self.isolation_process and not self.superexec:
            self.fail(
                "the SuperLink runs --isolation process but no flower-superexec runs the ServerApp"
            )
        from cohort.federation.sponsor import run_config

        for _, sub, study in self.studies:
            if sub == "launch":
                for svc in self.superexec:
                    for key, value in run_config(study).items():
                        if value.startswith("/"):
                            self.path(svc, value, f"run config {key}", "ref")

    def check_parties(self) -> None:
        create = [s for _, sub, s in self.studies if sub == "create"]
        if len(create) != 1:
            self.fail(f"{len(create)} services run cohort study create, want one")
            return
        from cohort.federation.keyfiles import OWNER_ENTRY_FILE

        study, sponsor = create[0], next(v for v, sub, _ in self.studies if sub == "create")
        member_entries = {self.loc(sponsor, p) for p in study.members}
        owner_entries = {self.loc(sponsor, p) for p in study.owners}
        for svc, config in self.members.items():
            export = self.exports.get(config.member_id or "")
            if export is None or export[0] != config.endpoint:
                self.fail(
                    f"{svc}: its exported endpoint {export and export[0]} is not {config.endpoint}"
                )
            elif export[1] not in member_entries:
                self.fail(f"{svc}: its committee entry is not in the study's [committee] members")
            approval = self.approvals.get(self.role(svc), ("", None, None))
            if approval[:2] != ("member", self.loc(svc, config.workdir)):
                self.fail(f"{svc}: no approval with --role member of its own workdir")
        k = len(study.members)
        if not (k / 2 < study.terms.quorum <= k) or len(self.members) != k:
            self.fail(f"quorum {study.terms.quorum} of {k} members, {len(self.members)} served")
        parties = set()
        for svc, config in self.hospitals.items():
            party, keydir = self.owner_keys.get(self.role(svc), ("", None))
            workdir = self.loc(svc, config.workdir)
            parties.add(config.party_id)
            if party != config.party_id or keydir != workdir:
                self.fail(f"{svc}: party-id {config.party_id} has no keys new in its workdir")
            entry = self.loc(svc, config.workdir / OWNER_ENTRY_FILE)
            if not any(s == entry and d in owner_entries for d, s in self.copies.items()):
                self.fail(f"{svc}: its roster entry is not in the study's [owners] entries")
            if config.auth_key is not None:
                auth = self.loc(svc, f"{config.auth_key}.pub")
                pubs = [d for d, s in self.copies.items() if s == auth]
                if not any(d in self.registered for d in pubs):
                    self.fail(f"{svc}: its SuperNode key {config.auth_key}.pub is not registered")
            owner = self.approvals.get(self.role(svc))
            if owner is None or owner[:2] != ("owner", workdir) or owner[2] != str(config.path):
                self.fail(f"{svc}: no approval with --role owner, its workdir and its policy")
        if study.terms.key_dealer not in parties or study.terms.min_clients > len(parties):
            self.fail(
                f"key dealer {study.terms.key_dealer} or min-clients vs hospitals {sorted(parties)}"
            )
        if len(self.demo_splits) > 1 or any(h != len(parties) for h, _ in self.demo_splits):
            self.fail(
                f"demo_data.py splits {sorted(self.demo_splits)} for {len(parties)} hospitals"
            )

    def check_dataflow(self) -> None:
        for svc, loc, what in self.reads:
            producers = self.writes.get(loc, set())
            if not producers:
                self.fail(f"{svc}: reads {what}, which no service writes")
            elif svc not in producers and not producers & self.ancestors(svc):
                self.fail(
                    f"{svc}: reads {what} from {', '.join(sorted(producers))} "
                    "without depending on it"
                )

    def check_dockerfile(self) -> None:
        steps = _dockerfile()
        lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        ignore = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if steps[0] != ("FROM", "python:3.11-slim") or ("WORKDIR", str(APP_DIR)) not in steps:
            self.fail("Dockerfile: FROM python:3.11-slim and WORKDIR /opt/cohort expected")
        user = [arg for word, arg in steps if word == "USER"]
        if not user or user[-1] in ("root", "0"):
            self.fail("Dockerfile: the image must end on a non-root USER")
        env = " ".join(arg for word, arg in steps if word == "ENV")
        for needed in (
            f"PATH={SCRIPT_DIR}:",
            "PIP_NO_INDEX=1",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
        ):
            if needed not in env:
                self.fail(f"Dockerfile: ENV {needed} missing")
        for word, arg in steps:
            if word == "COPY":
                for source in [a for a in arg.split() if not a.startswith("--")][:-1]:
                    if not (REPO / source).exists() or any(
                        fnmatch.fnmatch(source, p) for p in ignore
                    ):
                        self.fail(
                            f"Dockerfile: COPY {source}: missing or excluded by .dockerignore"
                        )
        owned = {t for word, arg in steps if word == "RUN" and "chown" in arg for t in arg.split()}
        for svc, spec in self.services.items():
            if str(spec.get("image", "")).startswith(COHORT_IMAGE):
                for m in self.mounts(svc):
                    if not m.bind and str(m.target) not in owned:
                        self.fail(
                            f"Dockerfile: {m.target} (volume {m.source} of {svc}) is not "
                            "created and chowned"
                        )


def check(compose: dict[str, Any]) -> list[str]:
    return ComposeCheck(compose).run()
