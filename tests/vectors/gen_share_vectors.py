"""Write tests/vectors/share_vectors.json: share-payload test vectors, passing and failing.

Run from the repository root::

    python tests/vectors/gen_share_vectors.py

A share payload (:mod:`cohort.crypto.share_payload`) carries one committee member's Shamir
share, either as a 32-byte seed (expanded with :func:`cohort.crypto.prg.expand_field` under
the member's :func:`~cohort.crypto.prg.share_domain`) or as bit-packed field values.
Everything here is deterministic: the secret, the seeds and the domains are fixed, so a rerun
reproduces the file exactly; ``test_share_vectors.py`` checks that.

Each vector names the member's expectations (length, domain) and either ``"success": true``
with the share's field values, or ``"success": false`` with the error type and the exact
reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import vectorkit

from cohort.crypto import framing
from cohort.crypto.fixed_point import PRIME
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import SeededShare, ShamirScheme, reconstruct, share
from cohort.crypto.share_payload import MAGIC, SharePayload
from cohort.errors import CohortError

OUTPUT = Path(__file__).with_name("share_vectors.json")
FORMAT = "cohort-share-vectors/v1"
STUDY = "study-vectors"
ROUND = 2
SENDER = "h1"
MEMBERS = ("m1", "m2", "m3")
SCHEME = ShamirScheme(3, 2)
SECRET = [0, 1, 2, PRIME - 1, PRIME // 2, 65536, 4194304]
SEED = bytes(range(0x40, 0x60))

# The specification of each failing case: error type and exact reason. The generator refuses
# vectors the implementation does not match.
EXPECTED_FAILURES: dict[str, tuple[str, str]] = {
    "bad_magic": ("BadInputError", "share payload: bad magic b'CHCU', expected b'CHSH'"),
    "bad_version": ("BadInputError", "share payload: unsupported version 2, expected 1"),
    "bad_kind": (
        "BadInputError",
        "share payload: unknown kind 0, expected 1 (seed) or 2 (full)",
    ),
    "truncated": (
        "BadInputError",
        "share payload: truncated in values: needs 21 bytes, 20 left",
    ),
    "trailing_bytes": ("BadInputError", "share payload: 1 trailing bytes after the last field"),
    "value_not_below_prime": (
        "BadInputError",
        "share payload: values: packed field: value at index 0 is not below the prime 8388593",
    ),
    "index_out_of_range": ("BadInputError", "share payload: member index 3 is not below members 3"),
    "threshold_above_members": (
        "BadInputError",
        "share payload: threshold 4 not in [1, members 3]",
    ),
    "wrong_length": ("BadInputError", "share payload: length 7, expected 8"),
    "short_seed": ("BadInputError", "share payload: seed has 31 bytes, expected 32"),
    "nonzero_padding": (
        "BadInputError",
        "share payload: values: packed field: non-zero padding bits",
    ),
}


def _domains() -> list[bytes]:
    return [share_domain(STUDY, ROUND, member, SENDER) for member in MEMBERS]


def _shares() -> list[SharePayload]:
    """m1 gets the fixed seed; m2 and m3 the interpolated full shares."""
    shares = share(
        np.array(SECRET, dtype=np.int64),
        SCHEME,
        domains=_domains(),
        seeded=[0],
        random_bytes=lambda size: SEED[:size],
    )
    return [SharePayload(SCHEME, len(SECRET), s) for s in shares]


def _header(kind: int, index: int, members: int, threshold: int, length: int) -> bytes:
    return (
        MAGIC + framing.u8(1) + framing.u8(kind) + framing.u32(index) + framing.u32(members)
        + framing.u32(threshold) + framing.u32(PRIME) + framing.u64(length)
    )  # fmt: skip


def _cases() -> list[tuple[str, str, bytes, int]]:
    """(name, description, payload bytes, index of the member that parses it)."""
    seeded, full2, full3 = (p.to_bytes() for p in _shares())
    header = len(_header(2, 1, 3, 2, 7))
    body = full2[header:]
    seed_body = seeded[header:]
    over = framing.prefixed64(b"\xff\xff\xff" + body[11:])
    return [
        ("valid_seed", "m1's share as a 32-byte seed", seeded, 0),
        ("valid_full", "m2's share as packed 23-bit values", full2, 1),
        ("valid_full_m3", "m3's share as packed 23-bit values", full3, 2),
        ("bad_magic", "committee-upload magic", b"CHCU" + full2[4:], 1),
        ("bad_version", "version 2", full2[:4] + b"\x02" + full2[5:], 1),
        ("bad_kind", "kind 0", full2[:5] + b"\x00" + full2[6:], 1),
        ("truncated", "last byte missing", full2[:-1], 1),
        ("trailing_bytes", "one byte after the values", full2 + b"\x00", 1),
        ("value_not_below_prime", "first value all ones (2^23 - 1 >= p)", full2[:header] + over, 1),
        ("index_out_of_range", "member index 3 of 3", _header(2, 3, 3, 2, 7) + body, 1),
        ("threshold_above_members", "threshold 4 of 3", _header(2, 1, 3, 4, 7) + body, 1),
        ("wrong_length", "a valid share of 7 values where 8 are expected", full2, 1),
        ("short_seed", "seed of 31 bytes", seeded[:header] + framing.prefixed(seed_body[4:35]), 0),
        ("nonzero_padding", "the last padding bit set", full2[:-1] + bytes([full2[-1] | 1]), 1),
    ]


def expected_length(name: str) -> int:
    return len(SECRET) + 1 if name == "wrong_length" else len(SECRET)


def run_vector(data: bytes, *, length: int, domain: bytes) -> list[int]:
    """Parse ``data`` as the member expecting ``length`` values and return its share values."""
    values = SharePayload.from_bytes(data, length=length).values(domain=domain)
    return [int(v) for v in values]


def build_vectors() -> dict[str, Any]:
    domains = _domains()
    vectors: list[dict[str, Any]] = []
    points: dict[int, Any] = {}
    for name, description, data, member in _cases():
        length = expected_length(name)
        record: dict[str, Any] = {
            "name": name,
            "description": description,
            "payload": data.hex(),
            "expect": {"member": member, "length": length, "domain": domains[member].hex()},
        }
        try:
            values = run_vector(data, length=length, domain=domains[member])
        except CohortError as exc:
            outcome = (type(exc).__name__, str(exc))
            if EXPECTED_FAILURES.get(name) != outcome:
                raise RuntimeError(f"vector {name}: got {outcome}") from exc
            record.update(success=False, error=outcome[0], reason=outcome[1])
        else:
            if name in EXPECTED_FAILURES:
                raise RuntimeError(f"vector {name}: expected a failure, it parsed")
            payload = SharePayload.from_bytes(data)
            record.update(
                success=True,
                kind="seed" if isinstance(payload.share, SeededShare) else "full",
                values=values,
            )
            points[member] = np.array(values, dtype=np.int64)
        vectors.append(record)
    if reconstruct(points, SCHEME).tolist() != SECRET:
        raise RuntimeError("the passing shares do not reconstruct the secret")
    return {
        "format": FORMAT,
        "generator": "tests/vectors/gen_share_vectors.py",
        "scheme": {"members": SCHEME.members, "threshold": SCHEME.threshold, "prime": PRIME},
        "study_id": STUDY,
        "round": ROUND,
        "sender": SENDER,
        "members": list(MEMBERS),
        "seed": SEED.hex(),
        "secret": SECRET,
        "vectors": vectors,
    }


def render() -> str:
    return vectorkit.render(build_vectors())


def main() -> int:
    return vectorkit.write(OUTPUT, render())


if __name__ == "__main__":
    sys.exit(main())
