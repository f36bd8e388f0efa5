"""The role files of a deployed study: what parses, and the one line each mistake gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cohort.errors import ConfigError
from cohort.federation.cli import app
from cohort.federation.deploy_config import HospitalConfig, MemberConfig, StudyFile
from cohort.federation.manifest import SecureMode

HOSPITAL = """\
[hospital]
party-id = "hospital-1"
workdir = "work"
data = "data.csv"

[policy]
epsilon-cap = 3.0
modes = ["ckks"]

[superlink]
address = "superlink.example:9092"
root-certificates = "ca.pem"
"""

MEMBER = """\
[member]
workdir = "/var/lib/cohort-member"
member-id = "member-1"
host = "0.0.0.0"
port = 7001
endpoint = "member-1:7001"
tls-cert = "certs/member-1.pem"
tls-key = "certs/member-1-key.pem"
"""

STUDY = """\
[study]
name = "breast-cancer"
secure = "ckks"
rounds = 3
quorum = 2
classes = 3
seed = 4

[study.dp]
epsilon = 2.5
batch-size = 16

[sponsor]
keys = "keys"
password-file = "password"
out = "out"

[data]
test = "test.csv"
normalizer = "normalizer.json"

[committee]
ca = "ca.pem"
members = ["m1.json", "m2.json"]

[owners]
entries = ["h1.json", "h2.json"]

[chain]
url = "http://127.0.0.1:8545"

[superlink]
address = "127.0.0.1:9092"
root-certificates = "ca.pem"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_hospital_file_resolves_paths_next_to_it(tmp_path: Path) -> None:
    config = HospitalConfig.load(write(tmp_path, "hospital.toml", HOSPITAL))
    assert config.party_id == "hospital-1"
    assert config.workdir == tmp_path / "work"
    assert config.data == tmp_path / "data.csv"
    assert config.superlink.root_certificates == tmp_path / "ca.pem"
    assert config.auth_key == tmp_path / "work" / "keystore" / "supernode-auth"
    assert config.policy.epsilon_cap == 3.0
    assert config.policy.modes == frozenset({SecureMode.CKKS})
    # only the file's path crosses into Flower's node-config; the node reads the rest itself
    assert config.node_config() == f'config-file="{(tmp_path / "hospital.toml").resolve()}"'
    settings = config.settings()
    assert settings.workdir == str(tmp_path / "work")
    assert settings.data == str(tmp_path / "data.csv")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("epsilon-cap = 3.0", "epsilon-cap = 3.0\nepsilon-cp = 1.0"), "unknown key 'epsilon-cp'"),
        (('address = "superlink.example:9092"', 'address = "superlink"'), "expected host:port"),
        (('root-certificates = "ca.pem"\n', ""), "root-certificates: required unless insecure"),
        (('party-id = "hospital-1"\n', ""), "[hospital] party-id: missing"),
        (("[policy]\nepsilon-cap = 3.0\n", "[policy]\n"), "epsilon-cap is required"),
        (("[superlink]", "[superlnk]"), "unknown table [superlnk]"),
        (('data = "data.csv"', "data = 5"), "[hospital] data: must be text"),
        (('data = "data.csv"', 'data = "data.csv"\nport = 1'), "[hospital] port: unknown key"),
        (("modes = [", "modes = [["), "not valid TOML"),
        # the runner's settings
        (
            ('data = "data.csv"\n', 'data = "data.csv"\nclientapp = "ray"\n'),
            "[hospital] clientapp: must be one of warm, subprocess, got 'ray'",
        ),
        (
            ('address = "superlink.example:9092"\n', 'address = "s:9092"\npoll-interval = 0\n'),
            "[superlink] poll-interval: seconds between an idle node's requests for work",
        ),
        (
            ('address = "superlink.example:9092"\n', 'address = "s:9092"\nnode-port = 0\n'),
            "[superlink] node-port: the warm ClientApp runner needs a fixed port",
        ),
        (
            ('data = "data.csv"\n', 'data = "data.csv"\nthreads = -1\n'),
            "[hospital] threads: must be >= 0, got -1",
        ),
    ],
)
def test_hospital_file_mistakes_are_one_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = HOSPITAL.replace(*change)
    assert text != HOSPITAL
    with pytest.raises(ConfigError) as info:
        HospitalConfig.load(write(tmp_path, "hospital.toml", text))
    assert message in str(info.value)
    assert str(tmp_path / "hospital.toml") in str(info.value)
    assert "\n" not in str(info.value)


def test_member_file_gives_the_service_its_arguments(tmp_path: Path) -> None:
    config = MemberConfig.load(write(tmp_path, "member.toml", MEMBER))
    assert config.argv() == [
        "--workdir", "/var/lib/cohort-member", "--host", "0.0.0.0", "--port", "7001",
        "--member-id", "member-1", "--endpoint", "member-1:7001",
        "--tls-cert", str(tmp_path / "certs/member-1.pem"),
        "--tls-key", str(tmp_path / "certs/member-1-key.pem"),
    ]  # fmt: skip


def test_member_file_without_tls_is_refused_unless_insecure(tmp_path: Path) -> None:
    text = MEMBER.replace('tls-key = "certs/member-1-key.pem"\n', "")
    with pytest.raises(ConfigError, match="tls-cert and tls-key are required"):
        MemberConfig.load(write(tmp_path, "member.toml", text))
    insecure = MEMBER.split("tls-cert")[0] + "insecure = true\n"
    assert MemberConfig.load(write(tmp_path, "member.toml", insecure)).argv()[-1] == "--insecure"


def test_study_file_reads_terms_and_files(tmp_path: Path) -> None:
    study = StudyFile.load(write(tmp_path, "study.toml", STUDY))
    assert study.terms.classes == 3
    assert study.terms.seed == 4
    assert study.terms.dp == {"epsilon": 2.5, "batch_size": 16}
    assert study.members == (tmp_path / "m1.json", tmp_path / "m2.json")
    assert study.out == tmp_path / "out"
    assert study.superlink.address == "127.0.0.1:9092"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("rounds = 3", "rounds = 0"), "[study] rounds: must be >= 1"),
        (('secure = "ckks"', 'secure = "rot13"'), "[study] secure"),
        (("batch-size = 16", "batch-size = 1.5"), "[study.dp] batch-size: must be an integer"),
        (("batch-size = 16", "batch-sz = 16"), "[study.dp] batch-sz: unknown key"),
        (('members = ["m1.json", "m2.json"]', "members = []"), "non-empty list"),
        (('url = "http://127.0.0.1:8545"\n', ""), "[chain] url: missing"),
    ],
)
def test_study_file_mistakes_are_one_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = STUDY.replace(*change)
    assert text != STUDY
    with pytest.raises(ConfigError) as info:
        StudyFile.load(write(tmp_path, "study.toml", text))
    assert message in str(info.value)


def test_node_start_prints_the_supernode_command(tmp_path: Path) -> None:
    path = write(tmp_path, "hospital.toml", HOSPITAL)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n", encoding="utf-8")
    key = tmp_path / "work" / "keystore" / "supernode-auth"
    key.parent.mkdir(parents=True)
    key.write_text("placeholder", encoding="utf-8")
    result = CliRunner().invoke(app, ["node", "start", "--config", str(path), "--print-command"])
    assert result.exit_code == 0, result.output
    argv = json.loads(result.output)
    assert Path(argv[0]).name == "flower-supernode"
    assert argv[argv.index("--superlink") + 1] == "superlink.example:9092"
    assert argv[argv.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(key)
    assert "--insecure" not in argv
    assert argv[argv.index("--node-config") + 1].startswith('config-file="')


def test_node_start_without_its_auth_key_says_which_file(tmp_path: Path) -> None:
    path = write(tmp_path, "hospital.toml", HOSPITAL)
    result = CliRunner().invoke(app, ["node", "start", "--config", str(path), "--print-command"])
    assert result.exit_code == 1
    assert "auth-key" in result.output
    assert "cohort keys new --role owner" in result.output


def _print_command(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "hospital.toml", text)
    (tmp_path / "data.csv").write_text("a,label\n1,0\n", encoding="utf-8")
    key = tmp_path / "work" / "keystore" / "supernode-auth"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("placeholder", encoding="utf-8")
    result = CliRunner().invoke(app, ["node", "start", "--config", str(path), "--print-command"])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def test_the_warm_clientapp_runner_is_the_default(tmp_path: Path) -> None:
    config = HospitalConfig.load(write(tmp_path, "hospital.toml", HOSPITAL))
    assert (config.clientapp, config.poll_interval_s) == ("warm", 0.25)
    argv = _print_command(tmp_path, HOSPITAL)
    # no SuperExec inside the node: cohort node start serves the ClientApp itself
    assert argv[argv.index("--isolation") + 1] == "process"


def test_torch_threads_per_message_default_to_torchs_own(tmp_path: Path) -> None:
    assert HospitalConfig.load(write(tmp_path, "hospital.toml", HOSPITAL)).threads == 0
    text = HOSPITAL.replace('data = "data.csv"\n', 'data = "data.csv"\nthreads = 1\n')
    assert HospitalConfig.load(write(tmp_path, "hospital.toml", text)).threads == 1


def test_the_subprocess_runner_also_serves_the_nodes_tasks_itself(tmp_path: Path) -> None:
    """No task is left to Flower's SuperExec, whose flwr-clientapp installs any FAB: the
    node runs with --isolation process and cohort node start starts each task."""
    text = HOSPITAL.replace('data = "data.csv"\n', 'data = "data.csv"\nclientapp = "subprocess"\n')
    argv = _print_command(tmp_path, text)
    assert argv[argv.index("--isolation") + 1] == "process"
