"""The study manifest: every term a data owner or committee member relies on, signed once.

The sponsor writes one :class:`Manifest` per study, signs it (:class:`SignedManifest`) and
deploys the study contract with its hash. Each operator approves it once
(:mod:`cohort.federation.approval`); afterwards a party acts only on messages that name an
approved manifest by its hash, and takes every term (mode, committee, thresholds, rounds, DP
terms, model, dealer, coordinator key, chain) from the manifest and its own local policy,
never from a coordinator's message.

Encoding: :meth:`Manifest.canonical` is JSON with sorted keys, no insignificant whitespace,
bytes as lower-case hex and floats in Python's shortest round-trip form; the study id is
``tagged_hash(Tag.MANIFEST, canonical)`` in hex. A random 256-bit ``nonce`` makes every study
distinct even when its terms repeat, so a study id is never derived from a config alone.

Imports nothing above :mod:`cohort.crypto` (committee members load it without torch).
"""

from __future__ import annotations

import enum
import functools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cohort.bounties.attestation import checksum_address
from cohort.crypto.hashing import Tag, tagged_hash
from cohort.crypto.identity import Identity, PublicIdentity, check_party_id, verify_signature
from cohort.crypto.tls import check_cert_name
from cohort.errors import BadInputError, ConfigError, VerificationError
from cohort.files import write_atomic

MANIFEST_FORMAT = "cohort-study-manifest/v1"
NONCE_SIZE = 32
FINGERPRINT_SIZE = 32
PAYOUT_RULES = ("proportional-to-included-rounds",)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.,:-]{1,64}$")


class SecureMode(enum.StrEnum):
    """How updates travel from data owners to the aggregate."""

    CKKS = "ckks"  # CKKS ciphertexts summed by the committee; data owners decrypt the sum
    NONE = "none"  # plaintext FedAvg through the coordinator, for comparison only
    MPC = "mpc"  # Shamir shares to the committee, norms checked inside MPC, sum reconstructed

    @classmethod
    def parse(cls, value: str) -> SecureMode:
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise ConfigError(f"secure mode {value!r} is not one of: {choices}") from None


def _hex32(value: object, what: str, *, size: int = 32, allow_empty: bool = False) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise BadInputError(f"manifest: {what} is not hex") from None
    else:
        raise BadInputError(f"manifest: {what} must be hex text")
    if allow_empty and not raw:
        return raw
    if len(raw) != size:
        raise BadInputError(f"manifest: {what} must be {size} bytes, got {len(raw)}")
    return raw


def _address(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"manifest: {what} must be an Ethereum address")
    return checksum_address(value, field=f"manifest: {what}")


def _int(value: object, what: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInputError(f"manifest: {what} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"manifest: {what} must be {bound}, got {value}")
    return value


def _float(value: object, what: str, *, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInputError(f"manifest: {what} must be a number")
    number = float(value)
    if not math.isfinite(number) or number <= low or (high is not None and number >= high):
        bound = f"in ({low}, {high})" if high is not None else f"> {low} and finite"
        raise ConfigError(f"manifest: {what} must be {bound}, got {value}")
    return number


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadInputError(f"manifest: {what} must be non-empty text")
    return value


@dataclass(frozen=True)
class CommitteeEntry:
    """One committee member: its keys, attestation address, endpoint and TLS pin."""

    member_id: str
    sign_key: bytes
    box_key: bytes
    eth_address: str
    endpoint: str
    tls_fingerprint: bytes = b""  # SHA-256 of the member's TLS certificate (DER); b"": no TLS

    def __post_init__(self) -> None:
        check_party_id(self.member_id, "manifest: committee member_id")
        PublicIdentity(self.member_id, self.sign_key, self.box_key)
        object.__setattr__(
            self, "eth_address", _address(self.eth_address, f"{self.member_id} eth_address")
        )
        _str(self.endpoint, f"{self.member_id} endpoint")
        _hex32(self.tls_fingerprint, f"{self.member_id} tls_fingerprint", allow_empty=True)

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity(self.member_id, self.sign_key, self.box_key)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CommitteeEntry:
        """From the JSON a member exports (``cohort member --export-identity``)."""
        return _committee_entry(data)


@dataclass(frozen=True)
class OwnerEntry:
    """One data owner of the roster: its keys and payout address."""

    party_id: str
    sign_key: bytes
    box_key: bytes
    payout_address: str

    def __post_init__(self) -> None:
        check_party_id(self.party_id, "manifest: owner party_id")
        PublicIdentity(self.party_id, self.sign_key, self.box_key)
        object.__setattr__(
            self,
            "payout_address",
            _address(self.payout_address, f"{self.party_id} payout_address"),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnerEntry:
        """From the JSON a data owner exports (``cohort keys show --json``)."""
        return _owner_entry(data)

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity(self.party_id, self.sign_key, self.box_key)


@dataclass(frozen=True)
class DpTerms:
    """The DP-SGD terms every data owner applies (each still enforces its own cap).

    ``epsilon`` is the per-owner budget for the whole study at ``delta``; the rest are the
    local training settings the noise is calibrated for.
    """

    epsilon: float
    delta: float
    local_epochs: int
    batch_size: int
    max_grad_norm: float
    lr: float

    def __post_init__(self) -> None:
        _float(self.epsilon, "dp.epsilon (per-owner budget)", low=0.0)
        _float(self.delta, "dp.delta (probability of privacy failure)", low=0.0, high=1.0)
        _int(self.local_epochs, "dp.local_epochs (passes per round)", low=1, high=1000)
        _int(self.batch_size, "dp.batch_size (expected examples per batch)", low=1)
        _float(self.max_grad_norm, "dp.max_grad_norm (clipping bound C)", low=0.0)
        _float(self.lr, "dp.lr (local learning rate)", low=0.0)


@dataclass(frozen=True)
class ClientDpTerms:
    """Client-level DP by distributed noise (optional; see docs/privacy.md, "Client-level").

    Every data owner clips its weighted update to L2 norm ``clip_norm`` (C) and adds
    Gaussian noise of standard deviation ``noise_multiplier * clip_norm / sqrt(min_clients)``
    per value, so any aggregate of at least ``min_clients`` owners carries noise of standard
    deviation at least ``noise_multiplier * clip_norm`` (the noise multiplier is sigma / C of
    the summed update, as in DP-SGD).
    """

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        _float(self.clip_norm, "client_dp.clip_norm (L2 bound C on a weighted update)", low=0.0)
        _float(
            self.noise_multiplier,
            "client_dp.noise_multiplier (noise std of the aggregate / C)",
            low=0.0,
        )

    def per_client_std(self, min_clients: int) -> float:
        """Noise std per value one owner adds: sigma * C / sqrt(min_clients)."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(min_clients)


@dataclass(frozen=True)
class MpcTerms:
    """MPC mode's terms (see docs/mpc.md): the prime field and fixed-point scale the shares
    use, the L2 bound every update must meet inside MPC to count, and where each member's
    MPC party listens for the others (``host:port``, in committee order; the first member of
    a check's participants hosts the rendezvous).
    """

    prime: int
    frac_bits: int
    norm_bound: float
    rendezvous: tuple[str, ...]

    def __post_init__(self) -> None:
        _int(self.prime, "mpc.prime (share field modulus)", low=3, high=2**31)
        _int(self.frac_bits, "mpc.frac_bits (fixed-point fraction bits)", low=0, high=24)
        _float(self.norm_bound, "mpc.norm_bound (L2 bound on a weighted update)", low=0.0)
        object.__setattr__(self, "rendezvous", tuple(self.rendezvous))
        for address in self.rendezvous:
            host, sep, port = str(address).rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"manifest: mpc.rendezvous {address!r} is not host:port")

    def endpoint(self, committee: Sequence[str], member_id: str) -> str:
        """``host:port`` of ``member_id``'s MPC party."""
        return self.rendezvous[list(committee).index(member_id)]


@dataclass(frozen=True)
class Manifest:
    """One study's terms. Written and signed by the sponsor; approved by every operator."""

    name: str
    nonce: bytes
    secure: SecureMode
    committee: tuple[CommitteeEntry, ...]
    quorum: int
    min_clients: int
    owners: tuple[OwnerEntry, ...]
    key_dealer: str
    coordinator_key: bytes
    sponsor_key: bytes
    sponsor_address: str
    rounds: int
    dp: DpTerms
    model: str
    features: int
    num_classes: int
    update_length: int
    init_seed: int
    server_lr: float
    payout_rule: str
    bounty_wei: int
    chain_id: int
    contract: str
    deadline: int
    tls_ca: str = ""  # PEM of the CA that issued the members' certificates; "": no TLS
    normalizer: Mapping[str, Any] | None = field(default=None, compare=False)
    format: str = MANIFEST_FORMAT
    #: Optional client-level DP; absent (None) is left out of the encoding entirely, so a
    #: manifest without it encodes byte for byte as before the term existed.
    client_dp: ClientDpTerms | None = None
    #: MPC mode's terms, present exactly when ``secure`` is MPC (absent: left out).
    mpc: MpcTerms | None = None

    def __post_init__(self) -> None:
        if self.format != MANIFEST_FORMAT:
            raise BadInputError(f"manifest: format must be {MANIFEST_FORMAT!r}")
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise BadInputError("manifest: name must be 1..64 characters")
        _hex32(self.nonce, "nonce", size=NONCE_SIZE)
        if not isinstance(self.secure, SecureMode):
            raise BadInputError("manifest: secure must be a SecureMode")
        object.__setattr__(self, "committee", tuple(self.committee))
        object.__setattr__(self, "owners", tuple(self.owners))
        members = [m.member_id for m in self.committee]
        if not members or len(set(members)) != len(members):
            raise ConfigError("manifest: committee must list at least one member, each once")
        k = len(members)
        _int(self.quorum, f"quorum (a strict majority of {k} members)", low=k // 2 + 1, high=k)
        owners = [o.party_id for o in self.owners]
        if len(set(owners)) != len(owners):
            raise ConfigError("manifest: owners lists a data owner twice")
        if len(owners) < 2:
            raise ConfigError("manifest: owners must list at least 2 data owners")
        _int(self.min_clients, "min_clients (smallest client set)", low=2, high=len(owners))
        if self.secure is SecureMode.CKKS and self.key_dealer not in owners:
            raise ConfigError(f"manifest: key_dealer {self.key_dealer!r} is not an owner")
        _hex32(self.coordinator_key, "coordinator_key")
        _hex32(self.sponsor_key, "sponsor_key")
        object.__setattr__(
            self, "sponsor_address", _address(self.sponsor_address, "sponsor_address")
        )
        _int(self.rounds, "rounds", low=1, high=10_000)
        if not isinstance(self.dp, DpTerms):
            raise BadInputError("manifest: dp must be DpTerms")
        if self.client_dp is not None and not isinstance(self.client_dp, ClientDpTerms):
            raise BadInputError("manifest: client_dp must be ClientDpTerms or absent")
        if self.mpc is not None and not isinstance(self.mpc, MpcTerms):
            raise BadInputError("manifest: mpc must be MpcTerms or absent")
        if (self.mpc is not None) != (self.secure is SecureMode.MPC):
            raise ConfigError("manifest: mpc terms are required in MPC mode and only there")
        if self.mpc is not None:
            if len(self.mpc.rendezvous) != k:
                raise ConfigError(
                    f"manifest: mpc.rendezvous lists {len(self.mpc.rendezvous)} endpoints for "
                    f"{k} committee members"
                )
            if k < 2:
                raise ConfigError("manifest: MPC mode needs at least 2 committee members")
        if not isinstance(self.model, str) or not _MODEL_NAME.match(self.model):
            raise BadInputError(
                "manifest: model must be a registered architecture name (letters, digits, "
                "'_.,:-', at most 64 characters)"
            )
        _int(self.features, "features", low=1)
        _int(self.num_classes, "num_classes", low=2)
        _int(self.update_length, "update_length (values per update)", low=1)
        _int(self.init_seed, "init_seed", low=0, high=2**63 - 1)
        _float(self.server_lr, "server_lr", low=0.0)
        if self.payout_rule not in PAYOUT_RULES:
            raise ConfigError(f"manifest: payout_rule must be one of {', '.join(PAYOUT_RULES)}")
        _int(self.bounty_wei, "bounty_wei", low=0)
        _int(self.chain_id, "chain_id", low=1)
        object.__setattr__(self, "contract", _address(self.contract, "contract"))
        _int(self.deadline, "deadline (unix seconds)", low=1)
        if not isinstance(self.tls_ca, str):
            raise BadInputError("manifest: tls_ca must be PEM text or empty")
        pinned = [bool(m.tls_fingerprint) for m in self.committee]
        if self.tls_ca and not all(pinned):
            raise ConfigError("manifest: with tls_ca every member needs a tls_fingerprint")
        if not self.tls_ca and any(pinned):
            raise ConfigError("manifest: tls_fingerprint given without tls_ca")
        if self.tls_ca:
            for member in members:  # the member id is the name in its TLS certificate
                check_cert_name(member, f"manifest: committee member_id {member!r}")

    # ---------------------------------------------------------------- lookups

    def owner(self, party_id: str) -> OwnerEntry | None:
        return self._owners_by_id.get(party_id)

    def member(self, member_id: str) -> CommitteeEntry | None:
        return self._members_by_id.get(member_id)

    @functools.cached_property
    def _owners_by_id(self) -> dict[str, OwnerEntry]:
        # Built once per (frozen) manifest: a lookup per owner and message stays O(1) with
        # thousands of owners. Party ids are unique (checked on construction).
        return {o.party_id: o for o in self.owners}

    @functools.cached_property
    def _members_by_id(self) -> dict[str, CommitteeEntry]:
        return {m.member_id: m for m in self.committee}

    @property
    def owner_ids(self) -> tuple[str, ...]:
        return tuple(o.party_id for o in self.owners)

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(m.member_id for m in self.committee)

    @property
    def coordinator(self) -> PublicIdentity:
        """The coordinator's signing key as an identity (its box key is unused)."""
        return PublicIdentity("coordinator", self.coordinator_key, self.coordinator_key)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca)

    # ---------------------------------------------------------------- encoding

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "committee":
                value = [_entry_dict(m) for m in self.committee]
            elif f.name == "owners":
                value = [_entry_dict(o) for o in self.owners]
            elif f.name == "dp":
                value = {g.name: getattr(self.dp, g.name) for g in fields(self.dp)}
            elif f.name in _OPTIONAL:
                if value is None:
                    continue  # optional term: absent, not null (see the field)
                value = {
                    g.name: list(v) if isinstance(v := getattr(value, g.name), tuple) else v
                    for g in fields(value)
                }
            elif f.name == "normalizer":
                value = None if value is None else dict(value)
            elif isinstance(value, bytes):
                value = value.hex()
            elif isinstance(value, SecureMode):
                value = value.value
            data[f.name] = value
        return data

    def canonical(self) -> bytes:
        """The bytes the study id and the sponsor's signature cover (see module doc)."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")

    def digest(self) -> bytes:
        return self._digest

    @functools.cached_property
    def _digest(self) -> bytes:
        # Computed once per (frozen) manifest: the canonical encoding of thousands of owners
        # is re-read by every message handler that asks for the study id.
        return tagged_hash(Tag.MANIFEST, self.canonical())

    @property
    def study_id(self) -> str:
        """The study id everyone uses: the manifest hash in hex."""
        return self.digest().hex()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse :meth:`to_dict` output strictly; BadInputError/ConfigError name the field."""
        if not isinstance(data, Mapping):
            raise BadInputError("manifest: expected a JSON object")
        names = {f.name for f in fields(cls)}
        _exact_keys(data, names - {n for n in _OPTIONAL if n not in data}, "manifest")
        dp = data["dp"]
        if not isinstance(dp, Mapping):
            raise BadInputError("manifest: dp must be an object")
        _exact_keys(dp, {f.name for f in fields(DpTerms)}, "manifest dp")
        client_dp = data.get("client_dp")
        if client_dp is not None:
            if not isinstance(client_dp, Mapping):
                raise BadInputError("manifest: client_dp must be an object")
            _exact_keys(client_dp, {f.name for f in fields(ClientDpTerms)}, "manifest client_dp")
        elif "client_dp" in data:
            raise BadInputError("manifest: client_dp must be an object or absent, not null")
        mpc = data.get("mpc")
        if mpc is not None:
            if not isinstance(mpc, Mapping):
                raise BadInputError("manifest: mpc must be an object")
            _exact_keys(mpc, {f.name for f in fields(MpcTerms)}, "manifest mpc")
            if not isinstance(mpc["rendezvous"], list):
                raise BadInputError("manifest: mpc.rendezvous must be a list")
        elif "mpc" in data:
            raise BadInputError("manifest: mpc must be an object or absent, not null")
        committee = _list(data["committee"], "committee")
        owners = _list(data["owners"], "owners")
        normalizer = data["normalizer"]
        if normalizer is not None and not isinstance(normalizer, Mapping):
            raise BadInputError("manifest: normalizer must be an object or null")
        return cls(
            name=_str(data["name"], "name"),
            nonce=_hex32(data["nonce"], "nonce"),
            secure=SecureMode.parse(_str(data["secure"], "secure")),
            committee=tuple(_committee_entry(m) for m in committee),
            quorum=data["quorum"],
            min_clients=data["min_clients"],
            owners=tuple(_owner_entry(o) for o in owners),
            key_dealer=data["key_dealer"],
            coordinator_key=_hex32(data["coordinator_key"], "coordinator_key"),
            sponsor_key=_hex32(data["sponsor_key"], "sponsor_key"),
            sponsor_address=data["sponsor_address"],
            rounds=data["rounds"],
            dp=DpTerms(**dp),
            model=data["model"],
            features=data["features"],
            num_classes=data["num_classes"],
            update_length=data["update_length"],
            init_seed=data["init_seed"],
            server_lr=data["server_lr"],
            payout_rule=data["payout_rule"],
            bounty_wei=data["bounty_wei"],
            chain_id=data["chain_id"],
            contract=data["contract"],
            deadline=data["deadline"],
            tls_ca=data["tls_ca"],
            normalizer=normalizer,
            format=data["format"],
            client_dp=None if client_dp is None else ClientDpTerms(**client_dp),
            mpc=None if mpc is None else MpcTerms(**mpc),
        )


#: Optional terms: left out of the encoding when absent, so older manifests keep their hash.
_OPTIONAL = ("client_dp", "mpc")


def new_nonce() -> bytes:
    """A fresh random 256-bit study nonce from the operating system."""
    return os.urandom(NONCE_SIZE)


def _entry_dict(entry: CommitteeEntry | OwnerEntry) -> dict[str, Any]:
    return {
        f.name: getattr(entry, f.name).hex()
        if isinstance(getattr(entry, f.name), bytes)
        else getattr(entry, f.name)
        for f in fields(entry)
    }


def _exact_keys(data: Mapping[str, Any], wanted: set[str], where: str) -> None:
    missing = sorted(wanted - set(data))
    if missing:
        raise BadInputError(f"{where}: missing field {missing[0]!r}")
    extra = sorted(set(data) - wanted)
    if extra:
        raise BadInputError(f"{where}: unknown field {extra[0]!r}")


def _list(value: object, what: str) -> Sequence[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise BadInputError(f"manifest: {what} must be a list of objects")
    return value


def _committee_entry(data: Mapping[str, Any]) -> CommitteeEntry:
    _exact_keys(data, {f.name for f in fields(CommitteeEntry)}, "manifest committee entry")
    member_id = check_party_id(data["member_id"], "manifest: committee member_id")
    return CommitteeEntry(
        member_id=member_id,
        sign_key=_hex32(data["sign_key"], f"{member_id} sign_key"),
        box_key=_hex32(data["box_key"], f"{member_id} box_key"),
        eth_address=data["eth_address"],
        endpoint=_str(data["endpoint"], f"{member_id} endpoint"),
        tls_fingerprint=_hex32(
            data["tls_fingerprint"], f"{member_id} tls_fingerprint", allow_empty=True
        ),
    )


def _owner_entry(data: Mapping[str, Any]) -> OwnerEntry:
    _exact_keys(data, {f.name for f in fields(OwnerEntry)}, "manifest owner entry")
    party_id = check_party_id(data["party_id"], "manifest: owner party_id")
    return OwnerEntry(
        party_id=party_id,
        sign_key=_hex32(data["sign_key"], f"{party_id} sign_key"),
        box_key=_hex32(data["box_key"], f"{party_id} box_key"),
        payout_address=data["payout_address"],
    )


# --------------------------------------------------------------------------- signed form


def _signature_digest(manifest_hash: bytes) -> bytes:
    return tagged_hash(Tag.MANIFEST_SIGNATURE, manifest_hash)


#: Signed manifests this process parsed and verified, by their exact bytes (oldest dropped
#: first): every data-owner message re-reads its approved manifest, whose roster holds every
#: owner, so a study's owners in one process would otherwise re-parse it per message.
_VERIFIED: dict[bytes, SignedManifest] = {}
_VERIFIED_MAX = 8


@dataclass(frozen=True)
class SignedManifest:
    """A manifest with the sponsor's Ed25519 signature over its hash."""

    manifest: Manifest
    signature: bytes

    @classmethod
    def sign(cls, manifest: Manifest, sponsor: Identity) -> SignedManifest:
        """Run by the sponsor: sign ``manifest`` (its sponsor_key must be ``sponsor``'s)."""
        if sponsor.public.sign_key != manifest.sponsor_key:
            raise ConfigError("manifest: sponsor_key is not the signing identity's key")
        return cls(manifest, sponsor.sign(_signature_digest(manifest.digest())))

    def verify(self) -> Manifest:
        """Check the sponsor's signature; VerificationError if it does not verify."""
        sponsor = PublicIdentity("sponsor", self.manifest.sponsor_key, self.manifest.sponsor_key)
        try:
            verify_signature(sponsor, _signature_digest(self.manifest.digest()), self.signature)
        except VerificationError:
            raise VerificationError(
                f"manifest {self.manifest.study_id[:16]}: sponsor signature does not verify"
            ) from None
        return self.manifest

    @property
    def study_id(self) -> str:
        return self.manifest.study_id

    def to_bytes(self) -> bytes:
        doc = {"manifest": self.manifest.to_dict(), "sponsor_signature": self.signature.hex()}
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str = "manifest") -> SignedManifest:
        """Parse and verify; BadInputError (malformed) or VerificationError (bad signature).

        Parsing and verifying is a function of the bytes alone: bytes that parsed and verified
        before in this process give the same (immutable) result again without redoing it.
        """
        key = bytes(data)
        known = _VERIFIED.get(key)
        if known is not None:
            return known
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise BadInputError(f"{where}: not valid JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"manifest", "sponsor_signature"}:
            raise BadInputError(f"{where}: expected fields 'manifest' and 'sponsor_signature'")
        try:
            manifest = Manifest.from_dict(doc["manifest"])
            signature = _hex32(doc["sponsor_signature"], "sponsor_signature", size=64)
        except TypeError as exc:
            raise BadInputError(f"{where}: {exc}") from None
        signed = cls(manifest, signature)
        signed.verify()
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.pop(next(iter(_VERIFIED)), None)
        _VERIFIED[key] = signed
        return signed

    def save(self, path: Path) -> None:
        write_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> SignedManifest:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise BadInputError(f"manifest {path}: cannot read ({exc.strerror})") from None
        return cls.from_bytes(raw, where=f"manifest {path}")
