"""Write tests/vectors/envelope_vectors.json: envelope test vectors, passing and failing.

Run from the repository root::

    python tests/vectors/gen_envelope_vectors.py

Everything is deterministic: identities come from fixed seeds, nonces are fixed, and the
sealed payloads are RFC 9180 HPKE base-mode seals (what ``seal_to`` makes) with fixed
ephemeral keys, by ``hpkekit.deterministic_seal``: the RFC's construction written out in
test code, and every seal it makes is opened by ``cryptography``'s HPKE before it is used.
A rerun reproduces the file exactly; the test ``test_envelope_vectors.py`` checks that.

Each vector names the receiver's expectations (recipient, sender, study, round) and either
``"success": true`` with the payload, or ``"success": false`` with the error type and the
exact reason the implementation must give.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import hpkekit
import vectorkit

from cohort.crypto.envelope import Envelope, build_envelope, open_envelope
from cohort.crypto.identity import Identity
from cohort.errors import CohortError

OUTPUT = Path(__file__).with_name("envelope_vectors.json")
FORMAT = "cohort-envelope-vectors/v1"
STUDY = "study-vectors"
ROUND = 4
PAYLOAD = b"cohort envelope test vector payload " + bytes(range(32))
SEEDS = {"h1": 0x11, "h2": 0x12, "m1": 0x21, "m2": 0x22}

# The specification of each failing case: error type and exact reason. The generator
# refuses to write vectors that the implementation does not reproduce.
EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "tampered_payload": ("VerificationError", "payload hash mismatch"),
    "wrong_signature": ("VerificationError", "signature does not verify for sender h1"),
    "wrong_round": ("VerificationError", "envelope for round 3, expected round 4"),
    "wrong_recipient": ("VerificationError", "envelope addressed to 'm2', expected 'm1'"),
    "recipient_rewritten": ("VerificationError", "signature does not verify for sender h1"),
    "wrong_study": (
        "VerificationError",
        "envelope for study 'study-other', expected study 'study-vectors'",
    ),
    "wrong_sender": ("VerificationError", "envelope from 'h2', expected sender 'h1'"),
    "round_rewritten": ("VerificationError", "signature does not verify for sender h1"),
    "sealed_to_other_member": (
        "VerificationError",
        "sealed payload does not open for recipient m1",
    ),
    "tampered_seal": ("VerificationError", "sealed payload does not open for recipient m1"),
    "seal_other_info": ("VerificationError", "sealed payload does not open for recipient m1"),
    "truncated_seal": ("VerificationError", "sealed payload does not open for recipient m1"),
    "truncated": ("BadInputError", "envelope: truncated in signature: needs 64 bytes, 63 left"),
    "trailing_bytes": ("BadInputError", "envelope: 1 trailing bytes after the last field"),
    "bad_magic": ("BadInputError", "envelope: bad magic b'CHEX', expected b'CHEV'"),
    "old_version": ("BadInputError", "envelope: unsupported version 1, expected 2"),
    "bad_version": ("BadInputError", "envelope: unsupported version 3, expected 2"),
    "bad_nonce_size": ("BadInputError", "envelope: nonce has 15 bytes, expected 16"),
}


def identities() -> dict[str, Identity]:
    return {pid: Identity.generate(pid, seed=bytes([b]) * 32) for pid, b in SEEDS.items()}


def deterministic_seal(
    ids: dict[str, Identity], recipient: str, plaintext: bytes, ephemeral_seed: int, **kw: Any
) -> bytes:
    """``seal_to(ids[recipient].public, plaintext)`` with a fixed ephemeral key (hpkekit)."""
    return hpkekit.seal_for_seeded(ids, SEEDS, recipient, plaintext, ephemeral_seed, **kw)


def _envelope(
    ids: dict[str, Identity],
    *,
    sender: str = "h1",
    recipient: str = "m1",
    study_id: str = STUDY,
    round: int = ROUND,
    payload: bytes = PAYLOAD,
    nonce_byte: int = 0xA0,
    ephemeral_seed: int = 0xE0,
) -> Envelope:
    env = build_envelope(
        ids[sender],
        ids[recipient].public,
        study_id=study_id,
        round=round,
        payload=payload,
        nonce=bytes([nonce_byte]) * 16,
    )
    sealed = deterministic_seal(ids, recipient, payload, ephemeral_seed)
    return dataclasses.replace(env, sealed_payload=sealed)


def _cases(ids: dict[str, Identity]) -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """(name, description, envelope bytes, receiver expectations overriding the defaults)."""
    valid = _envelope(ids)
    wire = valid.to_bytes()
    h2_signature = ids["h2"].sign(valid.signed_digest())
    return [
        ("valid", "a well-formed envelope from h1 to m1", wire, {}),
        (
            "valid_empty_payload",
            "empty payload, round 0",
            _envelope(ids, payload=b"", round=0, nonce_byte=0xA1, ephemeral_seed=0xE1).to_bytes(),
            {"round": 0},
        ),
        (
            "tampered_payload",
            "sealed payload replaced by a sealing of other bytes to the same member",
            dataclasses.replace(
                valid, sealed_payload=deterministic_seal(ids, "m1", b"forged", 0xE2)
            ).to_bytes(),
            {},
        ),
        (
            "wrong_signature",
            "signature made by h2 over the same digest",
            dataclasses.replace(valid, signature=h2_signature).to_bytes(),
            {},
        ),
        (
            "wrong_round",
            "valid envelope for round 3 delivered while round 4 runs",
            _envelope(ids, round=3, nonce_byte=0xA3, ephemeral_seed=0xE3).to_bytes(),
            {},
        ),
        (
            "wrong_recipient",
            "valid envelope for m2 delivered to m1",
            _envelope(ids, recipient="m2", nonce_byte=0xA4, ephemeral_seed=0xE4).to_bytes(),
            {},
        ),
        (
            "recipient_rewritten",
            "an envelope for m2 whose recipient field was rewritten to m1",
            dataclasses.replace(
                _envelope(ids, recipient="m2", nonce_byte=0xA5, ephemeral_seed=0xE5),
                recipient="m1",
            ).to_bytes(),
            {},
        ),
        (
            "wrong_study",
            "valid envelope for another study",
            _envelope(ids, study_id="study-other", nonce_byte=0xA6, ephemeral_seed=0xE6).to_bytes(),
            {},
        ),
        (
            "wrong_sender",
            "valid envelope from h2 where h1 is expected",
            _envelope(ids, sender="h2", nonce_byte=0xA7, ephemeral_seed=0xE7).to_bytes(),
            {},
        ),
        (
            "round_rewritten",
            "round field rewritten from 4 to 5, receiver expects 5",
            dataclasses.replace(valid, round=5).to_bytes(),
            {"round": 5},
        ),
        (
            "sealed_to_other_member",
            "signed for m1 but the payload is sealed to m2",
            dataclasses.replace(
                valid, sealed_payload=deterministic_seal(ids, "m2", PAYLOAD, 0xE8)
            ).to_bytes(),
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
                sealed_payload=deterministic_seal(ids, "m1", PAYLOAD, 0xE9, info=b"cohort/seal/v1"),
            ).to_bytes(),
            {},
        ),
        (
            "truncated_seal",
            "the valid seal without its last byte (the length prefix still matches)",
            dataclasses.replace(valid, sealed_payload=valid.sealed_payload[:-1]).to_bytes(),
            {},
        ),
        ("truncated", "last byte missing", wire[:-1], {}),
        ("trailing_bytes", "one byte after the signature", wire + b"\x00", {}),
        ("bad_magic", "magic CHEX", b"CHEX" + wire[4:], {}),
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
    """Parse and open ``data`` as a committee member with the given expectations."""
    env = Envelope.from_bytes(data)
    return open_envelope(
        env,
        recipient=ids[expect["recipient"]],
        sender=ids[expect["sender"]].public,
        study_id=expect["study_id"],
        round=expect["round"],
    )


def build_vectors() -> dict[str, Any]:
    ids = identities()
    vectors: list[dict[str, Any]] = []
    for name, description, data, overrides in _cases(ids):
        expect = {"recipient": "m1", "sender": "h1", "study_id": STUDY, "round": ROUND}
        expect.update(overrides)
        record: dict[str, Any] = {
            "name": name,
            "description": description,
            "envelope": data.hex(),
            "expect": expect,
        }
        try:
            payload = run_vector(ids, data, expect)
        except CohortError as exc:
            outcome = (type(exc).__name__, str(exc))
            if EXPECTED_FAILURES.get(name) != outcome:
                raise RuntimeError(f"vector {name}: got {outcome}") from exc
            record.update(success=False, error=outcome[0], reason=outcome[1])
        else:
            if name in EXPECTED_FAILURES:
                raise RuntimeError(f"vector {name}: expected a failure, it opened")
            env = Envelope.from_bytes(data)
            record.update(
                success=True,
                payload=payload.hex(),
                payload_hash=env.payload_hash.hex(),
                signed_digest=env.signed_digest().hex(),
            )
        vectors.append(record)
    return {
        "format": FORMAT,
        "generator": "tests/vectors/gen_envelope_vectors.py",
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
