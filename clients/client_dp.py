"""Client-level DP by distributed noise: each owner's share of the noise, and its accounting.

A study whose manifest carries ``client_dp = (C, sigma)`` protects a whole data owner's
contribution (add or remove one hospital's update), on top of DP-SGD's record-level
guarantee. No one adds the aggregate's noise centrally: the coordinator only ever sees
the securely aggregated sum, so each owner adds its share before encryption.

* Run by a data owner, per round (:func:`privatize_update`): clip the *weighted* update to
  L2 norm C (so one owner moves the sum by at most C whatever its weight), then add
  N(0, (sigma C)^2 / m) per value, m = the manifest's ``min_clients``, drawn from the
  ChaCha20 generator of :mod:`cohort.clients.noise` under a fresh 256-bit OS key (or, when
  the owner's local policy seeds, a seeded key: reproducible, not private). A sum over
  |S| >= m owners carries N(0, (sigma C)^2 |S| / m) per value: std at least sigma C.
* Run by the coordinator and re-derived by the auditor (:func:`client_level_epsilon`), from
  public data only (|S| per round, C, sigma, m): round t is a Gaussian mechanism of
  sensitivity C and noise std sigma C sqrt(|S_t| / m), i.e. effective noise multiplier
  ``z_t = sigma * sqrt(|S_t| / m) >= sigma`` (no subsampling: every owner of S is in the
  sum). T rounds compose exactly to mu-GDP with ``mu = sqrt(sum_t z_t^-2)`` (Dong, Roth and
  Su 2019), whose tight (epsilon, delta) curve is
  ``delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` (Balle and Wang 2018);
  :func:`client_level_epsilon` inverts it. Dropouts mean a smaller S and a smaller z_t, and
  the accounting counts the realized S; S below m is refused by members and owners.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cohort.clients.noise import ChaChaStream, random_key, seeded_key
from cohort.errors import BadInputError

#: Stream purpose of the client-level noise (independent of DP-SGD's noise and sampling).
CLIENT_NOISE = b"client-dp-noise"
#: Seeded-key domain (as DP-SGD's, independent of the study: see ``derive_noise_key``).
SEEDED_DOMAIN = "cohort/seeded-client-dp"
#: The accountant behind :func:`client_level_epsilon`: exact Gaussian composition.
ACCOUNTANT = "analytic-gdp"
#: The neighbouring relation the client-level epsilon is stated under.
NEIGHBOURING_RELATION = "add_or_remove_one_client"


def round_key(*, noise_seed: int | None, owner: str, round: int) -> bytes:
    """Run by a data owner: the round's 256-bit key (OS randomness unless its policy seeds)."""
    if noise_seed is None:
        return random_key()
    return seeded_key(noise_seed, owner=owner, domain=SEEDED_DOMAIN, round=round)


def clip(update: NDArray[np.float64], *, clip_norm: float) -> NDArray[np.float64]:
    """``update`` scaled down to L2 norm at most ``clip_norm`` (unchanged when within it)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise BadInputError(f"clip_norm must be finite and > 0 (L2 bound C), got {clip_norm!r}")
    values = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(values))
    if not math.isfinite(norm):
        raise BadInputError("update has a non-finite value: cannot clip it")
    if norm <= clip_norm:
        return values.copy()
    clipped: NDArray[np.float64] = values * (clip_norm / norm)
    return clipped


def privatize_update(
    update: NDArray[np.float64],
    *,
    clip_norm: float,
    noise_multiplier: float,
    min_clients: int,
    key: bytes,
) -> NDArray[np.float64]:
    """Run by a data owner before encoding: clip to C, add N(0, (sigma C)^2 / m) per value.

    ``noise_multiplier`` (sigma), ``clip_norm`` (C) and ``min_clients`` (m) come from the
    approved manifest, never from a coordinator's message; ``key`` from :func:`round_key`.
    """
    if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
        raise BadInputError(f"min_clients must be an integer >= 1, got {min_clients!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise BadInputError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    clipped = clip(update, clip_norm=clip_norm)
    std = noise_multiplier * clip_norm / math.sqrt(min_clients)
    stream = ChaChaStream.derive(key, CLIENT_NOISE)
    noised: NDArray[np.float64] = clipped + stream.gaussian(clipped.shape[0], std=std)
    return noised


@dataclass(frozen=True)
class ClientLevelEvent:
    """What happened in one released round: a Gaussian on the sum of ``clients`` owners."""

    round: int
    clients: int
    noise_multiplier: float  # effective: the aggregate's noise std / C

    @classmethod
    def of_round(
        cls, round: int, *, clients: int, noise_multiplier: float, min_clients: int
    ) -> ClientLevelEvent:
        """The event of a round aggregating ``clients >= min_clients`` owners' updates."""
        if clients < min_clients:
            raise BadInputError(
                f"round {round}: {clients} owners in the client set, fewer than the "
                f"{min_clients} the client-level noise is calibrated for"
            )
        return cls(round, clients, noise_multiplier * math.sqrt(clients / min_clients))


def _delta(eps: float, mu: float) -> float:
    from scipy.special import log_ndtr, ndtr  # type: ignore[import-untyped]

    a, b = -eps / mu + mu / 2, -eps / mu - mu / 2
    return float(ndtr(a) - math.exp(eps + float(log_ndtr(b))))


def client_level_epsilon(noise_multipliers: Sequence[float], *, delta: float) -> float:
    """Epsilon at ``delta`` of Gaussian mechanisms (sensitivity 1, std ``z_t``) composed.

    Exact (module doc), up to the root finder's 1e-10; no mechanism means epsilon 0.
    """
    if not 0 < delta < 1:
        raise BadInputError(f"delta must be in (0, 1), got {delta!r}")
    if not noise_multipliers:
        return 0.0
    if not all(math.isfinite(z) and z > 0 for z in noise_multipliers):
        raise BadInputError("noise multipliers must be finite and > 0")
    mu = math.sqrt(sum(z**-2 for z in noise_multipliers))
    if _delta(0.0, mu) <= delta:
        return 0.0
    from scipy.optimize import brentq  # type: ignore[import-untyped]

    high = 1.0
    while _delta(high, mu) > delta:
        high *= 2
    eps = brentq(lambda e: _delta(e, mu) - delta, 0.0, high, xtol=1e-10)
    return float(eps) + 1e-10  # the root finder's bracket: never below the true epsilon
