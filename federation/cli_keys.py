"""``cohort keys``: every party's keys for a real deployment (layouts: federation/keyfiles.py).

* ``cohort keys new --role {owner,member,sponsor} --dir DIR [--party-id ID]
  [--password-file FILE]`` - once per party: identity, encrypted Ethereum keystore and, for a
  hospital, its Flower SuperNode authentication key pair. Prints the public entry (JSON) on
  stdout.
* ``cohort keys show --dir DIR [--role ROLE] [--json]`` - the public keys and addresses;
  never needs the password.
* ``cohort keys check --dir DIR [--role ROLE] [--password-file FILE]`` - that the password
  unlocks the Ethereum keystore (before a study needs it).

The password comes from ``--password-file`` or ``$COHORT_KEYSTORE_PASSWORD``, never from
the command line. No secret is ever printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cohort.errors import CohortError
from cohort.federation.cli_common import console, err_console
from cohort.federation.cli_common import fail as _fail
from cohort.federation.cli_common import heading as _heading
from cohort.federation.cli_common import line as _line

if TYPE_CHECKING:
    from cohort.federation.keyfiles import KeyRole

_ROLES = "owner (a hospital), member (a committee member) or sponsor"

keys_app = typer.Typer(
    help="Keys of a real deployment: a hospital's (owner), a committee member's or the "
    "sponsor's. Ethereum keys are encrypted under your password (--password-file FILE or "
    "$COHORT_KEYSTORE_PASSWORD).",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        help="The key directory: a hospital's or member's work directory, or the sponsor's "
        "key folder.",
    ),
]
PasswordFileOption = Annotated[
    Path | None,
    typer.Option(
        metavar="FILE",
        help="File holding the keystore password (default: $COHORT_KEYSTORE_PASSWORD; never "
        "give the password itself on the command line).",
    ),
]


def _role(value: str) -> KeyRole:
    from cohort.federation.keyfiles import KeyRole

    try:
        return KeyRole(value.lower())
    except ValueError:
        _fail(
            f"--role must be one of: {', '.join(r.value for r in KeyRole)}; got {value!r}", code=2
        )


def _password(password_file: Path | None) -> str:
    from cohort.federation.keyfiles import read_password

    try:
        return read_password(password_file)
    except CohortError as exc:
        _fail(str(exc), code=2)


def _found_role(directory: Path, role: str | None) -> KeyRole:
    """The role given, else the one whose keys ``directory`` holds."""
    from cohort.federation.keyfiles import detect_roles

    if role is not None:
        return _role(role)
    found = detect_roles(directory)
    if not found:
        _fail(f"no keys in {directory}: run cohort keys new --role ROLE --dir {directory}")
    if len(found) > 1:
        _fail(f"{directory} holds keys of several roles ({', '.join(found)}): pass --role")
    return found[0]


def _public(directory: Path, role: KeyRole) -> dict[str, Any]:
    """The role's public entry as JSON-ready data; one line and exit 1 if unreadable."""
    from cohort.federation.keyfiles import (
        KeyRole,
        SponsorKeys,
        load_owner_entry,
        member_entry,
        owner_entry_dict,
    )

    try:
        if role is KeyRole.OWNER:
            return dict(owner_entry_dict(load_owner_entry(directory)))
        if role is KeyRole.MEMBER:
            return member_entry(directory)
        return dict(SponsorKeys.public(directory).to_dict())
    except CohortError as exc:
        _fail(str(exc))


def _fingerprints(record: dict[str, Any]) -> dict[str, str]:
    """Key fingerprints (16 hex digits) to read out when another party checks the keys."""
    from cohort.crypto.identity import PublicIdentity

    if "sponsor_key" in record:
        # As ``cohort study show`` prints them: the signing key stands in for the box key.
        fingerprints = {}
        for name in ("sponsor", "coordinator"):
            key = bytes.fromhex(record[f"{name}_key"])
            fingerprints[name] = PublicIdentity(name, key, key).fingerprint()
        return fingerprints
    party = record.get("party_id") or record["member_id"]
    identity = PublicIdentity(
        party, bytes.fromhex(record["sign_key"]), bytes.fromhex(record["box_key"])
    )
    return {party: identity.fingerprint()}


def _supernode_key(directory: Path) -> str | None:
    from cohort.federation.keyfiles import supernode_key_paths, supernode_public_key

    if not supernode_key_paths(directory)[1].exists():
        return None
    try:
        return supernode_public_key(directory)
    except CohortError as exc:
        _fail(str(exc))


_NEXT = {
    "owner": "send this entry (also in {dir}/owner-entry.json) to the sponsor for the owner "
    "roster, and {pub} to the SuperLink operator (flwr supernode register)",
    "member": "send this entry to the sponsor; cohort member --workdir {dir} --export-identity "
    "FILE --endpoint HOST:PORT --tls-cert CERT --tls-key KEY adds your endpoint and TLS pin",
    "sponsor": "these keys go into the manifest (sponsor_key, coordinator_key, "
    "sponsor_address); fund {address} before deploying the study contract",
}


@keys_app.command("new")
def keys_new(
    role: Annotated[str, typer.Option(help=f"Whose keys: {_ROLES}.")],
    directory: DirOption,
    party_id: Annotated[
        str | None,
        typer.Option(
            help="Your id in studies: required for an owner (e.g. hospital-1); a member's "
            "defaults to the directory's name; not used by a sponsor."
        ),
    ] = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Create your keys once; print your public entry (JSON) for the sponsor.

    owner: DIR/keystore/ (identity.json, eth-keystore.json, supernode-auth[.pub]) and
    DIR/owner-entry.json. member: DIR/keys/ (identity.json, eth-keystore.json). sponsor:
    DIR/sponsor.json, DIR/coordinator.json, DIR/eth-keystore.json. Files mode 0600,
    directories 0700; an existing key is never replaced.
    """
    from cohort.crypto.identity import check_party_id
    from cohort.federation.keyfiles import (
        KeyRole,
        create_member_keys,
        create_owner_keys,
        create_sponsor_keys,
        eth_keystore_path,
        owner_entry_dict,
        supernode_key_paths,
    )

    kind = _role(role)
    party = party_id or ""
    if kind is KeyRole.SPONSOR and party_id is not None:
        _fail("--party-id applies to --role owner and --role member only", code=2)
    if kind is KeyRole.OWNER and party_id is None:
        _fail("--party-id ID is required with --role owner (your id in studies)", code=2)
    if kind is KeyRole.MEMBER and party_id is None:
        party = directory.resolve().name
    if kind is not KeyRole.SPONSOR:
        try:
            check_party_id(party, "--party-id")
        except CohortError as exc:
            _fail(str(exc), code=2)
    if directory.exists() and not directory.is_dir():
        _fail(f"--dir {directory}: exists and is not a directory", code=2)
    password = _password(password_file)
    record: dict[str, Any]
    try:
        if kind is KeyRole.OWNER:
            entry = create_owner_keys(directory, party_id=party, password=password)
            record = dict(owner_entry_dict(entry))
        elif kind is KeyRole.MEMBER:
            record = create_member_keys(directory, member_id=party, password=password)
        else:
            record = dict(create_sponsor_keys(directory, password=password).to_dict())
    except CohortError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"--dir {directory}: cannot write the keys ({exc.strerror})")
    console.print_json(json.dumps(record))
    keystore = eth_keystore_path(directory, kind)
    err_console.print(
        f"created {kind.value} keys in {directory} (files 0600, folders 0700); Ethereum keystore "
        f"{keystore} is encrypted: keep its password apart from it"
    )
    for name, fingerprint in _fingerprints(record).items():
        err_console.print(f"key fingerprint of {name}: {fingerprint} (read it out when checked)")
    err_console.print(
        _NEXT[kind.value].format(
            dir=directory,
            pub=supernode_key_paths(directory)[1],
            address=record.get("sponsor_address", ""),
        )
    )


@keys_app.command("show")
def keys_show(
    directory: DirOption,
    role: Annotated[
        str | None,
        typer.Option(help=f"Whose keys ({_ROLES}); default: the one the directory holds."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the public entry as JSON: the owner roster entry, the member's "
            "committee entry or the sponsor's keys.",
        ),
    ] = False,
) -> None:
    """Print your public keys and addresses (no password needed; no secret is shown)."""
    from cohort.federation.keyfiles import KeyRole, supernode_key_paths

    kind = _found_role(directory, role)
    record = _public(directory, kind)
    if as_json:
        console.print_json(json.dumps(record))
        return
    _heading(f"{kind.value} keys in {directory}")
    for name, value in record.items():
        _line(name, str(value) if value != "" else "-", width=16)
    for name, fingerprint in _fingerprints(record).items():
        _line("fingerprint", f"{fingerprint} ({name})", width=16)
    if kind is KeyRole.OWNER:
        supernode = _supernode_key(directory)
        private, public = supernode_key_paths(directory)
        if supernode is None:
            _line("supernode key", "none (this key store was not made by cohort keys new)")
        else:
            _line("supernode key", supernode, width=16)
            _line("", f"{public} (register it: flwr supernode register {public})", width=16)
            _line("", f"{private} (flower-supernode --auth-supernode-private-key)", width=16)


@keys_app.command("check")
def keys_check(
    directory: DirOption,
    role: Annotated[
        str | None,
        typer.Option(help=f"Whose keys ({_ROLES}); default: the one the directory holds."),
    ] = None,
    password_file: PasswordFileOption = None,
) -> None:
    """Check that your password unlocks your Ethereum keystore; prints its address."""
    from eth_account import Account

    from cohort.federation.keyfiles import eth_keystore_path, unlock_eth_keystore

    kind = _found_role(directory, role)
    path = eth_keystore_path(directory, kind)
    if not path.is_file():
        _fail(f"no encrypted Ethereum keystore at {path} (keys made by cohort keys new have one)")
    password = _password(password_file)
    try:
        address = str(Account.from_key(unlock_eth_keystore(path, password)).address)
    except CohortError as exc:
        _fail(str(exc))
    console.print(f"the password unlocks {path}: address {address}", soft_wrap=True)
