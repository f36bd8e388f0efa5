"""L2-norm input validation inside MPC: the party logic, run by each committee member.

Run inside a fresh process per check (:mod:`cohort.aggregator.mpc_validation` spawns it):
CrypTen's communicator is process-global and must never live in a long-running server.

Pre-conditions: the ``world_size`` participating members each hold an ADDITIVE share over
``F_p`` of every client's encoded update (:func:`cohort.crypto.shamir.additive_share` of the
summed Shamir points), rows = clients. Parties 0..k-1 plus one TTP process (rank ``k``,
:func:`run_ttp`) meet over torch.distributed (gloo, ``tcp://`` init; rank 0 hosts the store).
Beaver triples, square pairs and B2A bits come from CrypTen's TTP provider, never its
debugging trusted-first-party provider. Security is CrypTen's: semi-honest parties, and the
TTP must not collude with a member. Only one bit per client is opened.

The protocol, for each client row (all clients batched in one tensor):

1. Sound lift F_p -> Z_2^64. Party 0 adds ``h = (p - 1) / 2`` to its share mod p, so the
   field sum is ``v = x + h`` in ``[0, p)`` where ``x`` is the signed value in ``[-h, h]``.
   The integer sum of the shares is ``Z = v + w p`` with ``w`` in ``[0, k - 1]`` (no ring wrap:
   ``Z < k p``). ``w`` is the number of public thresholds ``j p`` (j = 1..k-1) that ``Z``
   reaches, then ``x = Z - h - p w``. The ``k - 1`` secret comparisons run on a narrow
   binary circuit (:func:`wrap_count`), not CrypTen's 64-bit A2B: every value is below
   ``2^W`` with ``W`` = :func:`lift_width` (23 bits for k = 2 and the default prime), each
   party bit-slices its own share into W bit planes (64 elements per int64 word), and
   ``Z >= j p`` is the carry out of ``A + D_j`` where ``A`` is the binary sum of parties
   ``0..k-2`` and ``D_j = B + 2^W - j p`` is known to the last party. The carry is a
   generate/propagate tree (1 + ceil(log2 W) rounds of TTP binary triples), the bits become
   additive shares by one TTP random bit each (B2A). About 30 bytes per element per party
   instead of about 570. Shares enter with precision 0 (raw integers), so no fixed-point
   truncation touches the integer phase.
2. Squares by one TTP square pair: ``x^2 <= h^2 < 2^44`` exactly, no truncation.
3. Sums without wraparound: squares are summed in chunks of ``m`` with ``m h^2 < 2^62``, so
   every chunk sum is exact. The client passes iff every chunk sum AND the total are at most
   ``T = floor(B^2 4^f)``; if every chunk is at most ``T`` the total is at most ``C T < 2^62``
   (checked at job creation), so it cannot wrap either. A malicious client gains nothing from
   huge elements: after step 1 every element is in ``[-h, h]``.

So the check is exact on the encoded vector: ``||x|| <= B`` always passes and ``||x|| > B``
always fails (slack 0; no truncation is used, see :data:`CHUNK_BITS`). The one slack is the
client's own rounding onto the 2^-f grid: a float update of norm ``c`` encodes to norm at
most ``c + sqrt(n) 2^-(f+1)``; :func:`bound_for_clip` returns that bound for a DP clip norm.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from cohort.crypto.crypten_compat import load_crypten
from cohort.crypto.fixed_point import check_prime
from cohort.errors import BadInputError, ProtocolAbort

#: Every chunk sum and the threshold stay below 2^CHUNK_BITS, so sums and differences of
#: them never leave the signed int64 ring.
CHUNK_BITS = 62
#: Widest lift circuit (bits); planes are packed from unsigned 64-bit words.
PLANE_BITS_MAX = 62
#: Intra-op threads per party/TTP process. The work is element-wise and memory-bound and
#: the processes wait on each other every round: torch's default pool (one thread per
#: core in every process) oversubscribes the cores and made a 1M check about 2.5x slower.
TORCH_THREADS = 1
PROVIDER = "TTP"
BACKEND = "gloo"


def half_prime(prime: int) -> int:
    """``h = (p - 1) / 2``: signed field values are ``[-h, h]``."""
    return (prime - 1) // 2


def chunk_size(prime: int) -> int:
    """Largest ``m`` with ``m h^2 < 2^62``: squares summed ``m`` at a time never wrap."""
    return max(1, int((2**CHUNK_BITS - 1) // half_prime(prime) ** 2))


def threshold(bound: float, frac_bits: int) -> int:
    """``floor(B^2 4^f)``: an integer sum of squares passes iff it is at most this."""
    limit: int = math.floor(Fraction(bound) ** 2 * Fraction(4) ** frac_bits)
    return limit


def bound_for_clip(clip_norm: float, *, length: int, frac_bits: int) -> float:
    """The bound ``B`` (value units) an update clipped to ``clip_norm`` always meets once
    rounded onto the 2^-frac_bits grid: ``clip_norm + sqrt(length) 2^-(frac_bits + 1)``."""
    return clip_norm + math.sqrt(length) * 2.0 ** -(frac_bits + 1)


def decode_fixed(raw: NDArray[np.int64], precision_bits: int) -> NDArray[np.float64]:
    """``raw / 2^precision_bits`` as float64, exact whenever representable (|raw| < 2^53).

    CrypTen's ``FixedPointEncoder.decode`` divides negative values by ``2^b - 1`` and is off
    by exactly 1.0 below about ``-2^b (2^b - 1)`` (raw ``-2^32`` decodes to -65537 at b = 16);
    this floors by shifting and adds the remainder, so no such case exists.
    """
    if not isinstance(precision_bits, int) or not 0 <= precision_bits < 63:
        raise BadInputError(f"precision_bits must be an integer in [0, 63), got {precision_bits}")
    array = np.asarray(raw, dtype=np.int64)
    whole = np.right_shift(array, precision_bits)
    frac = np.bitwise_and(array, np.int64((1 << precision_bits) - 1))
    decoded: NDArray[np.float64] = whole.astype(np.float64) + np.ldexp(
        frac.astype(np.float64), -precision_bits
    )
    return decoded


def _split_rendezvous(rendezvous: str) -> tuple[str, int]:
    host, sep, port = rendezvous.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"rendezvous must be 'host:port', got {rendezvous!r}")
    return host, int(port)


@dataclass(frozen=True, eq=False)
class NormCheckJob:
    """One member's part of one norm check. ``shares`` is (clients, length) int64 in
    ``[0, prime)``: this member's ADDITIVE share of each client's encoded update."""

    rank: int
    world_size: int
    rendezvous: str
    prime: int
    frac_bits: int
    bound: float
    shares: NDArray[np.int64]
    timeout_s: float

    def __post_init__(self) -> None:
        for name in ("rank", "world_size", "frac_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadInputError(f"{name} must be an integer, got {value!r}")
        if self.world_size < 2 or not 0 <= self.rank < self.world_size:
            raise BadInputError(
                f"need world_size >= 2 parties and 0 <= rank < world_size, "
                f"got rank {self.rank}, world_size {self.world_size}"
            )
        _split_rendezvous(self.rendezvous)
        check_prime(self.prime)
        if not 0 <= self.frac_bits < 31:
            raise BadInputError(f"frac_bits must be in [0, 31), got {self.frac_bits}")
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise BadInputError(
                f"timeout_s must be a positive number of seconds, got {self.timeout_s}"
            )
        shares = self.shares
        if not isinstance(shares, np.ndarray) or shares.ndim != 2 or shares.dtype != np.int64:
            raise BadInputError("shares must be a 2-D int64 array (clients, length)")
        if shares.shape[0] < 1 or shares.shape[1] < 1:
            raise BadInputError(
                f"shares must have at least one client and value, got {shares.shape}"
            )
        if int(shares.min()) < 0 or int(shares.max()) >= self.prime:
            raise BadInputError(f"shares must lie in [0, {self.prime})")
        if not math.isfinite(self.bound) or self.bound < 0:
            raise BadInputError(
                f"bound must be a finite L2 norm >= 0 (value units), got {self.bound}"
            )
        if self.chunks * threshold(self.bound, self.frac_bits) >= 2**CHUNK_BITS:
            raise BadInputError(
                f"bound {self.bound} (L2, value units) too large for {self.length} values: "
                f"need chunks * B^2 * 4^frac_bits < 2^{CHUNK_BITS}"
            )

    @property
    def clients(self) -> int:
        return int(self.shares.shape[0])

    @property
    def length(self) -> int:
        return int(self.shares.shape[1])

    @property
    def chunks(self) -> int:
        return -(-self.length // chunk_size(self.prime))


def _configure(rank: int, world_size: int, rendezvous: str, timeout_s: float) -> Any:
    """Environment and config for CrypTen's communicator in this (fresh) process; every
    torch.distributed wait (the rendezvous included) is bounded by ``timeout_s``."""
    import torch.distributed.distributed_c10d as c10d

    host, port = _split_rendezvous(rendezvous)
    torch.set_num_threads(TORCH_THREADS)
    # A forked process inherits its parent's torch RNG; the TTP draws its PRG seeds from it.
    torch.manual_seed(int.from_bytes(os.urandom(8), "big"))
    c10d.default_pg_timeout = dt.timedelta(seconds=timeout_s)
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": BACKEND,
            "RENDEZVOUS": f"tcp://{host}:{port}",
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
        }
    )
    crypten = load_crypten()
    crypten.cfg["mpc.provider"] = PROVIDER
    return crypten


@contextmanager
def party_session(job: NormCheckJob) -> Iterator[Any]:
    """CrypTen initialised as party ``job.rank`` (TTP provider); yields the module."""
    crypten = _configure(job.rank, job.world_size, job.rendezvous, job.timeout_s)
    crypten.init()
    try:
        yield crypten
    finally:
        crypten.uninit()


def lift_width(prime: int, world_size: int) -> int:
    """Bits ``W`` of the lift's binary circuit: ``(k - 1) p < 2^W``, so the partial sum of
    parties ``0..k-2`` and every threshold fit, and ``W`` (not 64) bits are compared."""
    width = ((world_size - 1) * prime).bit_length()
    if width > PLANE_BITS_MAX:
        raise BadInputError(
            f"(world_size - 1) * prime must be below 2^{PLANE_BITS_MAX}, "
            f"got world_size {world_size}, prime {prime}"
        )
    return width


def pack_bits(bits: NDArray[np.uint8]) -> NDArray[np.int64]:
    """(rows, count) 0/1 -> (rows, ceil(count / 64)) int64: element ``64 w + j`` of a row is
    bit ``j`` of word ``w`` (zero padding past ``count``)."""
    rows, count = bits.shape
    words = -(-count // 64)
    padded = np.zeros((rows, words * 64), dtype=np.uint8)
    padded[:, :count] = bits
    packed = np.packbits(padded, axis=-1, bitorder="little").view(np.dtype("<i8"))
    return packed.astype(np.int64)


def unpack_bits(words: NDArray[np.int64], count: int) -> NDArray[np.int64]:
    """Inverse of :func:`pack_bits`: (rows, words) -> (rows, count) 0/1 int64."""
    raw = np.ascontiguousarray(words, dtype=np.dtype("<i8")).view(np.uint8)
    return np.unpackbits(raw, axis=-1, bitorder="little")[:, :count].astype(np.int64)


def pack_planes(values: NDArray[np.int64], bits: int) -> NDArray[np.int64]:
    """Bit planes (bits, ceil(n / 64)) of ``n`` values in ``[0, 2^bits)``: plane ``i`` packs
    bit ``i`` of every value (layout of :func:`pack_bits`), so one int64 AND gate works on
    64 values at once and only ``bits`` planes travel, not 64."""
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >> bits):
        raise BadInputError(f"values must lie in [0, 2^{bits})")
    kind = np.dtype("<u4") if bits <= 32 else np.dtype("<u8")
    as_bytes = flat.astype(kind).view(np.uint8).reshape(flat.size, kind.itemsize)
    columns = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return pack_bits(columns.T)


def _and(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """This party's XOR share of ``x & y`` (one Beaver AND round, TTP binary triple)."""
    from crypten.mpc.primitives import BinarySharedTensor, beaver

    out = beaver.AND(BinarySharedTensor.from_shares(x), BinarySharedTensor.from_shares(y))
    share: torch.Tensor = out.share
    return share


def _add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XOR shares of the planes of ``(x + y) mod 2^W`` from planes (W, words) of ``x``, ``y``
    (ripple carry: W - 1 AND rounds of one plane each). Only for ``world_size > 2``."""
    carry = _and(x[:1], y[:1])[0]
    out = [x[0] ^ y[0]]
    for i in range(1, x.shape[0]):
        out.append(x[i] ^ y[i] ^ carry)
        if i < x.shape[0] - 1:
            carry = _and((x[i] ^ carry)[None], (y[i] ^ carry)[None])[0] ^ carry
    return torch.stack(out)


def _carry_out(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """XOR shares (words,) of the carry out of ``x + y`` (1 iff ``x + y >= 2^W``) from planes
    (W, words): generate/propagate prefix tree, ``1 + ceil(log2 W)`` AND rounds. ``G`` and
    ``P`` of a group are never both 1, so ``G_hi | (P_hi & G_lo)`` is an XOR; the lowest
    group's ``P`` is never needed and not computed."""
    g, p = _and(x, y), x ^ y
    while g.shape[0] > 1:
        pairs = g.shape[0] // 2
        g_lo, g_hi = g[0 : 2 * pairs : 2], g[1 : 2 * pairs : 2]
        p_lo, p_hi = p[0 : 2 * pairs : 2], p[1 : 2 * pairs : 2]
        prod = _and(torch.cat([p_hi, p_hi[1:]]), torch.cat([g_lo, p_lo[1:]]))
        g_next = g_hi ^ prod[:pairs]
        p_next = torch.cat([torch.zeros_like(p_hi[:1]), prod[pairs:]])  # row 0: unused
        g = torch.cat([g_next, g[2 * pairs :]])
        p = torch.cat([p_next, p[2 * pairs :]])
    return g[0]


def _b2a_bits(packed: torch.Tensor, count: int, *, rank: int) -> torch.Tensor:
    """Additive Z_2^64 shares (rows, count) of the bits XOR-shared as ``packed`` (rows,
    words): a TTP random bit ``r`` in both forms, open ``z = b ^ r`` (packed, uniform),
    ``b = z + r - 2 z r``."""
    import crypten
    from crypten.mpc.primitives import BinarySharedTensor

    r_arith, r_bin = crypten.mpc.get_default_provider().B2A_rng((packed.shape[0], count))
    mask = torch.from_numpy(pack_bits((r_bin.share & 1).numpy().astype(np.uint8)))
    opened = BinarySharedTensor.from_shares(packed ^ mask).reveal()
    z = torch.from_numpy(unpack_bits(opened.numpy(), count))
    share: torch.Tensor = r_arith.share * (1 - 2 * z) + (z if rank == 0 else 0)
    return share


def wrap_count(local: torch.Tensor, *, rank: int, world_size: int, prime: int) -> torch.Tensor:
    """This party's additive Z_2^64 share of ``w = #{j in 1..k-1 : Z >= j p}`` per element,
    where ``Z`` is the integer sum of the parties' ``local`` values (each in ``[0, p)``).

    Narrow circuit on bit planes, W = :func:`lift_width` bits: ``A`` = binary sum of parties
    ``0..k-2`` (no circuit for k = 2: party 0's bits), ``D_j = B + 2^W - j p`` is known to the
    last party (``B`` its value; in ``[0, 2^W)``), and ``Z >= j p`` iff ``A + D_j`` carries
    out of W bits. All thresholds and elements go through one carry circuit; the only
    openings are Beaver-masked and the B2A value ``b ^ r``."""
    k, width = world_size, lift_width(prime, world_size)
    flat = local.reshape(-1).numpy()
    mine = torch.from_numpy(pack_planes(flat, width))
    zero = torch.zeros_like(mine)
    acc = mine if rank == 0 else zero
    for party in range(1, k - 1):
        acc = _add(acc, mine if rank == party else zero)
    if rank == k - 1:
        steps = [pack_planes(flat + (2**width - j * prime), width) for j in range(1, k)]
        other = torch.from_numpy(np.concatenate(steps, axis=1))
    else:
        other = zero.repeat(1, k - 1)
    carries = _carry_out(acc.repeat(1, k - 1), other).view(k - 1, -1)
    bits = _b2a_bits(carries, flat.size, rank=rank)
    return bits.sum(0).view(local.shape)


def lift_signed(shares: torch.Tensor, *, rank: int, world_size: int, prime: int) -> Any:
    """MPCTensor (precision 0) of the signed values in ``[-h, h]`` whose additive F_p shares
    are ``shares`` (step 1 of the module docstring). Call inside :func:`party_session`."""
    from crypten.mpc import MPCTensor

    h = half_prime(prime)
    local = (shares + h) % prime if rank == 0 else shares.clone()
    wraps = wrap_count(local, rank=rank, world_size=world_size, prime=prime)
    total = MPCTensor.from_shares(local, precision=0)
    return total - h - MPCTensor.from_shares(wraps, precision=0) * prime


def norm_bits(job: NormCheckJob) -> list[bool]:
    """Accept bit per client: ``||x|| <= bound``. Opens exactly one bit per client and
    nothing else. Call inside :func:`party_session`."""
    from crypten.mpc import MPCTensor
    from crypten.mpc.primitives import beaver

    x = lift_signed(
        torch.from_numpy(job.shares), rank=job.rank, world_size=job.world_size, prime=job.prime
    )
    squares = beaver.square(x._tensor).share
    m, chunks = chunk_size(job.prime), job.chunks
    padded = torch.nn.functional.pad(squares, (0, chunks * m - job.length))
    sums = padded.view(job.clients, chunks, m).sum(-1)
    if chunks > 1:
        sums = torch.cat([sums, sums.sum(-1, keepdim=True)], -1)
    limit = threshold(job.bound, job.frac_bits)
    within = (MPCTensor.from_shares(sums, precision=0) - (limit + 1))._ltz()  # sum <= T
    accept = (chunks - within.sum(-1))._ltz() if chunks > 1 else within.sum(-1)
    raw = accept.reveal().numpy().astype(np.int64)
    bits = decode_fixed(raw, 0)
    if not np.isin(bits, (0.0, 1.0)).all():
        raise ProtocolAbort("norm check: an opened accept value is not a bit")
    return [bool(b) for b in bits]


def run_party(job: NormCheckJob) -> list[bool]:
    """The whole check as party ``job.rank``: join, compute, open the bits, leave."""
    with party_session(job):
        return norm_bits(job)


def run_ttp(rendezvous: str, world_size: int, timeout_s: float) -> None:
    """CrypTen's TTP server (rank ``world_size``) for one check; returns when party 0 ends
    the session. ``timeout_s`` bounds the rendezvous and every wait on the parties."""
    crypten = _configure(world_size, world_size, rendezvous, timeout_s)
    from crypten.mpc.provider.ttp_provider import TTPServer

    TTPServer()
    crypten.uninit()
