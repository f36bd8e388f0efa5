"""``cohort keys new/show/check`` for every role of a real deployment: real scrypt keystores
(eth_account), real P-384 SuperNode keys checked with Flower's own loaders, file modes, the
password rules, and that no secret ever reaches an output."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from typer.testing import CliRunner

from cohort.aggregator.__main__ import main as member_main
from cohort.aggregator.keys import MemberKeys, load_member_identity
from cohort.crypto.eth_keystore import SCRYPT_N, eth_keystore_address, unlock_eth_keystore
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError
from cohort.federation.cli import app
from cohort.federation.keyfiles import (
    KeyRole,
    SponsorKeys,
    eth_keystore_path,
    load_owner_entry,
    supernode_key_paths,
)
from cohort.federation.keystore import KeyStore
from cohort.federation.manifest import OwnerEntry

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple 42"


def cohort(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def one_line_error(result: Result) -> str:
    """The command refused with exactly one line and no traceback; returns that line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


@dataclass
class Parties:
    """One owner, one member and one sponsor made by ``cohort keys new``, and every output
    the tests saw (checked for secrets at the end)."""

    root: Path
    password_file: Path
    owner: Path
    member: Path
    sponsor: Path
    created: dict[str, Result]
    outputs: list[str] = field(default_factory=list)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = cohort(*args, env=env)
        self.outputs.append(result.output)
        return result


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    root = tmp_path_factory.mktemp("keys")
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    owner, member, sponsor = root / "hospital-1", root / "m1", root / "sponsor"
    created = {
        "owner": cohort(
            "keys", "new", "--role", "owner", "--dir", str(owner), "--party-id", "hospital-1",
            "--password-file", str(password_file),
        ),
        "member": cohort(
            "keys", "new", "--role", "member", "--dir", str(member),
            "--password-file", str(password_file),
        ),
        "sponsor": cohort(
            "keys", "new", "--role", "sponsor", "--dir", str(sponsor),
            "--password-file", str(password_file),
        ),
    }  # fmt: skip
    for result in created.values():
        assert result.exit_code == 0, result.output
    return Parties(root, password_file, owner, member, sponsor, created)


def _secrets(parties: Parties) -> list[str]:
    """Every secret the three parties hold, in the text forms a leak could take."""
    found = [PASSWORD]
    identities = [
        parties.owner / "keystore" / "identity.json",
        parties.member / "keys" / "identity.json",
        parties.sponsor / "sponsor.json",
        parties.sponsor / "coordinator.json",
    ]
    for path in identities:
        record = json.loads(path.read_text())
        found += [record["sign_seed"], record["box_secret"]]
    for role, directory in (
        (KeyRole.OWNER, parties.owner),
        (KeyRole.MEMBER, parties.member),
        (KeyRole.SPONSOR, parties.sponsor),
    ):
        key = unlock_eth_keystore(eth_keystore_path(directory, role), PASSWORD)
        found += [key.hex(), key.hex().upper()]
    private_path, public_path = supernode_key_paths(parties.owner)
    private = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    scalar = private.private_numbers().private_value
    found += [f"{scalar:x}", str(scalar)]
    # The OpenSSH body also holds the public key; its lines must not be printed either,
    # except where they coincide with the published public key.
    public = public_path.read_text()
    body = private_path.read_text().splitlines()[1:-1]
    found += [line for line in body if line not in public]
    return found


# --------------------------------------------------------------------------- layouts


def test_every_key_file_is_0600_and_every_folder_0700(parties: Parties) -> None:
    expected = {
        parties.owner: {
            "keystore/identity.json",
            "keystore/eth-keystore.json",
            "keystore/supernode-auth",
            "keystore/supernode-auth.pub",
            "owner-entry.json",
        },
        parties.member: {"keys/identity.json", "keys/eth-keystore.json"},
        parties.sponsor: {"sponsor.json", "coordinator.json", "eth-keystore.json"},
    }
    for directory, names in expected.items():
        files = {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}
        assert files == names
        for path in [directory, *directory.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_the_owner_entry_round_trips_into_an_owner_entry(parties: Parties) -> None:
    printed = json.loads(parties.created["owner"].stdout)
    shown = parties.run("keys", "show", "--dir", str(parties.owner), "--json")
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record == printed == json.loads((parties.owner / "owner-entry.json").read_text())
    assert set(record) == {"party_id", "sign_key", "box_key", "payout_address"}
    entry = OwnerEntry(
        party_id=record["party_id"],
        sign_key=bytes.fromhex(record["sign_key"]),
        box_key=bytes.fromhex(record["box_key"]),
        payout_address=record["payout_address"],
    )
    assert entry == load_owner_entry(parties.owner)
    identity = Identity.load(parties.owner / "keystore" / "identity.json")
    assert entry.identity == identity.public
    # The code paths a hospital runs read the same keys, and the encrypted form, unlocked:
    store = KeyStore(parties.owner / "keystore", "hospital-1")
    assert store.identity().public == entry.identity
    assert store.payout_address() == entry.payout_address
    key = store.unlock_payout_key(PASSWORD)
    assert Account.from_key(key).address == entry.payout_address
    assert not (parties.owner / "keystore" / "eth.json").exists()  # nothing plain was made


def test_show_prints_keys_addresses_and_the_supernode_key(parties: Parties) -> None:
    owner = parties.run("keys", "show", "--dir", str(parties.owner))
    assert owner.exit_code == 0, owner.output
    pub = supernode_key_paths(parties.owner)[1].read_text().strip()
    entry = json.loads(parties.created["owner"].stdout)
    for value in (entry["payout_address"], entry["sign_key"], entry["box_key"], pub):
        assert value in owner.stdout
    assert pub.startswith("ecdsa-sha2-nistp384 ")
    member = parties.run("keys", "show", "--dir", str(parties.member))
    assert member.exit_code == 0, member.output
    assert json.loads(parties.created["member"].stdout)["eth_address"] in member.stdout
    sponsor = parties.run("keys", "show", "--dir", str(parties.sponsor))
    assert sponsor.exit_code == 0, sponsor.output
    assert json.loads(parties.created["sponsor"].stdout)["sponsor_address"] in sponsor.stdout


# --------------------------------------------------------------------------- eth keystores


def test_each_keystore_is_scrypt_and_unlocks_with_the_right_password_only(
    parties: Parties,
) -> None:
    addresses = {
        KeyRole.OWNER: json.loads(parties.created["owner"].stdout)["payout_address"],
        KeyRole.MEMBER: json.loads(parties.created["member"].stdout)["eth_address"],
        KeyRole.SPONSOR: json.loads(parties.created["sponsor"].stdout)["sponsor_address"],
    }
    for role, directory in (
        (KeyRole.OWNER, parties.owner),
        (KeyRole.MEMBER, parties.member),
        (KeyRole.SPONSOR, parties.sponsor),
    ):
        path = eth_keystore_path(directory, role)
        document = json.loads(path.read_text())
        assert document["version"] == 3
        assert document["crypto"]["kdf"] == "scrypt"
        assert document["crypto"]["kdfparams"]["n"] == SCRYPT_N == 2**18
        assert eth_keystore_address(path) == addresses[role]  # no password needed
        key = bytes(Account.decrypt(document, PASSWORD))  # any wallet opens it
        assert unlock_eth_keystore(path, PASSWORD) == key
        assert Account.from_key(key).address == addresses[role]
        if role is KeyRole.OWNER:  # one wrong try is enough (each costs a scrypt)
            with pytest.raises(BadInputError, match="wrong password") as refused:
                unlock_eth_keystore(path, PASSWORD + "!")
            assert "\n" not in str(refused.value)


def test_keys_check_accepts_the_password_and_refuses_a_wrong_one_in_one_line(
    parties: Parties,
) -> None:
    ok = parties.run(
        "keys", "check", "--dir", str(parties.owner), "--password-file", str(parties.password_file)
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(parties.created["owner"].stdout)["payout_address"] in ok.stdout
    wrong = parties.root / "wrong-password"
    wrong.write_text("Tr0ub4dor&3\n")
    refused = parties.run(
        "keys", "check", "--dir", str(parties.sponsor), "--password-file", str(wrong)
    )
    assert refused.exit_code == 1
    assert "wrong password" in one_line_error(refused)
    by_env = parties.run(
        "keys", "check", "--dir", str(parties.member), env={"COHORT_KEYSTORE_PASSWORD": PASSWORD}
    )
    assert by_env.exit_code == 0, by_env.output


def test_an_altered_address_is_caught_when_unlocking(tmp_path: Path, parties: Parties) -> None:
    path = eth_keystore_path(parties.sponsor, KeyRole.SPONSOR)
    document = json.loads(path.read_text())
    document["address"] = Account.create().address[2:].lower()
    forged = tmp_path / "eth-keystore.json"
    forged.write_text(json.dumps(document))
    forged.chmod(0o600)
    with pytest.raises(Exception, match="does not match the file's address"):
        unlock_eth_keystore(forged, PASSWORD)
    forged.chmod(0o644)
    with pytest.raises(BadInputError, match="chmod 600"):
        eth_keystore_address(forged)


# --------------------------------------------------------------------------- SuperNode key


def test_the_supernode_key_is_p384_openssh_and_flower_loads_it(parties: Parties) -> None:
    private_path, public_path = supernode_key_paths(parties.owner)
    private = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    public = serialization.load_ssh_public_key(public_path.read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == private.public_key().public_numbers()

    # Flower 1.42's own loaders: `flwr supernode register PUBKEY` and
    # `flower-supernode --auth-supernode-private-key FILE`.
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    registered = try_load_public_key(public_path)
    pair = _try_setup_client_authentication(
        argparse.Namespace(
            auth_supernode_private_key=str(private_path), auth_supernode_public_key=None
        )
    )
    assert pair is not None
    assert public_key_to_bytes(pair[1]) == registered


# --------------------------------------------------------------------------- member


def test_the_member_key_store_needs_the_password_to_serve_only(
    parties: Parties, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_dir = parties.member / "keys"
    entry = json.loads(parties.created["member"].stdout)
    shown = parties.run("keys", "show", "--dir", str(parties.member), "--json")
    assert json.loads(shown.stdout) == entry
    assert entry["member_id"] == "m1"  # the directory's name by default
    public = load_member_identity(keys_dir)  # no password
    assert public.eth_address == entry["eth_address"]
    with pytest.raises(BadInputError, match="COHORT_KEYSTORE_PASSWORD"):
        MemberKeys.load(keys_dir)
    with pytest.raises(BadInputError, match="wrong password"):
        MemberKeys.load(keys_dir, password="not it")
    keys = MemberKeys.load(keys_dir, password=PASSWORD)
    assert keys.eth_address == entry["eth_address"]
    assert keys.identity.public == public.identity.public

    # --export-identity needs no password; serving without one, or with a wrong one, stops
    # at start with one line.
    exported = tmp_path / "m1.json"
    env_before = os.environ.pop("COHORT_KEYSTORE_PASSWORD", None)
    try:
        assert (
            member_main(["--workdir", str(parties.member), "--export-identity", str(exported)]) == 0
        )
        assert json.loads(exported.read_text()) == entry
        capsys.readouterr()
        assert member_main(["--workdir", str(parties.member), "--insecure"]) == 2
        assert "no keystore password" in capsys.readouterr().err
        wrong = tmp_path / "wrong"
        wrong.write_text("nope")
        assert (
            member_main(
                ["--workdir", str(parties.member), "--insecure", "--password-file", str(wrong)]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "wrong password" in err
        assert len(err.strip().splitlines()) == 1
        assert "nope" not in err
    finally:
        if env_before is not None:
            os.environ["COHORT_KEYSTORE_PASSWORD"] = env_before


# --------------------------------------------------------------------------- sponsor


def test_the_sponsor_keys_load_as_two_identities_and_an_encrypted_account(
    parties: Parties,
) -> None:
    printed = json.loads(parties.created["sponsor"].stdout)
    sponsor, coordinator = SponsorKeys.load(parties.sponsor)
    assert sponsor.public.sign_key.hex() == printed["sponsor_key"]
    assert coordinator.public.sign_key.hex() == printed["coordinator_key"]
    assert sponsor.public != coordinator.public
    assert SponsorKeys.public(parties.sponsor).to_dict() == printed
    shown = parties.run("keys", "show", "--dir", str(parties.sponsor), "--json")
    assert json.loads(shown.stdout) == printed
    key = unlock_eth_keystore(eth_keystore_path(parties.sponsor, KeyRole.SPONSOR), PASSWORD)
    assert Account.from_key(key).address == printed["sponsor_address"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--role", "owner", "--party-id", "h"], {}, 2, "no keystore password"),
        (["--role", "owner", "--party-id", "h"], {"COHORT_KEYSTORE_PASSWORD": ""}, 2, "is empty"),
        (["--role", "sponsor", "--password-file", "EMPTY"], {}, 2, "is empty"),
        (["--role", "sponsor", "--password-file", "MISSING"], {}, 2, "cannot read"),
        (["--role", "owner"], {"COHORT_KEYSTORE_PASSWORD": "x"}, 2, "--party-id ID is required"),
        (["--role", "sponsor", "--party-id", "s"], {"COHORT_KEYSTORE_PASSWORD": "x"}, 2, "applies"),
        (["--role", "auditor"], {"COHORT_KEYSTORE_PASSWORD": "x"}, 2, "--role must be one of"),
        (["--role", "member", "--party-id", ""], {"COHORT_KEYSTORE_PASSWORD": "x"}, 2, "non-empty"),
    ],
)
def test_keys_new_refuses_bad_input_in_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    (tmp_path / "EMPTY").write_text("\n")
    directory = tmp_path / "site"
    argv = [a.replace("EMPTY", str(tmp_path / "EMPTY")) for a in args]
    argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
    environment: dict[str, str | None] = {"COHORT_KEYSTORE_PASSWORD": None, **env}  # None: unset
    result = runner.invoke(app, ["keys", "new", "--dir", str(directory), *argv], env=environment)
    assert result.exit_code == code, result.output
    assert message in one_line_error(result)
    assert not directory.exists()


def test_keys_new_never_replaces_keys(parties: Parties) -> None:
    before = {p: p.read_bytes() for p in parties.owner.rglob("*") if p.is_file()}
    for role, directory, extra in (
        ("owner", parties.owner, ["--party-id", "hospital-1"]),
        ("member", parties.member, []),
        ("sponsor", parties.sponsor, []),
    ):
        again = parties.run(
            "keys", "new", "--role", role, "--dir", str(directory), *extra,
            "--password-file", str(parties.password_file),
        )  # fmt: skip
        assert again.exit_code == 1
        assert "already exists" in one_line_error(again)
    assert {p: p.read_bytes() for p in parties.owner.rglob("*") if p.is_file()} == before


def test_the_password_is_never_a_command_line_argument() -> None:
    result = cohort("keys", "new", "--role", "sponsor", "--dir", "x", "--password", "hunter2")
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert "hunter2" not in result.output


def test_show_and_check_refuse_what_they_cannot_read(tmp_path: Path, parties: Parties) -> None:
    empty = parties.run("keys", "show", "--dir", str(tmp_path / "nothing"))
    assert empty.exit_code == 1
    assert "no keys in" in one_line_error(empty)
    assert not (tmp_path / "nothing").exists()
    both = tmp_path / "both"
    MemberKeys.generate("m9").save(both / "keys")
    KeyStore(both / "keystore", "h9").identity()
    KeyStore(both / "keystore", "h9").payout_address()
    ambiguous = parties.run("keys", "show", "--dir", str(both))
    assert ambiguous.exit_code == 1
    assert "several roles" in one_line_error(ambiguous)
    assert parties.run("keys", "show", "--dir", str(both), "--role", "member").exit_code == 0
    # A plain (simulated) key store has no keystore to check and no SuperNode key.
    plain = parties.run(
        "keys", "check", "--dir", str(both), "--role", "owner",
        "--password-file", str(parties.password_file),
    )  # fmt: skip
    assert plain.exit_code == 1
    assert "no encrypted Ethereum keystore" in one_line_error(plain)
    shown = parties.run("keys", "show", "--dir", str(both), "--role", "owner")
    assert shown.exit_code == 0, shown.output
    assert "supernode key" in shown.stdout


def test_simulated_parties_keep_plain_fast_key_files(tmp_path: Path) -> None:
    """The documented choice: only `cohort keys new` pays for scrypt."""
    started = time.perf_counter()
    store = KeyStore(tmp_path / "h" / "keystore", "hospital-1")
    store.identity()
    address = store.payout_address()
    MemberKeys.generate("m1").save(tmp_path / "m" / "keys")
    assert time.perf_counter() - started < 0.3
    assert (tmp_path / "h" / "keystore" / "eth.json").exists()
    assert Account.from_key(store.unlock_payout_key(None)).address == address
    assert MemberKeys.load(tmp_path / "m" / "keys").eth_address == (
        load_member_identity(tmp_path / "m" / "keys").eth_address
    )


# --------------------------------------------------------------------------- guides


def _guide_commands(name: str, prefix: str) -> list[list[str]]:
    """The ``prefix ...`` commands of a guide's bash blocks, continuation lines joined."""
    text = (ROOT / "docs" / "guides" / name).read_text()
    commands = []
    for block in text.split("```bash\n")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        for line in body.splitlines():
            words = shlex.split(line.strip())
            if words[: len(prefix.split())] == prefix.split():
                commands.append(words[1:])
    return commands


def test_the_guides_key_commands_are_the_real_ones(tmp_path: Path) -> None:
    secrets = tmp_path / "etc"
    secrets.mkdir()
    ran = 0
    for guide in ("hospital.md", "committee.md", "sponsor.md"):
        for words in _guide_commands(guide, "cohort keys new"):
            if ">" in words:
                words = words[: words.index(">")]
            argv = [
                w.replace("/srv/", f"{tmp_path}/srv/").replace("/etc/cohort/", f"{secrets}/")
                for w in words
            ]
            password = Path(argv[argv.index("--password-file") + 1])
            password.write_text(PASSWORD)
            result = cohort(*argv)
            assert result.exit_code == 0, (guide, result.output)
            ran += 1
    assert ran == 3


# --------------------------------------------------------------------------- secrets


def test_no_secret_appears_in_any_output(parties: Parties) -> None:
    """The creations, show, show --json and check (right and wrong password) of every role,
    and every other output the tests of this module saw before."""
    wrong = parties.root / "not-the-password"
    wrong.write_text("not the password")
    for directory in (parties.owner, parties.member, parties.sponsor):
        parties.run("keys", "show", "--dir", str(directory))
        parties.run("keys", "show", "--dir", str(directory), "--json")
        for password_file in (parties.password_file, wrong):
            parties.run(
                "keys", "check", "--dir", str(directory), "--password-file", str(password_file)
            )
    outputs = [*parties.outputs, *(r.output for r in parties.created.values())]
    secrets = _secrets(parties)
    for output in outputs:
        for secret in secrets:
            assert secret not in output
