"""docker-compose.yml without a Docker engine: the real file passes the checker
(tests/deploy/compose_check.py), every kind of mistake in a mutated copy is named, and the
deploy/compose scripts the services run do what the file relies on."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deploy.compose_check import (
    ANVIL_BINARY,
    ANVIL_OPTIONS,
    anvil_options,
    check,
    load_compose,
    load_script,
    parse_argv,
)


def test_compose_file_is_consistent() -> None:
    problems = check(load_compose())
    assert problems == [], "\n".join(problems)


def test_service_list() -> None:
    services = load_compose()["services"]
    serving = {name for name, s in services.items() if s.get("restart") != "no"}
    assert serving == {
        "chain", "superlink", "coordinator", "member-1", "member-2", "member-3",
        "hospital-1", "hospital-2", "hospital-3",
    }  # fmt: skip
    assert services["launch"]["restart"] == "no"
    assert services["status"]["profiles"] == ["tools"]


def _append(svc: str, *args: str) -> Callable[[dict[str, Any]], None]:
    return _add(svc, "command", *args)


def _add(svc: str, key: str, *items: str) -> Callable[[dict[str, Any]], None]:
    def mutate(c: dict[str, Any]) -> None:
        c["services"][svc][key] = [*c["services"][svc][key], *items]

    return mutate


def _replace(
    svc: str, old: str, new: str, key: str = "command"
) -> Callable[[dict[str, Any]], None]:
    def mutate(c: dict[str, Any]) -> None:
        items = c["services"][svc][key]
        assert old in items, (old, items)
        c["services"][svc][key] = [new if item == old else item for item in items]

    return mutate


def _drop(svc: str, key: str, item: str) -> Callable[[dict[str, Any]], None]:
    def mutate(c: dict[str, Any]) -> None:
        value = c["services"][svc][key]
        if isinstance(value, dict):
            del value[item]
        else:
            value.remove(item)

    return mutate


def _set(svc: str, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(c: dict[str, Any]) -> None:
        c["services"][svc][key] = value

    return mutate


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("flower flag", _append("superlink", "--no-such-flag"), "superlink: flower-superlink: "),
    (
        "cohort flag",
        _append("hospital-1-approve", "--bogus"),
        "hospital-1-approve: cohort study approve: No such option '--bogus'",
    ),
    ("cohort command", _replace("member-3", "serve", "start"), "no such command 'start'"),
    ("script flag", _append("sponsor-data", "--frac", "1"), "demo_data.py: "),
    ("anvil flag", _append("chain", "--mine-now"), "anvil: unknown option --mine-now"),
    ("program", _set("member-3", "command", ["bash", "-c", "cohort"]), "'bash' is not a Cohort"),
    (
        "missing volume",
        _drop("hospital-1", "volumes", "hospital-1-data:/data:ro"),
        "hospital-1: [hospital] data /data/hospital-1.csv is not inside any volume",
    ),
    (
        "superlink port",
        _replace("superlink", "9092", "9093"),
        "hospital-1: SuperNode --superlink superlink:9092: superlink serves superlink:9093",
    ),
    (
        "member endpoint",
        _replace("member-2-export", "member-2:7002", "member-2:7009"),
        "member-2: its exported endpoint member-2:7009 is not member-2:7002",
    ),
    (
        "chain port",
        _replace("chain", "8545", "8546"),
        "fund: fund.py --rpc-url http://chain:8545: chain serves http://chain:8546",
    ),
    (
        "secret volume",
        _add("hospital-1", "volumes", "sponsor-keys:/sponsor/keys:ro"),
        "hospital-1 (role hospital-1) mounts sponsor-keys, a secret volume of sponsor",
    ),
    (
        "config file",
        _replace(
            "hospital-2",
            "./deploy/compose/hospital-2.toml:/etc/cohort/hospital.toml:ro",
            "./deploy/compose/hospital-9.toml:/etc/cohort/hospital.toml:ro",
            key="volumes",
        ),
        "hospital-2: bind mount source ./deploy/compose/hospital-9.toml does not exist",
    ),
    (
        "dependency",
        _drop("hospital-1-approve", "depends_on", "study-create"),
        "hospital-1-approve: reads MANIFEST /public/manifest.json from study-create without",
    ),
    (
        "insecure superlink",
        _replace("superlink", "--enable-supernode-auth", "--insecure"),
        "superlink: flower-superlink must run with TLS and --enable-supernode-auth",
    ),
    (
        "wrong registration",
        _replace(
            "register-hospital-2",
            "/public/hospital-2-supernode.pub",
            "/public/hospital-1-supernode.pub",
        ),
        "hospital-2: its SuperNode key /var/lib/cohort/keystore/supernode-auth.pub is not "
        "registered",
    ),
    ("published port", _set("superlink", "ports", ["9092:9092"]), "superlink: publishes ports"),
    (
        "healthcheck",
        lambda c: c["services"]["member-1"].pop("healthcheck"),
        "member-1: a long-running service without a healthcheck",
    ),
    (
        "public secret",
        _replace(
            "hospital-3-keys",
            "/var/lib/cohort/keystore/supernode-auth.pub:/public/hospital-3-supernode.pub",
            "/var/lib/cohort/keystore/supernode-auth:/public/hospital-3-supernode.pub",
        ),
        "hospital-3-keys: copies /var/lib/cohort/keystore/supernode-auth into the public volume",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_checker_names_the_mistake(mutate: Callable[[dict[str, Any]], None], expected: str) -> None:
    compose = copy.deepcopy(load_compose())
    mutate(compose)
    problems = check(compose)
    assert any(expected in p for p in problems), "\n".join(problems)


@pytest.mark.skipif(not ANVIL_BINARY.exists(), reason="no anvil binary (npm ci)")
def test_anvil_fallback_options_are_anvils() -> None:
    """The table used without the binary agrees with the binary's --help."""
    options = anvil_options()
    assert {k: options.get(k) for k in ANVIL_OPTIONS} == ANVIL_OPTIONS


def test_step_runs_once_and_copies(tmp_path: Path) -> None:
    step = load_script("step.py")
    password, marker, public = (
        tmp_path / "s" / "pw",
        tmp_path / "m" / "done",
        tmp_path / "p" / "x.pub",
    )
    source = tmp_path / "x.pub"
    argv = ["--password-file", str(password), "--once", str(marker), "--copy", f"{source}:{public}"]
    assert step.main([*argv, "--", "sh", "-c", f"echo key > {source}"]) == 0
    assert password.stat().st_mode & 0o777 == 0o600
    assert len(password.read_text().strip()) >= 40
    assert marker.exists()
    assert public.read_text() == "key\n"
    first = password.read_text()
    source.write_text("again\n")
    assert step.main([*argv, "--", "false"]) == 0  # skipped: the marker exists
    assert password.read_text() == first
    assert public.read_text() == "again\n"
    marker.unlink()
    assert step.main([*argv, "--", "false"]) == 1


def test_demo_data_parts_cover_the_split(tmp_path: Path) -> None:
    from cohort.clients.data import demo_split, load_csv

    demo = load_script("demo_data.py")
    hospitals, test = demo_split(num_hospitals=3, seed=7, standardize=False)
    for n, want in [(1, hospitals[0]), (3, hospitals[2]), (None, test)]:
        out = tmp_path / f"{n}.csv"
        part = ["--hospital", str(n)] if n else ["--test"]
        assert demo.main(["--hospitals", "3", "--seed", "7", *part, "--out", str(out)]) == 0
        got = load_csv(out)
        assert got.feature_names == want.feature_names
        assert (got.labels == want.labels).all()
        assert (got.features == want.features).all()


def test_healthcheck_parser() -> None:
    parser = load_script("healthcheck.py").build_parser()
    assert not isinstance(parse_argv(parser, ["https", "superlink:9092/health", "--ca", "/c"]), str)
    assert isinstance(parse_argv(parser, ["tls", "member-1"]), str)  # no port, no --ca
    assert isinstance(parse_argv(parser, ["ping", "x:1"]), str)
