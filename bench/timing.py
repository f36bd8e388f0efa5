"""Wall-clock timing shared by the benches: medians of repetitions in rotating order.

On a shared machine the load drifts while a bench runs; rotating which side goes first in
each repetition (with two sides: alternating) spreads the drift over all sides, and the
median ignores the repetitions a burst of load hit.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def rotating_times(
    names: Sequence[str], prepare: Callable[[str], Callable[[], object]], *, repeat: int
) -> dict[str, list[float]]:
    """Seconds of ``repeat`` runs of each side, in rotating order (repetition r starts at
    side ``r mod len(names)``). ``prepare(name)`` runs untimed and returns the timed call."""
    times: dict[str, list[float]] = {name: [] for name in names}
    order = list(names)
    for rep in range(repeat):
        shift = rep % len(order)
        for name in order[shift:] + order[:shift]:
            call = prepare(name)
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum of ``values``."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
