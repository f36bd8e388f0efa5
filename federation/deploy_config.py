"""The TOML files each party of a deployed study writes for its own machine.

One file per role, read and checked here before anything starts, so that a typo is one line
naming the file, the table and the key:

* hospital (``cohort node start --config hospital.toml``): ``[hospital]`` (party id, work
  directory, the hospital's own CSV), ``[policy]`` (the hospital's own limits, see
  :class:`~cohort.federation.policy.HospitalPolicy`) and ``[superlink]`` (where its SuperNode
  connects, the CA it trusts, its node-authentication key);
* committee member (``cohort committee serve --config member.toml``): ``[member]``;
* sponsor (``cohort study create|launch|status --config study.toml``): ``[study]`` and
  ``[study.dp]`` (the terms that go into the manifest), ``[sponsor]`` (its key directory and
  output folder), ``[data]`` (its held-out test split and published normaliser),
  ``[committee]`` and ``[owners]`` (the public entries the members and hospitals sent),
  ``[chain]`` and ``[superlink]``.

Relative paths are relative to the file's own folder. Nothing secret lives in these files:
they name key files and password files, whose contents stay where they are.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cohort.errors import ConfigError
from cohort.federation.manifest import SecureMode
from cohort.federation.policy import HospitalPolicy

if TYPE_CHECKING:
    from cohort.federation.hospital import HospitalSettings

SUPERNODE_AUTH_KEY = "supernode-auth"
# [hospital] clientapp: how the node runs Cohort's ClientApp for each Flower message.
# "warm": ``cohort node start`` keeps one process with the ClientApp imported (torch, Opacus,
# TenSEAL) and forks a fresh child of it per message; "subprocess": it starts a new
# interpreter per message (cohort.federation.task_process; seconds of imports each time).
# Both refuse a run's app bundle that carries code; Flower's own SuperExec is never used.
CLIENTAPP_RUNNERS = ("warm", "subprocess")
# [superlink] poll-interval: seconds an idle SuperNode waits before asking the SuperLink for
# work again (Flower 1.42 waits 3 s).
DEFAULT_POLL_INTERVAL_S = 0.25
CONFIG_FILE_KEY = "config-file"


class _Table:
    """One TOML table, read key by key with errors that name file, table and key."""

    def __init__(self, path: Path, name: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.name = name
        self.data = data
        self._used: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}: [{self.name}] {key}"

    def _get(self, key: str, default: object = None, *, required: bool = False) -> object:
        self._used.add(key)
        if key not in self.data:
            if required:
                raise ConfigError(f"{self._where(key)}: missing (required)")
            return default
        return self.data[key]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key, default, required=required)
        if not isinstance(value, str) or (required and not value):
            raise ConfigError(f"{self._where(key)}: must be text, got {value!r}")
        return value

    def optional_integer(self, key: str) -> int | None:
        value = self._get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{self._where(key)}: must be an integer, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._where(key)}: must be non-empty text, got {value!r}")
        return value

    def path_value(self, key: str) -> Path:
        """A required path; relative to the file's folder."""
        return self._resolve(self.text(key, required=True))

    def optional_path(self, key: str) -> Path | None:
        raw = self.optional_text(key)
        return None if raw is None else self._resolve(raw)

    def _resolve(self, raw: str) -> Path:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (self.path.parent / path)

    def integer(self, key: str, default: int | None = None, *, low: int | None = None) -> int:
        value = self._get(key, default, required=default is None)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self._where(key)}: must be an integer, got {value!r}")
        if low is not None and value < low:
            raise ConfigError(f"{self._where(key)}: must be >= {low}, got {value}")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default, required=default is None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._where(key)}: must be a number, got {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where(key)}: must be true or false, got {value!r}")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key, required=True)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)}: must be a non-empty list of text")
        return tuple(value)

    def paths(self, key: str) -> tuple[Path, ...]:
        value = self._get(key, required=True)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)}: must be a non-empty list of file paths")
        out = []
        for raw in value:
            path = Path(raw).expanduser()
            out.append(path if path.is_absolute() else self.path.parent / path)
        return tuple(out)

    def table(self, key: str, *, required: bool = True) -> _Table:
        value = self._get(key, {}, required=required)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{self.path}: [{self.name}.{key}] must be a table")
        return _Table(self.path, f"{self.name}.{key}", value)

    def done(self) -> None:
        """Refuse keys nobody read (a typo would otherwise be silently ignored)."""
        unknown = sorted(set(self.data) - self._used)
        if unknown:
            raise ConfigError(f"{self._where(unknown[0])}: unknown key")


def _document(path: Path, tables: tuple[str, ...]) -> dict[str, _Table]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(tables))
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}]")
    out = {}
    for name in tables:
        value = data.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: [{name}] must be a table")
        out[name] = _Table(path, name, value)
    return out


@dataclass(frozen=True)
class SuperLinkTarget:
    """Where a Flower client (a SuperNode, or the sponsor's ``flwr`` CLI) reaches the SuperLink."""

    address: str
    root_certificates: Path | None
    insecure: bool

    @classmethod
    def read(cls, table: _Table) -> SuperLinkTarget:
        address = table.text("address", required=True)
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"{table.path}: [{table.name}] address: expected host:port, got {address!r}"
            )
        insecure = table.boolean("insecure", False)
        root = table.optional_path("root-certificates")
        if not insecure and root is None:
            raise ConfigError(
                f"{table.path}: [{table.name}] root-certificates: required unless insecure = true "
                "(the CA that signed the SuperLink's certificate)"
            )
        return cls(address=address, root_certificates=root, insecure=insecure)


@dataclass(frozen=True)
class HospitalConfig:
    """``hospital.toml``: what a hospital's IT team sets for its own node."""

    path: Path
    party_id: str
    workdir: Path
    data: Path
    label_column: str
    dataset_id: str
    policy: HospitalPolicy
    superlink: SuperLinkTarget
    auth_key: Path | None
    node_port: int
    clientapp: str = "warm"
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    #: torch threads per ClientApp message; 0: torch's default (one per core).
    threads: int = 0

    @classmethod
    def load(cls, path: Path) -> HospitalConfig:
        doc = _document(path, ("hospital", "policy", "superlink"))
        h, link = doc["hospital"], doc["superlink"]
        workdir = h.path_value("workdir")
        data = h.path_value("data")
        try:
            policy = HospitalPolicy.from_mapping(doc["policy"].data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [policy] {exc}") from None
        target = SuperLinkTarget.read(link)
        auth_key = link.optional_path("auth-key")
        if auth_key is None and not target.insecure:
            auth_key = workdir / "keystore" / SUPERNODE_AUTH_KEY
        runner = h.text("clientapp", "warm")
        if runner not in CLIENTAPP_RUNNERS:
            raise ConfigError(
                f"{path}: [hospital] clientapp: must be one of {', '.join(CLIENTAPP_RUNNERS)}, "
                f"got {runner!r}"
            )
        poll = link.number("poll-interval", DEFAULT_POLL_INTERVAL_S)
        if not 0.01 <= poll <= 60.0:
            raise ConfigError(
                f"{path}: [superlink] poll-interval: seconds between an idle node's requests "
                f"for work, from 0.01 to 60, got {poll}"
            )
        node_port = link.integer("node-port", 9094, low=0)
        threads = h.integer("threads", 0, low=0)
        if runner == "warm" and node_port == 0:
            raise ConfigError(
                f"{path}: [superlink] node-port: the warm ClientApp runner needs a fixed port "
                "(1-65535), got 0"
            )
        config = cls(
            path=path,
            party_id=h.text("party-id", required=True),
            workdir=workdir,
            data=data,
            label_column=h.text("label-column", "label"),
            dataset_id=h.text("dataset-id", "default"),
            policy=policy,
            superlink=target,
            auth_key=auth_key,
            node_port=node_port,
            clientapp=runner,
            poll_interval_s=poll,
            threads=threads,
        )
        h.done()
        link.done()
        return config

    def node_config(self) -> str:
        """Flower's ``--node-config``: the path of this file, which the ClientApp reads itself.

        Only the path crosses into Flower's configuration; the policy, the data path and any
        model registry are read from the file on this node, by this node.
        """
        text = str(self.path.resolve())
        if '"' in text or "\\" in text or "\n" in text:
            raise ConfigError(f"{text!r}: a config path may not hold quotes or backslashes")
        return f'{CONFIG_FILE_KEY}="{text}"'

    def settings(self) -> HospitalSettings:
        """The ClientApp's view of this hospital."""
        from cohort.federation.hospital import HospitalSettings

        return HospitalSettings(
            party_id=self.party_id,
            workdir=str(self.workdir),
            data=str(self.data),
            policy=self.policy,
            label_column=self.label_column,
            dataset_id=self.dataset_id,
        )


@dataclass(frozen=True)
class MemberConfig:
    """``member.toml``: what a committee member's operator sets for its aggregator service."""

    path: Path
    workdir: Path
    member_id: str | None
    host: str
    port: int
    endpoint: str
    tls_cert: Path | None
    tls_key: Path | None
    insecure: bool
    password_file: Path | None

    @classmethod
    def load(cls, path: Path) -> MemberConfig:
        doc = _document(path, ("member",))
        m = doc["member"]
        workdir = m.path_value("workdir")
        config = cls(
            path=path,
            workdir=workdir,
            member_id=m.optional_text("member-id"),
            host=m.text("host", "127.0.0.1"),
            port=m.integer("port", 0, low=0),
            endpoint=m.text("endpoint", ""),
            tls_cert=m.optional_path("tls-cert"),
            tls_key=m.optional_path("tls-key"),
            insecure=m.boolean("insecure", False),
            password_file=m.optional_path("password-file"),
        )
        m.done()
        if not config.insecure and (config.tls_cert is None or config.tls_key is None):
            raise ConfigError(
                f"{path}: [member] tls-cert and tls-key are required unless insecure = true"
            )
        return config

    def argv(self) -> list[str]:
        """The member service's arguments (``python -m cohort.aggregator``)."""
        args = ["--workdir", str(self.workdir), "--host", self.host, "--port", str(self.port)]
        if self.member_id:
            args += ["--member-id", self.member_id]
        if self.endpoint:
            args += ["--endpoint", self.endpoint]
        if self.tls_cert is not None and self.tls_key is not None:
            args += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if self.insecure:
            args.append("--insecure")
        if self.password_file is not None:
            args += ["--password-file", str(self.password_file)]
        return args


@dataclass(frozen=True)
class StudyTerms:
    """``[study]`` and ``[study.dp]``: the terms the sponsor proposes in the manifest."""

    name: str
    secure: SecureMode
    rounds: int
    quorum: int
    min_clients: int
    model: str
    classes: int
    server_lr: float
    bounty_wei: int
    deadline_days: float
    key_dealer: str | None
    seed: int | None
    dp: Mapping[str, float | int]
    #: ``[study.client-dp]`` (``clip-norm``, ``noise-multiplier``): client-level DP, or None.
    client_dp: Mapping[str, float] | None = None
    #: ``[study.mpc]`` (``norm-bound``, ``rendezvous``: one ``host:port`` per member, in
    #: ``[committee] members`` order): MPC mode's terms, required exactly when secure = "mpc".
    mpc: Mapping[str, Any] | None = None


_DP_KEYS = {
    "epsilon": "epsilon",
    "delta": "delta",
    "local-epochs": "local_epochs",
    "batch-size": "batch_size",
    "max-grad-norm": "max_grad_norm",
    "lr": "lr",
}


@dataclass(frozen=True)
class StudyFile:
    """``study.toml``: the sponsor's side of a deployed study."""

    path: Path
    terms: StudyTerms
    sponsor_keys: Path
    password_file: Path | None
    out: Path
    test_data: Path
    label_column: str
    normalizer: Path
    ca: Path
    members: tuple[Path, ...]
    owners: tuple[Path, ...]
    chain_url: str
    superlink: SuperLinkTarget

    @classmethod
    def load(cls, path: Path) -> StudyFile:
        doc = _document(
            path, ("study", "sponsor", "data", "committee", "owners", "chain", "superlink")
        )
        s = doc["study"]
        dp_table = s.table("dp", required=False)
        dp: dict[str, float | int] = {}
        for key, field_name in _DP_KEYS.items():
            if key in dp_table.data:
                if key in ("local-epochs", "batch-size"):
                    dp[field_name] = dp_table.integer(key, low=1)
                else:
                    dp[field_name] = dp_table.number(key)
        dp_table.done()
        client_dp: dict[str, float] | None = None
        if "client-dp" in s.data:
            table = s.table("client-dp")
            client_dp = {
                "clip_norm": table.number("clip-norm", 1.0),
                "noise_multiplier": table.number("noise-multiplier"),
            }
            table.done()
        try:
            secure = SecureMode.parse(s.text("secure", "ckks"))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{path}: [study] secure: {exc}") from None
        mpc: dict[str, Any] | None = None
        if "mpc" in s.data:
            table = s.table("mpc")
            mpc = {
                "norm_bound": table.number("norm-bound", 10.0),
                "rendezvous": table.texts("rendezvous"),
            }
            table.done()
        if (mpc is None) != (secure is not SecureMode.MPC):
            raise ConfigError(f'{path}: [study.mpc] is required when secure = "mpc", and only then')
        terms = StudyTerms(
            name=s.text("name", required=True),
            secure=secure,
            rounds=s.integer("rounds", low=1),
            quorum=s.integer("quorum", low=1),
            min_clients=s.integer("min-clients", 2, low=2),
            model=s.text("model", "mlp"),
            classes=s.integer("classes", 2, low=2),
            server_lr=s.number("server-lr", 1.0),
            bounty_wei=s.integer("bounty-wei", 0, low=0),
            deadline_days=s.number("deadline-days", 7.0),
            key_dealer=s.optional_text("key-dealer"),
            seed=s.optional_integer("seed"),
            dp=dp,
            client_dp=client_dp,
            mpc=mpc,
        )
        s.done()
        sponsor, data, committee = doc["sponsor"], doc["data"], doc["committee"]
        owners, chain = doc["owners"], doc["chain"]
        keys, out = sponsor.path_value("keys"), sponsor.path_value("out")
        test, normalizer = data.path_value("test"), data.path_value("normalizer")
        ca = committee.path_value("ca")
        study = cls(
            path=path,
            terms=terms,
            sponsor_keys=keys,
            password_file=sponsor.optional_path("password-file"),
            out=out,
            test_data=test,
            label_column=data.text("label-column", "label"),
            normalizer=normalizer,
            ca=ca,
            members=committee.paths("members"),
            owners=owners.paths("entries"),
            chain_url=chain.text("url", required=True),
            superlink=SuperLinkTarget.read(doc["superlink"]),
        )
        for table in (sponsor, data, committee, owners, chain, doc["superlink"]):
            table.done()
        return study
