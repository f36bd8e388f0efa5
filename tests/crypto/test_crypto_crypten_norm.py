"""L2-norm input validation in MPC (CrypTen parties + TTP as local processes on 127.0.0.1).

Updates are fixed-point encoded (FieldEncoding), Shamir-shared (cohort.crypto.shamir), summed
per member and turned into additive shares of the participating members, exactly as the
committee would; each member then runs ``check_norms`` in its own subprocess.
"""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from cohort.aggregator.mpc_validation import check_norms
from cohort.crypto.crypten_compat import load_crypten
from cohort.crypto.crypten_norm import (
    NormCheckJob,
    bound_for_clip,
    chunk_size,
    decode_fixed,
    half_prime,
    lift_signed,
    lift_width,
    norm_bits,
    pack_bits,
    pack_planes,
    party_session,
    run_ttp,
    unpack_bits,
)
from cohort.crypto.fixed_point import FRAC_BITS, PRIME, FieldEncoding, to_signed
from cohort.crypto.prg import share_domain
from cohort.crypto.shamir import ShamirScheme, additive_share, share, share_values
from cohort.errors import BadInputError, ProtocolAbort

BIG_PRIME = 2**31 - 1  # largest prime the field code allows: squares near 2^60
H = half_prime(PRIME)


def free_rendezvous() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def additive_shares(
    rows: Sequence[NDArray[np.int64]],
    *,
    members: int,
    threshold: int,
    participants: list[int],
    prime: int,
) -> list[NDArray[np.int64]]:
    """Shamir-share each client's field vector, then each participant's additive share."""
    scheme = ShamirScheme(members, threshold, prime)
    domains = [
        share_domain("study", 1, f"m{i}", f"c{c}") for c in range(len(rows)) for i in range(members)
    ]
    per_member: list[list[NDArray[np.int64]]] = [[] for _ in range(members)]
    for c, row in enumerate(rows):
        doms = domains[c * members : (c + 1) * members]
        for s in share(row, scheme, domains=doms):
            per_member[s.index].append(
                share_values(s, scheme, domain=doms[s.index], length=row.size)
            )
    return [
        np.stack([additive_share(i, v, participants, prime) for v in per_member[i]]).astype(
            np.int64
        )
        for i in participants
    ]


def run_members(
    shares: list[NDArray[np.int64]], *, bound: float, prime: int = PRIME
) -> list[list[bool]]:
    rendezvous, results = free_rendezvous(), {}
    errors: list[BaseException] = []

    def member(rank: int) -> None:
        job = NormCheckJob(
            rank=rank,
            world_size=len(shares),
            rendezvous=rendezvous,
            prime=prime,
            frac_bits=FRAC_BITS,
            bound=bound,
            shares=shares[rank],
            timeout_s=90,
        )
        try:
            results[rank] = check_norms(job, start_ttp=rank == 0)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(r,)) for r in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert multiprocessing.active_children() == []
    return [results[r] for r in range(len(shares))]


def test_two_members_accept_honest_reject_scaled_and_field_edge_exactly() -> None:
    enc, length = FieldEncoding(), 64
    rng = np.random.default_rng(1)
    clip = 1.0
    honest = rng.normal(size=length)
    honest *= clip / np.linalg.norm(honest)  # DP-clipped: norm exactly the clip
    edge_pos, edge_neg, edge_over = (np.zeros(length, dtype=np.int64) for _ in range(3))
    edge_pos[0], edge_neg[0] = H, -H
    edge_over[:2] = [-H, 1]
    rows = [
        enc.encode(honest, clients=1),
        enc.encode(10 * honest, clients=1),  # model replacement, x10
        np.full(length, H, dtype=np.int64),  # huge elements at the field edge
        *(np.mod(r, PRIME) for r in (edge_pos, edge_neg, edge_over)),
    ]
    shares = additive_shares(rows, members=3, threshold=2, participants=[0, 2], prime=PRIME)
    got = run_members(shares, bound=bound_for_clip(clip, length=length, frac_bits=FRAC_BITS))
    assert got[0] == got[1] == [True, False, False, False, False, False]
    # At B = H / 2^16 the edge rows sit exactly on the bound (pass) or one step over (fail).
    got = run_members(shares, bound=H / 2**FRAC_BITS)
    assert got[0] == got[1] == [True, True, False, True, True, False]


def test_three_members_reject_a_wrapping_update_and_are_exact_at_the_bound() -> None:
    h = half_prime(BIG_PRIME)
    length = 32
    wrap = np.zeros(length, dtype=np.int64)
    wrap[:16] = h
    wrap[16:18] = 2**17
    # The attack is real: over Z_2^64 its sum of squares wraps to a tiny number.
    squares = [int(v) ** 2 for v in wrap]
    assert sum(squares) % 2**64 < 2**10
    assert sum(squares) > 2**63
    assert length > chunk_size(BIG_PRIME)
    s = 2**12  # 3s, 4s: encoded norm exactly 5s, the bound
    at_bound, over, edge = (np.zeros(length, dtype=np.int64) for _ in range(3))
    at_bound[:2] = [3 * s, -4 * s]
    over[:3] = [3 * s, -4 * s, 1]
    edge[5] = -h
    small = np.arange(length, dtype=np.int64) - length // 2
    rows = [np.mod(r, BIG_PRIME) for r in (wrap, at_bound, over, edge, small)]
    shares = additive_shares(rows, members=4, threshold=3, participants=[0, 2, 3], prime=BIG_PRIME)
    got = run_members(shares, bound=5 * s / 2**FRAC_BITS, prime=BIG_PRIME)
    assert got[0] == got[1] == got[2] == [False, True, False, False, True]


def test_naive_lift_carries_multiples_of_p() -> None:
    # x = -3: field value p - 3, additive shares that sum to 2p - 3 over the integers.
    z0, z1 = PRIME - 1, PRIME - 2
    assert (z0 + z1) % PRIME == PRIME - 3
    naive = z0 + z1  # what Z_2^64 shares z0, z1 reconstruct to
    x = int(to_signed(np.array([naive % PRIME]), PRIME)[0])  # the sound lift, in plaintext
    assert (naive, x) == (16_777_183, -3)  # the naive lift is off by exactly one p
    assert (naive**2, x**2) == (281_473_869_415_489, 9)  # so its norm is wrong
    # The same in MPC: test_sound_lift_gives_x_and_only_the_bits_are_opened.


def _lift_and_audit_party(job: NormCheckJob, rows_out: Any) -> None:
    """Party process for the test: lifts, then runs norm_bits recording every opening."""
    crypten = load_crypten()
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import ArithmeticSharedTensor, BinarySharedTensor

    with party_session(job):
        shares = torch.from_numpy(job.shares)
        naive = MPCTensor.from_shares(shares, precision=0).reveal()
        lifted = lift_signed(
            shares, rank=job.rank, world_size=job.world_size, prime=job.prime
        ).reveal()
        opened: list[list[int]] = []

        def recording(original: Any) -> Any:
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                out = original(self, *args, **kwargs)
                opened.append(torch.as_tensor(out).flatten().long().tolist())
                return out

            return wrapper

        targets = [(MPCTensor, "reveal"), (MPCTensor, "get_plain_text")]
        targets += [
            (ArithmeticSharedTensor, "get_plain_text"),
            (BinarySharedTensor, "get_plain_text"),
        ]
        for cls, name in targets:
            setattr(cls, name, recording(getattr(cls, name)))
        bits = norm_bits(job)
        del crypten
    rows_out.put((job.rank, naive.tolist(), lifted.tolist(), opened, bits))


def test_sound_lift_gives_x_and_only_the_bits_are_opened() -> None:
    values = np.array([-3, H, -H, 0, 1, -1, 12345, -54321], dtype=np.int64)
    rows = [np.mod(values, PRIME), np.mod(values * 1000 % PRIME, PRIME), np.mod(-values, PRIME)]
    shares = additive_shares(rows, members=2, threshold=2, participants=[0, 1], prime=PRIME)
    rendezvous, ctx = free_rendezvous(), multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    jobs = [
        NormCheckJob(
            rank=r,
            world_size=2,
            rendezvous=rendezvous,
            prime=PRIME,
            frac_bits=FRAC_BITS,
            bound=1.0,
            shares=shares[r],
            timeout_s=60,
        )
        for r in range(2)
    ]
    procs = [ctx.Process(target=_lift_and_audit_party, args=(j, queue)) for j in jobs]
    procs.append(ctx.Process(target=run_ttp, args=(rendezvous, 2, 60.0)))
    for p in procs:
        p.start()
    try:
        out = sorted(queue.get(timeout=90) for _ in range(2))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    expected = np.stack([np.asarray(r) for r in rows])
    signed = np.where(expected > PRIME // 2, expected - PRIME, expected)
    for _rank, naive, lifted, opened, bits in out:
        assert np.array_equal(np.asarray(lifted), signed)  # the sound conversion gives x
        assert not np.array_equal(np.asarray(naive), signed)  # the naive lift does not
        assert np.all(np.asarray(naive) % PRIME == expected)  # ... it is off by multiples of p
        assert [len(o) for o in opened] == [3]  # one opening, one element per client
        assert set(opened[0]) <= {0, 1}
        expect = [bool(np.sum(s.astype(object) ** 2) <= 4**FRAC_BITS) for s in signed]
        assert bits == expect


def test_bit_planes_round_trip_and_layout() -> None:
    rng = np.random.default_rng(5)
    for bits, count in [(1, 1), (23, 130), (32, 64), (40, 77)]:
        values = rng.integers(0, 2**bits, size=count, dtype=np.int64)
        values[0] = 2**bits - 1
        planes = pack_planes(values, bits)
        assert planes.shape == (bits, -(-count // 64))
        weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))[:, None]
        assert np.array_equal((unpack_bits(planes, count) * weights).sum(0), values)
    assert pack_bits(np.array([[1, 0, 1] + [0] * 60 + [1]], dtype=np.uint8))[0, 0] == 5 - 2**63
    with pytest.raises(BadInputError):
        pack_planes(np.array([2**23]), 23)
    assert lift_width(PRIME, 2) == 23
    assert lift_width(BIG_PRIME, 3) == 32
    with pytest.raises(BadInputError):
        lift_width(BIG_PRIME, 2**33)


def _lift_party(job: NormCheckJob, out: Any) -> None:
    with party_session(job):
        lifted = lift_signed(
            torch.from_numpy(job.shares), rank=job.rank, world_size=job.world_size, prime=job.prime
        ).reveal()
    out.put((job.rank, lifted.tolist()))


def lift_in_mpc(shares: list[NDArray[np.int64]], prime: int) -> list[list[list[int]]]:
    """Every party's opened :func:`lift_signed` of the additive shares (test only)."""
    rendezvous, ctx = free_rendezvous(), multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    jobs = [
        NormCheckJob(
            rank=r,
            world_size=len(shares),
            rendezvous=rendezvous,
            prime=prime,
            frac_bits=FRAC_BITS,
            bound=1.0,
            shares=shares[r],
            timeout_s=60,
        )
        for r in range(len(shares))
    ]
    procs = [ctx.Process(target=_lift_party, args=(j, queue)) for j in jobs]
    procs.append(ctx.Process(target=run_ttp, args=(rendezvous, len(shares), 60.0)))
    for p in procs:
        p.start()
    try:
        out = sorted(queue.get(timeout=90) for _ in jobs)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return [lifted for _rank, lifted in out]


@pytest.mark.parametrize(("parties", "prime"), [(2, PRIME), (3, BIG_PRIME)])
def test_narrow_lift_is_exact_at_every_threshold(parties: int, prime: int) -> None:
    # Integer sums Z of the parties' lifted values (party 0 shifted by h) at and around
    # every threshold j p, the bottom and the top: the narrow carry circuit must count
    # exactly the thresholds reached.
    h = half_prime(prime)
    sums = [0, 1, parties * (prime - 1)]
    sums += [j * prime + d for j in range(1, parties) for d in (-2, -1, 0, 1)]
    rng = np.random.default_rng(parties)
    local = np.zeros((parties, len(sums)), dtype=np.int64)
    for i, z in enumerate(sums):
        rest = z
        for r in range(parties - 1):  # a random split of z into values in [0, p)
            low, high = max(0, rest - (parties - 1 - r) * (prime - 1)), min(prime - 1, rest)
            local[r, i] = rng.integers(low, high + 1)
            rest -= int(local[r, i])
        local[-1, i] = rest
    assert np.array_equal(local.sum(0), sums)
    assert local.min() >= 0
    assert local.max() < prime
    shares = [np.mod(local[r] - (h if r == 0 else 0), prime)[None, :] for r in range(parties)]
    expected = np.mod(np.array(sums), prime) - h  # x = (Z mod p) - h in [-h, h]
    for lifted in lift_in_mpc(shares, prime):
        assert lifted == [expected.tolist()]


def test_peer_that_never_joins_aborts_within_the_timeout() -> None:
    job = NormCheckJob(
        rank=0,
        world_size=2,
        rendezvous=free_rendezvous(),
        prime=PRIME,
        frac_bits=FRAC_BITS,
        bound=1.0,
        shares=np.zeros((1, 4), dtype=np.int64),
        timeout_s=6,
    )
    started = time.monotonic()
    with pytest.raises(ProtocolAbort, match="never joined"):
        check_norms(job, start_ttp=True)
    assert time.monotonic() - started < 3 + 10
    assert multiprocessing.active_children() == []


def test_crypten_decode_is_off_by_one_where_decode_fixed_is_exact() -> None:
    load_crypten()
    from crypten.encoder import FixedPointEncoder

    raw = torch.tensor(
        [-(2**32), -(2**16) * (2**16 - 1) - 1, -(2**16), -1, 3 * 2**15], dtype=torch.long
    )
    exact = np.array([-65536.0, -65535.0 - 2**-16, -1.0, -(2**-16), 1.5])
    theirs = FixedPointEncoder(16).decode(raw).double().numpy()
    assert theirs[0] == -65537.0  # off by exactly 1.0
    assert theirs[0] - exact[0] == -1.0
    assert np.array_equal(decode_fixed(raw.numpy(), 16), exact)
    assert np.array_equal(decode_fixed(np.array([0, 1, -5], dtype=np.int64), 0), [0.0, 1.0, -5.0])


def test_job_rejects_bad_input() -> None:
    good: dict[str, Any] = {
        "rank": 0,
        "world_size": 2,
        "rendezvous": "127.0.0.1:1234",
        "prime": PRIME,
        "frac_bits": FRAC_BITS,
        "bound": 1.0,
        "shares": np.zeros((1, 4), dtype=np.int64),
        "timeout_s": 5.0,
    }
    NormCheckJob(**good)
    for key, value in [
        ("world_size", 1),
        ("rank", 2),
        ("rendezvous", "nohost"),
        ("bound", float("nan")),
        ("shares", np.full((1, 4), PRIME, dtype=np.int64)),
        ("shares", np.zeros(4, dtype=np.int64)),
        ("bound", 1e9),
        ("timeout_s", 0.0),
    ]:
        with pytest.raises(BadInputError):
            NormCheckJob(**{**good, key: value})
