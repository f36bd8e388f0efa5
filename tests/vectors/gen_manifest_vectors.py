"""Write tests/vectors/manifest_vectors.json: study manifest vectors, passing and failing.

Run from the repository root::

    python tests/vectors/gen_manifest_vectors.py

Deterministic: identities come from fixed seeds, the nonce and addresses are fixed, and
Ed25519 signatures are deterministic, so a rerun reproduces the file byte for byte (the test
``test_manifest_vectors.py`` checks that). The valid vector pins the canonical encoding and
the study id; each failing vector names the error type and the exact reason a party must
give when it reads the document.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import vectorkit

from cohort.crypto.identity import Identity
from cohort.errors import CohortError
from cohort.federation.manifest import (
    ClientDpTerms,
    CommitteeEntry,
    DpTerms,
    Manifest,
    OwnerEntry,
    SecureMode,
    SignedManifest,
)

OUTPUT = Path(__file__).with_name("manifest_vectors.json")
FORMAT = "cohort-manifest-vectors/v1"
ADDRESSES = [f"0x{i:040x}" for i in range(0x1001, 0x1009)]

EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "rounds_changed_after_signing": ("VerificationError", "sponsor signature does not verify"),
    "committee_key_swapped": ("VerificationError", "sponsor signature does not verify"),
    "signed_by_another_key": ("VerificationError", "sponsor signature does not verify"),
    "unknown_field": ("BadInputError", "manifest: unknown field 'reset'"),
    "missing_field": ("BadInputError", "manifest: missing field 'quorum'"),
    "quorum_not_a_majority": (
        "ConfigError",
        "manifest: quorum (a strict majority of 3 members) must be 2..3, got 1",
    ),
    "single_client_set": (
        "ConfigError",
        "manifest: min_clients (smallest client set) must be 2..3, got 1",
    ),
    "dealer_not_an_owner": ("ConfigError", "manifest: key_dealer 'outsider' is not an owner"),
    "short_nonce": ("BadInputError", "manifest: nonce must be 32 bytes, got 16"),
    # a manifest with the optional client-level DP term (``valid_client_dp``)
    "client_dp_removed_after_signing": (
        "VerificationError",
        "sponsor signature does not verify",
    ),
    "client_dp_zero_noise": (
        "ConfigError",
        "manifest: client_dp.noise_multiplier (noise std of the aggregate / C) must be "
        "> 0.0 and finite, got 0",
    ),
    "client_dp_unknown_field": ("BadInputError", "manifest client_dp: unknown field 'epsilon'"),
    "client_dp_null": (
        "BadInputError",
        "manifest: client_dp must be an object or absent, not null",
    ),
}


def _identity(name: str, seed: int) -> Identity:
    return Identity.generate(name, seed=bytes([seed]) * 32)


def base_manifest() -> tuple[Manifest, Identity]:
    sponsor = _identity("sponsor", 0x51)
    coordinator = _identity("coordinator", 0x52)
    members = [_identity(f"member-{i}", 0x20 + i) for i in (1, 2, 3)]
    owners = [_identity(f"hospital-{i}", 0x10 + i) for i in (1, 2, 3)]
    manifest = Manifest(
        name="vector-study",
        nonce=bytes(range(32)),
        secure=SecureMode.CKKS,
        committee=tuple(
            CommitteeEntry(
                member_id=m.party_id,
                sign_key=m.public.sign_key,
                box_key=m.public.box_key,
                eth_address=ADDRESSES[i],
                endpoint=f"127.0.0.1:{7001 + i}",
            )
            for i, m in enumerate(members)
        ),
        quorum=2,
        min_clients=2,
        owners=tuple(
            OwnerEntry(
                party_id=o.party_id,
                sign_key=o.public.sign_key,
                box_key=o.public.box_key,
                payout_address=ADDRESSES[3 + i],
            )
            for i, o in enumerate(owners)
        ),
        key_dealer="hospital-1",
        coordinator_key=coordinator.public.sign_key,
        sponsor_key=sponsor.public.sign_key,
        sponsor_address=ADDRESSES[6],
        rounds=5,
        dp=DpTerms(
            epsilon=3.0, delta=1e-5, local_epochs=1, batch_size=32, max_grad_norm=1.0, lr=0.5
        ),
        model="mlp",
        features=30,
        num_classes=2,
        update_length=1058,
        init_seed=7,
        server_lr=1.0,
        payout_rule="proportional-to-included-rounds",
        bounty_wei=10**18,
        chain_id=1337,
        contract=ADDRESSES[7],
        deadline=1_800_000_000,
    )
    return manifest, sponsor


def client_dp_manifest(manifest: Manifest) -> Manifest:
    """The base manifest with client-level DP (C 0.5, sigma 1.2), the nonce changed."""
    return dataclasses.replace(
        manifest,
        nonce=bytes(range(32, 64)),
        client_dp=ClientDpTerms(clip_norm=0.5, noise_multiplier=1.2),
    )


def client_dp_failing(valid: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    doc = copy.deepcopy(valid)
    del doc["manifest"]["client_dp"]
    out["client_dp_removed_after_signing"] = doc
    doc = copy.deepcopy(valid)
    doc["manifest"]["client_dp"]["noise_multiplier"] = 0
    out["client_dp_zero_noise"] = doc
    doc = copy.deepcopy(valid)
    doc["manifest"]["client_dp"]["epsilon"] = 1.0
    out["client_dp_unknown_field"] = doc
    doc = copy.deepcopy(valid)
    doc["manifest"]["client_dp"] = None
    out["client_dp_null"] = doc
    return out


def _document(signed: SignedManifest) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(signed.to_bytes())
    return doc


def failing_documents(valid: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    doc = copy.deepcopy(valid)
    doc["manifest"]["rounds"] = 50
    out["rounds_changed_after_signing"] = doc
    doc = copy.deepcopy(valid)
    doc["manifest"]["committee"][0]["sign_key"] = _identity("member-1", 0x66).public.sign_key.hex()
    out["committee_key_swapped"] = doc
    other = _identity("sponsor", 0x77)
    doc = copy.deepcopy(valid)
    doc["sponsor_signature"] = other.sign(b"not the manifest").hex()
    out["signed_by_another_key"] = doc
    doc = copy.deepcopy(valid)
    doc["manifest"]["reset"] = True
    out["unknown_field"] = doc
    doc = copy.deepcopy(valid)
    del doc["manifest"]["quorum"]
    out["missing_field"] = doc
    for name, key, value in (
        ("quorum_not_a_majority", "quorum", 1),
        ("single_client_set", "min_clients", 1),
        ("dealer_not_an_owner", "key_dealer", "outsider"),
        ("short_nonce", "nonce", "00" * 16),
    ):
        doc = copy.deepcopy(valid)
        doc["manifest"][key] = value
        out[name] = doc
    return out


def _failing(name: str, doc: dict[str, Any]) -> dict[str, Any]:
    kind, reason = EXPECTED_FAILURES[name]
    raw = json.dumps(doc, indent=1, sort_keys=True).encode()
    try:
        SignedManifest.from_bytes(raw)
    except CohortError as exc:
        got = (type(exc).__name__, str(exc))
    else:
        raise SystemExit(f"vector {name}: the implementation accepted it")
    if got[0] != kind or reason not in got[1]:
        raise SystemExit(f"vector {name}: implementation says {got}, spec says {kind}: {reason}")
    return {"name": name, "success": False, "document": doc, "error": kind, "reason": reason}


def _valid(name: str, manifest: Manifest, sponsor: Identity) -> dict[str, Any]:
    return {
        "name": name,
        "success": True,
        "document": _document(SignedManifest.sign(manifest, sponsor)),
        "canonical": manifest.canonical().decode(),
        "study_id": manifest.study_id,
    }


def build() -> dict[str, Any]:
    manifest, sponsor = base_manifest()
    valid = _valid("valid", manifest, sponsor)
    vectors = [valid]
    vectors += [_failing(n, d) for n, d in failing_documents(valid["document"]).items()]
    # The optional client-level DP term; a manifest without it encodes as before it existed.
    valid_client_dp = _valid("valid_client_dp", client_dp_manifest(manifest), sponsor)
    vectors.append(valid_client_dp)
    failing = client_dp_failing(valid_client_dp["document"])
    vectors += [_failing(n, d) for n, d in failing.items()]
    return {"format": FORMAT, "vectors": vectors}


def render() -> str:
    return vectorkit.render(build(), sort_keys=True)


if __name__ == "__main__":
    sys.exit(vectorkit.write(OUTPUT, render()))
