"""``cohort keys``, ``cohort study show/approve`` and ``cohort certs`` over a real signed
manifest: real identities (one made by ``cohort keys new``), the sponsor's Ed25519 signature,
policy TOML files, and for ``--chain-url`` a study contract deployed on anvil."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from anvilkit import running_anvil
from click.testing import Result
from eth_account import Account
from typer.testing import CliRunner
from web3.types import RPCEndpoint

from cohort.aggregator.keys import MemberKeys
from cohort.crypto.identity import Identity
from cohort.federation.approval import APPROVAL_FILE, MANIFEST_FILE, Role, approved_manifest
from cohort.federation.cli import app, main
from cohort.federation.deploy_local import free_ports
from cohort.federation.manifest import (
    CommitteeEntry,
    DpTerms,
    Manifest,
    OwnerEntry,
    SecureMode,
    SignedManifest,
    new_nonce,
)

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
POLICY = """\
[policy]
epsilon-cap = 3.0
delta = 1e-5
min-clients = 2
modes = ["ckks"]
"""


def cohort(*args: str) -> Result:
    return runner.invoke(app, list(args))


def one_line_error(result: Result) -> str:
    """The command refused with exactly one line and no traceback; returns that line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@dataclass
class World:
    """A signed study whose first owner's keys live in ``hospital`` (made by the CLI)."""

    signed: SignedManifest
    sponsor: Identity
    members: list[Identity]
    hospital: Path
    path: Path
    policy: Path

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    def resign(self, name: str, **changes: Any) -> Path:
        """The same study with other terms, properly signed (a new study id), saved."""
        signed = SignedManifest.sign(dataclasses.replace(self.manifest, **changes), self.sponsor)
        path = self.path.with_name(name)
        signed.save(path)
        return path


def new_owner(workdir: Path, party_id: str) -> Result:
    """``cohort keys new --role owner`` (the password comes from the environment)."""
    return cohort("keys", "new", "--role", "owner", "--dir", str(workdir), "--party-id", party_id)


def roster_entry(record: dict[str, str]) -> OwnerEntry:
    return OwnerEntry(
        party_id=record["party_id"],
        sign_key=bytes.fromhex(record["sign_key"]),
        box_key=bytes.fromhex(record["box_key"]),
        payout_address=record["payout_address"],
    )


def build_manifest(
    *,
    owners: list[OwnerEntry],
    members: list[Identity],
    sponsor: Identity,
    secure: SecureMode = SecureMode.CKKS,
    min_clients: int = 2,
    tls: tuple[str, dict[str, str]] | None = None,
    chain_id: int = 1337,
    contract: str | None = None,
    sponsor_address: str | None = None,
    deadline: int | None = None,
) -> Manifest:
    ca, pins = tls if tls is not None else ("", {})
    committee = tuple(
        CommitteeEntry(
            member_id=m.party_id,
            sign_key=m.public.sign_key,
            box_key=m.public.box_key,
            eth_address=Account.create().address,
            endpoint=f"member-{i + 1}.example.org:50051",
            tls_fingerprint=bytes.fromhex(pins[m.party_id]) if pins else b"",
        )
        for i, m in enumerate(members)
    )
    return Manifest(
        name="sepsis-early-warning",
        nonce=new_nonce(),
        secure=secure,
        committee=committee,
        quorum=2,
        min_clients=min_clients,
        owners=tuple(owners),
        key_dealer=owners[0].party_id,
        coordinator_key=Identity.generate("coordinator").public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=sponsor_address or Account.create().address,
        rounds=5,
        dp=DpTerms(
            epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=32, max_grad_norm=1.0, lr=0.5
        ),
        model="mlp",
        features=30,
        num_classes=2,
        update_length=2114,
        init_seed=1,
        server_lr=1.0,
        payout_rule="proportional-to-included-rounds",
        bounty_wei=1_500_000_000_000_000_000,
        chain_id=chain_id,
        contract=contract or Account.create().address,
        deadline=deadline or 1_900_000_000,
        tls_ca=ca,
    )


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("COHORT_KEYSTORE_PASSWORD", "correct horse battery staple")
    hospital = tmp_path / "hospital-1"
    result = new_owner(hospital, "hospital-1")
    assert result.exit_code == 0, result.output
    first = roster_entry(json.loads(result.stdout))
    others = []
    for i in (2, 3):
        identity = Identity.generate(f"hospital-{i}")
        others.append(
            OwnerEntry(
                party_id=identity.party_id,
                sign_key=identity.public.sign_key,
                box_key=identity.public.box_key,
                payout_address=Account.create().address,
            )
        )
    sponsor = Identity.generate("sponsor")
    members = [Identity.generate(f"member-{i}") for i in (1, 2, 3)]
    signed = SignedManifest.sign(
        build_manifest(owners=[first, *others], members=members, sponsor=sponsor), sponsor
    )
    path = tmp_path / "manifest.json"
    signed.save(path)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return World(signed, sponsor, members, hospital, path, policy)


# --------------------------------------------------------------------------- keys


def test_keys_new_prints_a_roster_entry_and_keeps_one_identity(world: World) -> None:
    result = cohort("keys", "show", "--dir", str(world.hospital), "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert roster_entry(record) == world.manifest.owner("hospital-1")
    again = new_owner(world.hospital, "other")
    assert again.exit_code == 1
    assert "already exists" in one_line_error(again)


def test_keys_show_without_an_identity_creates_none(tmp_path: Path) -> None:
    result = cohort("keys", "show", "--dir", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert "no keys in" in one_line_error(result)
    assert not (tmp_path / "empty").exists()


# --------------------------------------------------------------------------- show


def test_show_prints_the_terms_an_approver_decides_on(world: World) -> None:
    result = cohort("study", "show", str(world.path))
    assert result.exit_code == 0, result.output
    out = result.output
    manifest = world.manifest
    assert manifest.study_id in out
    assert "sepsis-early-warning" in out
    assert "signature verified" in out
    assert "2 of 3 committee members" in out
    assert "2 data owners in every aggregate" in out
    for m in manifest.committee:
        assert m.member_id in out
        assert m.endpoint in out
        assert m.eth_address in out
        assert m.identity.fingerprint() in out
    assert out.count("NO TLS") == 4  # the heading and each member
    for o in manifest.owners:
        assert o.party_id in out
        assert o.identity.fingerprint() in out
        assert o.payout_address in out
    assert manifest.coordinator.fingerprint() in out
    assert "1500000000000000000 wei (1.5 ether)" in out
    assert "2030-03-17T17:46:40Z" in out  # deadline 1_900_000_000, in UTC
    assert manifest.contract in out
    assert "C = 1" in out


def test_show_prints_the_tls_pins_made_by_cohort_certs(world: World, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ids = [m.party_id for m in world.members]
    args = ["certs", "--out", str(certs), "--host", "127.0.0.1"]
    for member_id in ids:
        args += ["--member", member_id]
    result = cohort(*args)
    assert result.exit_code == 0, result.output
    pins = json.loads((certs / "fingerprints.json").read_text())
    assert sorted(pins) == sorted(ids)
    for fingerprint in pins.values():
        assert fingerprint in result.output
    manifest = build_manifest(
        owners=list(world.manifest.owners),
        members=world.members,
        sponsor=world.sponsor,
        tls=((certs / "ca.pem").read_text(), pins),
    )
    path = tmp_path / "tls-manifest.json"
    SignedManifest.sign(manifest, world.sponsor).save(path)
    shown = cohort("study", "show", str(path))
    assert shown.exit_code == 0, shown.output
    assert "NO TLS" not in shown.output
    for fingerprint in pins.values():
        assert f"tls sha256 {fingerprint}" in shown.output
    # The set-up refuses to replace the study CA by accident.
    again = cohort(*args)
    assert again.exit_code == 1
    assert "--overwrite" in one_line_error(again)


def test_show_refuses_a_byte_flipped_manifest(world: World) -> None:
    raw = bytearray(world.path.read_bytes())
    nonce = world.manifest.nonce.hex()
    at = raw.index(nonce.encode())
    raw[at] = ord("0") if raw[at] != ord("0") else ord("1")  # one hex digit of the nonce
    world.path.write_bytes(bytes(raw))
    result = cohort("study", "show", str(world.path))
    assert result.exit_code == 1
    assert "sponsor signature" in one_line_error(result)


def test_show_refuses_a_file_that_is_not_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("approve me")
    result = cohort("study", "show", str(path))
    assert result.exit_code == 1
    assert "not valid JSON" in one_line_error(result)
    missing = cohort("study", "show", str(tmp_path / "absent.json"))
    assert missing.exit_code == 1
    assert "cannot read" in one_line_error(missing)


# --------------------------------------------------------------------------- approve


def approve_owner(world: World, *extra: str, manifest: Path | None = None) -> Result:
    return cohort(
        "study",
        "approve",
        str(manifest or world.path),
        "--workdir",
        str(world.hospital),
        "--role",
        "owner",
        *extra,
    )


def test_owner_approves_with_a_policy_once(world: World) -> None:
    result = approve_owner(world, "--policy", str(world.policy))
    assert result.exit_code == 0, result.output
    study = world.hospital / "studies" / world.manifest.study_id
    approval = json.loads((study / APPROVAL_FILE).read_text())
    assert approval["party_id"] == "hospital-1"
    assert approval["role"] == "owner"
    assert approval["contract_checked"] is False
    assert f"approved study {world.manifest.study_id}" in result.output
    assert "not checked" in result.output  # the contract: no --chain-url
    identity = Identity.load(world.hospital / "keystore" / "identity.json")
    assert approved_manifest(world.hospital, world.manifest.study_id, identity, Role.OWNER) == (
        world.manifest
    )
    again = approve_owner(world, "--policy", str(world.policy))
    assert again.exit_code == 0, again.output
    assert "already approved" in again.output
    assert json.loads((study / APPROVAL_FILE).read_text()) == approval


@pytest.mark.parametrize(
    ("policy", "changes", "field"),
    [
        ('modes = ["none"]', {}, "secure mode 'ckks'"),
        ("min-clients = 3", {}, "min_clients 2"),
        ("delta = 1e-7", {}, "dp.delta"),
        ("", {"model": "acme.models:net"}, "model 'acme.models:net'"),
    ],
)
def test_owner_policy_refuses_terms_outside_it(
    world: World, policy: str, changes: dict[str, Any], field: str
) -> None:
    lines = [
        line
        for line in POLICY.splitlines()
        if not policy or line.split(" ")[0] != policy.split(" ")[0]
    ]
    world.policy.write_text("\n".join([*lines, policy]) + "\n")
    manifest = world.resign("changed.json", **changes) if changes else world.path
    result = approve_owner(world, "--policy", str(world.policy), manifest=manifest)
    assert result.exit_code == 1
    assert field in one_line_error(result)
    assert not (world.hospital / "studies").exists()


def test_owner_needs_a_readable_policy(world: World) -> None:
    missing = approve_owner(world)
    assert missing.exit_code == 2
    assert "--policy" in one_line_error(missing)
    world.policy.write_text("[policy\nepsilon-cap = 3\n")
    broken = approve_owner(world, "--policy", str(world.policy))
    assert broken.exit_code == 1
    assert "not valid TOML" in one_line_error(broken)
    world.policy.write_text("[policy]\nepsilon-cap = 3.0\nbudget = 7\n")
    unknown = approve_owner(world, "--policy", str(world.policy))
    assert unknown.exit_code == 1
    assert "unknown key 'budget'" in one_line_error(unknown)
    world.policy.write_text("[limits]\nepsilon-cap = 3.0\n")
    untabled = approve_owner(world, "--policy", str(world.policy))
    assert untabled.exit_code == 1
    assert "no [policy] table" in one_line_error(untabled)


def test_a_party_outside_the_roster_cannot_approve(world: World, tmp_path: Path) -> None:
    outsider = tmp_path / "hospital-9"
    assert new_owner(outsider, "hospital-9").exit_code == 0
    result = cohort(
        "study",
        "approve",
        str(world.path),
        "--workdir",
        str(outsider),
        "--role",
        "owner",
        "--policy",
        str(world.policy),
    )
    assert result.exit_code == 1
    assert "'hospital-9' is not listed as owner" in one_line_error(result)
    # Same id, other keys: refused too.
    impostor = tmp_path / "impostor"
    assert new_owner(impostor, "hospital-2").exit_code == 0
    result = cohort(
        "study",
        "approve",
        str(world.path),
        "--workdir",
        str(impostor),
        "--role",
        "owner",
        "--policy",
        str(world.policy),
    )
    assert result.exit_code == 1
    assert "not this party's keys" in one_line_error(result)
    assert not (outsider / "studies").exists()
    assert not (impostor / "studies").exists()


def test_approve_without_an_identity_creates_none(world: World, tmp_path: Path) -> None:
    empty = tmp_path / "new-site"
    result = cohort(
        "study",
        "approve",
        str(world.path),
        "--workdir",
        str(empty),
        "--role",
        "owner",
        "--policy",
        str(world.policy),
    )
    assert result.exit_code == 1
    assert f"no identity in {empty}: run cohort keys new" in one_line_error(result)
    assert not empty.exists()


def test_approve_refuses_a_tampered_manifest_and_a_bad_role(world: World) -> None:
    document = json.loads(world.path.read_text())
    document["manifest"]["min_clients"] = 3  # valid terms, no longer the sponsor's
    world.path.write_text(json.dumps(document))
    result = approve_owner(world, "--policy", str(world.policy))
    assert result.exit_code == 1
    assert "sponsor signature" in one_line_error(result)
    bad = cohort("study", "approve", str(world.path), "--workdir", "x", "--role", "sponsor")
    assert bad.exit_code == 2
    assert "--role must be one of: owner, member" in one_line_error(bad)


def test_committee_member_approves_with_the_keys_cohort_member_made(
    world: World, tmp_path: Path
) -> None:
    workdir = tmp_path / "member-2"
    exported = tmp_path / "member-2.json"
    made = cohort(
        "member",
        "--workdir",
        str(workdir),
        "--endpoint",
        "member-2.example.org:50051",
        "--export-identity",
        str(exported),
    )
    assert made.exit_code == 0, made.output
    entry = json.loads(exported.read_text())
    committee = list(world.manifest.committee)
    committee[1] = CommitteeEntry(
        member_id=entry["member_id"],
        sign_key=bytes.fromhex(entry["sign_key"]),
        box_key=bytes.fromhex(entry["box_key"]),
        eth_address=entry["eth_address"],
        endpoint=entry["endpoint"],
        tls_fingerprint=bytes.fromhex(entry["tls_fingerprint"]),
    )
    manifest = world.resign("with-member.json", committee=tuple(committee))
    result = cohort(
        "study", "approve", str(manifest), "--workdir", str(workdir), "--role", "member"
    )
    assert result.exit_code == 0, result.output
    assert "as member member-2" in result.output
    keys = MemberKeys.load(workdir / "keys")
    study_id = SignedManifest.load(manifest).study_id
    assert approved_manifest(workdir, study_id, keys.identity, Role.MEMBER)
    assert (workdir / "studies" / study_id / MANIFEST_FILE).is_file()
    # The original manifest lists other keys under member-2.
    other = cohort(
        "study", "approve", str(world.path), "--workdir", str(workdir), "--role", "member"
    )
    assert other.exit_code == 1
    assert "not this party's keys" in one_line_error(other)
    with_policy = cohort(
        "study", "approve", str(manifest), "--workdir", str(workdir), "--role", "member",
        "--policy", str(world.policy),
    )  # fmt: skip
    assert with_policy.exit_code == 2
    assert "--role owner only" in one_line_error(with_policy)
    nobody = cohort(
        "study", "approve", str(manifest), "--workdir", str(tmp_path), "--role", "member"
    )
    assert nobody.exit_code == 1
    assert "no member keys in" in one_line_error(nobody)


def test_the_entry_point_reports_usage_mistakes_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "approve", "manifest.json", "--role", "owner"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "error: Missing option '--workdir'. (see: cohort study approve --help)"
    )


# --------------------------------------------------------------------------- chain


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def anvil_url() -> Iterator[str]:
    with running_anvil() as url:
        yield url


def test_approve_with_chain_url_checks_the_contract_binding(
    world: World, anvil_url: str, tmp_path: Path
) -> None:
    from cohort.bounties.chain import RpcChain
    from cohort.bounties.study import StudyContract, predict_address

    key = bytes(Account.create().key)
    sponsor = Account.from_key(key).address
    provider = RpcChain(anvil_url, private_keys=[key])
    provider.web3.provider.make_request(
        RPCEndpoint("anvil_setBalance"), [sponsor, hex(100 * 10**18)]
    )
    manifest = dataclasses.replace(
        world.manifest,
        nonce=new_nonce(),
        chain_id=provider.chain_id,
        sponsor_address=sponsor,
        contract=predict_address(provider, sponsor),
        deadline=provider.latest_timestamp() + 86_400,
    )
    StudyContract.deploy(
        provider,
        sponsor=sponsor,
        study_id=manifest.digest(),
        committee=[m.eth_address for m in manifest.committee],
        quorum=manifest.quorum,
        data_owners=[o.payout_address for o in manifest.owners],
        bounty_wei=manifest.bounty_wei,
        manifest_hash=manifest.digest(),
        rounds=manifest.rounds,
        deadline=manifest.deadline,
        expected_address=manifest.contract,
    )
    bound = tmp_path / "bound.json"
    SignedManifest.sign(manifest, world.sponsor).save(bound)
    # Other terms naming the same contract: the chain holds another manifest hash.
    other = world.resign(
        "other.json",
        chain_id=manifest.chain_id,
        contract=manifest.contract,
        deadline=manifest.deadline,
    )
    refused = approve_owner(
        world, "--policy", str(world.policy), "--chain-url", anvil_url, manifest=other
    )
    assert refused.exit_code == 1
    assert "manifest_hash" in one_line_error(refused)
    ok = approve_owner(
        world, "--policy", str(world.policy), "--chain-url", anvil_url, manifest=bound
    )
    assert ok.exit_code == 0, ok.output
    assert "not checked" not in ok.output
    assert "is bound to this manifest" in ok.output
    approval = world.hospital / "studies" / manifest.study_id / APPROVAL_FILE
    assert json.loads(approval.read_text())["contract_checked"] is True
    nowhere = approve_owner(
        world, "--policy", str(world.policy), "--chain-url", f"http://127.0.0.1:{free_ports(1)[0]}"
    )
    assert nowhere.exit_code == 1
    assert "no Ethereum JSON-RPC node answers" in one_line_error(nowhere)


def test_the_hospital_guide_policy_and_refusals_are_the_real_ones(world: World) -> None:
    guide = (ROOT / "docs/guides/hospital.md").read_text()
    policy = guide.split("```toml\n", 1)[1].split("```", 1)[0]
    world.policy.write_text(policy)
    refused = approve_owner(world, "--policy", str(world.policy))
    assert refused.exit_code == 1
    reason = one_line_error(refused).split(": ", 2)[-1]
    assert reason in " ".join(guide.split())  # the guide quotes this refusal word for word
    accepted = approve_owner(
        world, "--policy", str(world.policy), manifest=world.resign("three.json", min_clients=3)
    )
    assert accepted.exit_code == 0, accepted.output
    assert "cohort study approve manifest.json --workdir /srv/cohort --role owner" in guide
    assert "cohort keys new --role owner --dir /srv/cohort --party-id hospital-1" in guide
