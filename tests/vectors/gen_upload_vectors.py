"""Write tests/vectors/upload_vectors.json: committee-upload test vectors, passing and failing.

Run from the repository root::

    python tests/vectors/gen_upload_vectors.py

A committee upload (:mod:`cohort.crypto.upload`) is signed by a data owner for the whole
committee and sealed to the member that holds it; a copy relayed to another member keeps the
signature and is sealed anew. Everything here is deterministic: identities come from fixed
seeds, nonces are fixed, and seals are RFC 9180 HPKE base-mode seals (what ``seal_to``
makes) with fixed ephemeral keys (:func:`deterministic_seal`, by ``hpkekit`` as in
``gen_envelope_vectors.py``; every seal is opened by ``cryptography``'s HPKE before it is
used). A rerun reproduces the file exactly; ``test_upload_vectors.py`` checks that.

Each vector names the receiver's expectations (holder, sender, committee, study, round) and
either ``"success": true`` with the payload, or ``"success": false`` with the error type,
the exact reason and, for a failed check, which check (:class:`~cohort.crypto.upload.UploadCheck`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import hpkekit
import vectorkit

from cohort.crypto.envelope import build_envelope
from cohort.crypto.identity import Identity
from cohort.crypto.upload import (
    CommitteeUpload,
    UploadRefused,
    build_upload,
    committee_address,
    open_upload,
)
from cohort.errors import CohortError

OUTPUT = Path(__file__).with_name("upload_vectors.json")
FORMAT = "cohort-upload-vectors/v1"
STUDY = "study-vectors"
ROUND = 4
COMMITTEE = ("m1", "m2")
PAYLOAD = b"cohort committee upload test vector payload " + bytes(range(32))
SEEDS = {"h1": 0x11, "h2": 0x12, "m1": 0x21, "m2": 0x22, "m3": 0x23}

# The specification of each failing case: error type, exact reason, and the failed check
# ("" for a parse error). The generator refuses vectors the implementation does not match.
EXPECTED_FAILURES: dict[str, tuple[str, str, str]] = {
    "tampered_payload": ("UploadRefused", "payload hash mismatch", "payload_hash"),
    "wrong_signature": (
        "UploadRefused",
        "signature does not verify for sender h1",
        "signature",
    ),
    "envelope_signature": (
        "UploadRefused",
        "signature does not verify for sender h1",
        "signature",
    ),
    "wrong_round": ("UploadRefused", "upload for round 3, expected round 4", "round"),
    "round_rewritten": ("UploadRefused", "signature does not verify for sender h1", "signature"),
    "wrong_study": (
        "UploadRefused",
        "upload for study 'study-other', expected study 'study-vectors'",
        "study",
    ),
    "other_committee": ("UploadRefused", "upload is addressed to another committee", "committee"),
    "committee_rewritten": (
        "UploadRefused",
        "signature does not verify for sender h1",
        "signature",
    ),
    "wrong_sender": ("UploadRefused", "upload from 'h2', expected sender 'h1'", "sender"),
    "sealed_to_other_member": (
        "UploadRefused",
        "sealed payload does not open for holder m1",
        "seal",
    ),
    "tampered_seal": ("UploadRefused", "sealed payload does not open for holder m1", "seal"),
    "seal_other_info": ("UploadRefused", "sealed payload does not open for holder m1", "seal"),
    "truncated": (
        "BadInputError",
        "committee upload: truncated in signature: needs 64 bytes, 63 left",
        "",
    ),
    "trailing_bytes": (
        "BadInputError",
        "committee upload: 1 trailing bytes after the last field",
        "",
    ),
    "per_member_envelope": (
        "BadInputError",
        "committee upload: bad magic b'CHEV', expected b'CHCU'",
        "",
    ),
    "old_version": ("BadInputError", "committee upload: unsupported version 1, expected 2", ""),
    "bad_version": ("BadInputError", "committee upload: unsupported version 3, expected 2", ""),
    "bad_nonce_size": ("BadInputError", "committee upload: nonce has 15 bytes, expected 16", ""),
}


def identities() -> dict[str, Identity]:
    return {pid: Identity.generate(pid, seed=bytes([b]) * 32) for pid, b in SEEDS.items()}


def deterministic_seal(
    ids: dict[str, Identity], recipient: str, plaintext: bytes, ephemeral_seed: int, **kw: Any
) -> bytes:
    """``seal_to(ids[recipient].public, plaintext)`` with a fixed ephemeral key (hpkekit)."""
    return hpkekit.seal_for_seeded(ids, SEEDS, recipient, plaintext, ephemeral_seed, **kw)


def _committee(ids: dict[str, Identity], members: tuple[str, ...] = COMMITTEE) -> list[Any]:
    return [ids[m].public for m in members]


def _upload(
    ids: dict[str, Identity],
    *,
    sender: str = "h1",
    holder: str = "m1",
    members: tuple[str, ...] = COMMITTEE,
    study_id: str = STUDY,
    round: int = ROUND,
    payload: bytes = PAYLOAD,
    nonce_byte: int = 0xB0,
    ephemeral_seed: int = 0xF0,
) -> CommitteeUpload:
    upload = build_upload(
        ids[sender],
        _committee(ids, members),
        ids[holder].public,
        study_id=study_id,
        round=round,
        payload=payload,
        nonce=bytes([nonce_byte]) * 16,
    )
    sealed = deterministic_seal(ids, holder, payload, ephemeral_seed)
    return dataclasses.replace(upload, sealed_payload=sealed)


def _cases(ids: dict[str, Identity]) -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """(name, description, upload bytes, receiver expectations overriding the defaults)."""
    valid = _upload(ids)
    wire = valid.to_bytes()
    relayed = dataclasses.replace(
        valid, sealed_payload=deterministic_seal(ids, "m2", PAYLOAD, 0xF9)
    )
    envelope = dataclasses.replace(
        build_envelope(
            ids["h1"], ids["m1"].public, study_id=STUDY, round=ROUND, payload=PAYLOAD,
            nonce=valid.nonce,
        ),
        sealed_payload=deterministic_seal(ids, "m1", PAYLOAD, 0xF8),
    )  # fmt: skip
    return [
        ("valid", "h1's upload for the committee {m1, m2}, held by m1", wire, {}),
        (
            "valid_relayed_copy",
            "the same signed upload relayed by m1 to m2: sealed to m2, opened by m2",
            relayed.to_bytes(),
            {"holder": "m2"},
        ),
        (
            "valid_empty_payload",
            "empty payload, round 0",
            _upload(ids, payload=b"", round=0, nonce_byte=0xB1, ephemeral_seed=0xF1).to_bytes(),
            {"round": 0},
        ),
        (
            "tampered_payload",
            "sealed payload replaced by a sealing of other bytes to the same holder",
            dataclasses.replace(
                valid, sealed_payload=deterministic_seal(ids, "m1", b"forged", 0xF2)
            ).to_bytes(),
            {},
        ),
        (
            "wrong_signature",
            "signature made by h2 over the same digest",
            dataclasses.replace(valid, signature=ids["h2"].sign(valid.signed_digest())).to_bytes(),
            {},
        ),
        (
            "envelope_signature",
            "h1's signature of a per-member envelope with the same fields (another tag)",
            dataclasses.replace(valid, signature=envelope.signature).to_bytes(),
            {},
        ),
        (
            "wrong_round",
            "valid upload of round 3 delivered while round 4 runs (a replay)",
            _upload(ids, round=3, nonce_byte=0xB3, ephemeral_seed=0xF3).to_bytes(),
            {},
        ),
        (
            "round_rewritten",
            "round field rewritten from 4 to 5, receiver expects 5",
            dataclasses.replace(valid, round=5).to_bytes(),
            {"round": 5},
        ),
        (
            "wrong_study",
            "valid upload for another study",
            _upload(ids, study_id="study-other", nonce_byte=0xB4, ephemeral_seed=0xF4).to_bytes(),
            {},
        ),
        (
            "other_committee",
            "valid upload for the committee {m1, m3}, held by m1",
            _upload(ids, members=("m1", "m3"), nonce_byte=0xB5, ephemeral_seed=0xF5).to_bytes(),
            {},
        ),
        (
            "committee_rewritten",
            "an upload for {m1, m3} whose committee field was rewritten to {m1, m2}",
            dataclasses.replace(
                _upload(ids, members=("m1", "m3"), nonce_byte=0xB6, ephemeral_seed=0xF6),
                committee=committee_address(_committee(ids)),
            ).to_bytes(),
            {},
        ),
        (
            "wrong_sender",
            "valid upload from h2 where h1 is expected",
            _upload(ids, sender="h2", nonce_byte=0xB7, ephemeral_seed=0xF7).to_bytes(),
            {},
        ),
        (
            "sealed_to_other_member",
            "the copy relayed to m2, delivered to m1",
            relayed.to_bytes(),
            {},
        ),
        (
            "tampered_seal",
            "one bit of the AES-GCM tag of the valid seal flipped",
            dataclasses.replace(
                valid,
                sealed_payload=valid.sealed_payload[:-1] + bytes([valid.sealed_payload[-1] ^ 1]),
            ).to_bytes(),
            {},
        ),
        (
            "seal_other_info",
            "payload sealed to m1 with HPKE info b'cohort/seal/v1' instead of SEAL_INFO",
            dataclasses.replace(
                valid,
                sealed_payload=deterministic_seal(ids, "m1", PAYLOAD, 0xFA, info=b"cohort/seal/v1"),
            ).to_bytes(),
            {},
        ),
        ("truncated", "last byte missing", wire[:-1], {}),
        ("trailing_bytes", "one byte after the signature", wire + b"\x00", {}),
        ("per_member_envelope", "a per-member envelope (CHEV)", envelope.to_bytes(), {}),
        (
            "old_version",
            "version 1, the format whose payload was sealed with libsodium's SealedBox",
            wire[:4] + b"\x01" + wire[5:],
            {},
        ),
        ("bad_version", "version 3", wire[:4] + b"\x03" + wire[5:], {}),
        (
            "bad_nonce_size",
            "nonce length prefix says 15",
            wire.replace(b"\x00\x00\x00\x10" + valid.nonce, b"\x00\x00\x00\x0f" + valid.nonce, 1),
            {},
        ),
    ]


def run_vector(ids: dict[str, Identity], data: bytes, expect: dict[str, Any]) -> bytes:
    """Parse and open ``data`` as the holder with the given expectations."""
    upload = CommitteeUpload.from_bytes(data)
    return open_upload(
        upload,
        holder=ids[expect["holder"]],
        sender=ids[expect["sender"]].public,
        committee=committee_address([ids[m].public for m in expect["committee"]]),
        study_id=expect["study_id"],
        round=expect["round"],
    )


def build_vectors() -> dict[str, Any]:
    ids = identities()
    vectors: list[dict[str, Any]] = []
    for name, description, data, overrides in _cases(ids):
        expect: dict[str, Any] = {
            "holder": "m1",
            "sender": "h1",
            "committee": list(COMMITTEE),
            "study_id": STUDY,
            "round": ROUND,
        }
        expect.update(overrides)
        record: dict[str, Any] = {
            "name": name,
            "description": description,
            "upload": data.hex(),
            "expect": expect,
        }
        try:
            payload = run_vector(ids, data, expect)
        except CohortError as exc:
            check = exc.check.value if isinstance(exc, UploadRefused) else ""
            outcome = (type(exc).__name__, str(exc), check)
            if EXPECTED_FAILURES.get(name) != outcome:
                raise RuntimeError(f"vector {name}: got {outcome}") from exc
            record.update(success=False, error=outcome[0], reason=outcome[1], check=check)
        else:
            if name in EXPECTED_FAILURES:
                raise RuntimeError(f"vector {name}: expected a failure, it opened")
            upload = CommitteeUpload.from_bytes(data)
            record.update(
                success=True,
                payload=payload.hex(),
                payload_hash=upload.payload_hash.hex(),
                committee_address=upload.committee.hex(),
                signed_digest=upload.signed_digest().hex(),
            )
        vectors.append(record)
    return {
        "format": FORMAT,
        "generator": "tests/vectors/gen_upload_vectors.py",
        "identities": {
            pid: {"seed": (bytes([b]) * 32).hex(), **ids[pid].public.to_dict()}
            for pid, b in SEEDS.items()
        },
        "vectors": vectors,
    }


def render() -> str:
    return vectorkit.render(build_vectors())


def main() -> int:
    return vectorkit.write(OUTPUT, render())


if __name__ == "__main__":
    sys.exit(main())
