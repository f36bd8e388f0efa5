"""A member's memory does not grow with the number of hospitals in a round.

Uploads wait on disk (the member's SQLite store) between acceptance and aggregation, and
aggregation streams them one at a time into an accumulator the size of one ciphertext
(:meth:`cohort.crypto.ckks.CkksPublicContext.accumulator`). The memory test runs a member in
a fresh subprocess per round size, so that the process's own peak resident set
(``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that round alone, and compares the peaks
with a fixed bound: no timing.

Run one size by hand: ``.venv/bin/python tests/aggregator/test_aggregator_memory.py 300``.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from committee_testkit import (
    IDS,
    Coordinator,
    MakeMember,
    Owner,
    SealFn,
    build_manifest,
    dealt_setup,
    entry_for,
)
from eth_account import Account

from cohort.aggregator.control import ControlSigner
from cohort.aggregator.keys import MemberKeys
from cohort.aggregator.member import CommitteeMember, MemberInfo
from cohort.aggregator.modes import CkksMode
from cohort.aggregator.store import STATE_FILE, MemberStore
from cohort.crypto import ckks_fastsum as fastsum
from cohort.crypto.ckks import CkksParams, CkksSecretContext
from cohort.crypto.envelope import Envelope, build_envelope
from cohort.crypto.identity import Identity
from cohort.errors import BadInputError
from cohort.federation.approval import Role, approve

# 6 full chunks of 8192 values (two per slot) under the default parameters: one (seeded)
# ciphertext is ~330 KB, so the payloads of 300 hospitals held at once would be ~100 MB.
MEMORY_LENGTH = 6 * 8192
SMALL, LARGE = 30, 300


# --------------------------------------------------------------------------- the child


def _round_peak(n: int) -> dict[str, int]:
    """Run a member through one round of ``n`` hospitals in this process; its peak RSS (KiB).

    The same ciphertext goes to every hospital's envelope (the member checks sender,
    signature and nonce, not that payloads differ); envelopes are built one at a time and
    dropped once accepted, so nothing of the test itself grows with ``n``.
    """
    ckks = CkksSecretContext.generate()
    owners = [
        Owner(
            Identity.generate(f"hospital-{i:04d}", seed=i.to_bytes(32, "big")),
            str(Account.from_key(i.to_bytes(32, "big")).address),
            np.zeros(0),
        )
        for i in range(1, n + 1)
    ]
    keys = [MemberKeys.generate(f"member-{i}") for i in (1, 2, 3)]
    coordinator = Identity.generate("coordinator", seed=b"\xc0" * 32)
    signed = build_manifest(
        committee=[entry_for(k) for k in keys],
        owners=owners,
        coordinator=coordinator,
        sponsor=Identity.generate("sponsor", seed=b"\x5a" * 32),
        key_dealer=owners[0].party_id,
        update_length=MEMORY_LENGTH,
    )
    setup = dealt_setup(owners[0].identity, signed.study_id, ckks.public().to_bytes())
    coord = Coordinator(ControlSigner(coordinator), signed, setup)
    vector = np.random.default_rng(5).uniform(-1.0, 1.0, MEMORY_LENGTH)
    payload = ckks.encrypt(vector)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "member-1"
        approve(signed, workdir=home, identity=keys[0].identity, role=Role.MEMBER)
        with CommitteeMember(keys[0], workdir=home) as member:
            coord.configure(member)
            coord.open_round(member, 1)
            for owner in owners:
                envelope = build_envelope(
                    owner.identity,
                    member.info.identity,
                    study_id=signed.study_id,
                    round=1,
                    payload=payload,
                ).to_bytes()
                member.accept(envelope).raise_if_rejected()
                del envelope
            result = coord.aggregate(member, 1, [o.party_id for o in owners])
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            left = len(coord.status(member).received)
        got = ckks.decrypt(result.aggregate)
    error = float(np.max(np.abs(got - n * vector)))
    return {
        "n": n,
        "peak_kib": int(peak),
        "payload_bytes": len(payload),
        "aggregate_bytes": len(result.aggregate),
        "uploads_left": left,
        "max_error_e9": int(error * 1e9),
    }


def _measure(n: int) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, __file__, str(n)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


# --------------------------------------------------------------------------- tests


def test_member_peak_memory_is_flat_in_the_number_of_hospitals() -> None:
    small, large = _measure(SMALL), _measure(LARGE)
    for doc in (small, large):
        assert doc["uploads_left"] == 0  # the round's uploads are dropped once aggregated
        assert doc["max_error_e9"] < 1e9 * 1e-3 * doc["n"]  # decrypts to n x the update
    assert large["payload_bytes"] * LARGE > 80 << 20  # held at once, 300 would be > 80 MB
    assert large["peak_kib"] <= 1.10 * small["peak_kib"], (small, large)


WIDE = CkksSecretContext.generate(CkksParams(4096, (60, 49), 40))  # 15 lazy adds per prime


@pytest.mark.parametrize("count", [1, 2, 15, 16, 17, 31, 40])
def test_streamed_sum_equals_batch_sum(count: int) -> None:
    """The accumulator fed one upload at a time gives the batch sum's bytes, across the
    lazy-reduction bound of a 60-bit prime and for several chunk counts."""
    rng = np.random.default_rng(count)
    public = WIDE.public()
    blobs = [WIDE.encrypt(rng.normal(0.0, 1.0, 2 * 2048 + 7)) for _ in range(count)]
    acc = public.accumulator()
    for blob in blobs:
        acc.add(blob)
    assert acc.count == count
    streamed = acc.finish()
    assert streamed == public.add(blobs) == public.add(blobs[::-1])
    assert streamed == CkksMode(public).combine(iter(blobs))


@pytest.mark.parametrize("prime", [(1 << 61) - 1, (1 << 60) - 93, (1 << 48) - 59])
def test_chunk_accumulator_equals_add_chunks(prime: int) -> None:
    """One chunk at a time gives :func:`add_chunks`'s batch result, past the lazy bound."""
    layout = dataclasses.replace(WIDE.public()._layout, primes=(prime,), poly_modulus_degree=8)
    rng = np.random.default_rng(prime % 1000)
    terms = [rng.integers(0, prime, (2, 1, 8), dtype=np.uint64, endpoint=False) for _ in range(70)]
    terms[:20] = [np.full((2, 1, 8), prime - 1, dtype=np.uint64)] * 20  # worst case first
    acc = fastsum.ChunkAccumulator(layout)
    for term in terms:
        acc.add(term)
    assert acc.count == len(terms)
    expected = sum(int(t[0, 0, 0]) for t in terms) % prime
    batch = fastsum.add_chunks(terms, layout)
    streamed = acc.finish()
    assert (streamed == batch).all()
    assert int(streamed[0, 0, 0]) == expected
    assert (terms[20] < prime).all()  # inputs are left as they were


def test_streamed_sum_refuses_mixed_lengths_and_empty() -> None:
    public = WIDE.public()
    acc = public.accumulator()
    with pytest.raises(BadInputError, match="no encrypted vectors"):
        acc.finish()
    with pytest.raises(BadInputError, match="nothing to combine"):
        CkksMode(public).combine(iter(()))
    zero, one = WIDE.encrypt(np.zeros(10)), WIDE.encrypt(np.ones(10))
    acc.add(zero)
    with pytest.raises(BadInputError, match="encrypted vector 1"):
        acc.add(WIDE.encrypt(np.zeros(11)))
    with pytest.raises(BadInputError, match="encrypted vector 1: chunk 0"):
        acc.add(one[:-7] + b"\xff" * 7)  # the last coefficient is not below the prime
    assert acc.count == 1  # a refused vector adds nothing
    acc.add(one)
    assert acc.finish() == public.add([zero, one])


def test_store_streams_payloads_in_the_asked_order(tmp_path: Path) -> None:
    store = MemberStore(tmp_path / STATE_FILE)
    try:
        store.open_round("s", 1, None)
        for sender in ("b", "a", "c"):
            store.add_upload("s", 1, sender, sender.encode() * 3, b"h")
        stream = store.iter_payloads("s", 1, ["a", "c", "b"])
        assert isinstance(stream, Iterator)
        assert list(stream) == [b"aaa", b"ccc", b"bbb"]
        with pytest.raises(KeyError, match="z"):
            list(store.iter_payloads("s", 1, ["a", "z"]))
    finally:
        store.close()


def _ciphertexts(seal: SealFn, keys: MemberKeys, info: MemberInfo) -> list[bytes]:
    """The CKKS payloads of IDS as sealed to a member (the fixture encrypts each once)."""
    return [
        keys.identity.unseal(Envelope.from_bytes(seal(oid, info)).sealed_payload)
        for oid in sorted(IDS)
    ]


def test_streamed_member_aggregate_equals_batch_add(
    member: CommitteeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    member_keys: dict[str, MemberKeys],
) -> None:
    for oid in IDS:
        member.accept(seal(oid, member.info)).raise_if_rejected()
    result = coord.aggregate(member, 1, IDS)
    batch = ckks.public().add(_ciphertexts(seal, member_keys["member-1"], member.info))
    assert result.aggregate == batch


def test_uploads_wait_on_disk_and_are_dropped_once_aggregated(
    make_member: MakeMember,
    coord: Coordinator,
    seal: SealFn,
    ckks: CkksSecretContext,
    member_keys: dict[str, MemberKeys],
) -> None:
    """Accepted uploads are in the member's SQLite file, a restarted member aggregates them to
    the batch sum's bytes, and they are deleted when the round is aggregated."""
    first = make_member("member-1")
    coord.configure(first)
    coord.open_round(first, 1)
    for oid in IDS:
        first.accept(seal(oid, first.info)).raise_if_rejected()
    home, info = first.workdir, first.info
    first.close()
    store = MemberStore(home / STATE_FILE)
    try:
        assert store.senders(coord.study_id, 1) == tuple(sorted(IDS))
    finally:
        store.close()
    restarted = make_member("member-1")
    result = coord.aggregate(restarted, 1, IDS)
    assert result.aggregate == ckks.public().add(_ciphertexts(seal, member_keys["member-1"], info))
    assert coord.status(restarted).received == ()
    restarted.close()
    store = MemberStore(home / STATE_FILE)
    try:
        assert store.senders(coord.study_id, 1) == ()
        assert store.payloads(coord.study_id, 1, []) == []
        stored = store.result(coord.study_id, 1)
        assert stored is not None
        assert stored.aggregate == result.aggregate
    finally:
        store.close()


if __name__ == "__main__":
    print(json.dumps(_round_peak(int(sys.argv[1]))))
