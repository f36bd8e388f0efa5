"""Flower 1.42's fixed retry waits and object-transfer limits, tuned in Cohort's processes.

Run in the deployed ServerApp (the coordinator), in a hospital's SuperNode and in its warm
ClientApp runner. Every Flower message travels as a message plus its content objects (one
per record, array and array chunk: three for each of Cohort's messages, whose one vector
rides inside the config record, see :mod:`cohort.federation.wire`), each pushed and pulled
with its own request.

* Waits. The receiving side is told about a message before all its objects have arrived: the
  SuperNode pulls a message from the SuperLink while the ServerApp is still pushing its
  objects, a ClientApp pulls from its SuperNode while the node is still receiving them, and
  the ServerApp pulls a reply while the node is still pushing it. Each early pull is answered
  "not yet" and Flower's ``pull_objects`` then waits 1 s, 2 s, 4 s, ...
  (``PULL_INITIAL_BACKOFF``, doubling to ``PULL_BACKOFF_CAP`` = 10 s), so a message whose
  last object arrives 10 ms late costs a second or three. Here the retries poll every
  :data:`PULL_FIRST_S` doubling to :data:`PULL_MAX_S`, bounded by Flower's own deadline
  (``PULL_MAX_TIME``, 2 hours) in place of its try count (500 tries of up to 10 s).
* Concurrency. Flower sends at most two object requests at a time, and no more than the
  machine has cores (``get_num_workers``): on 2 cores a message's three objects take two
  request round trips in a row. The requests wait on the network, not on a core; here up to
  :data:`OBJECTS_IN_FLIGHT` go at once whatever the core count.

Nothing else changes: the same objects, hashes, signatures and checks, only the pause
between asking again and how many requests are in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: First pause before asking again for an object that has not arrived (seconds).
PULL_FIRST_S = 0.01
#: Longest pause between two asks; every ask is one request on the same host or LAN.
PULL_MAX_S = 0.1
#: Object requests one push or pull keeps in flight (Flower: 2, at most one per core).
OBJECTS_IN_FLIGHT = 8

_RETRIES = ("initial_backoff", "backoff_cap", "max_tries_per_object", "max_time")


def tune_object_transfers() -> None:
    """Retry object pulls within :data:`PULL_MAX_S` and keep :data:`OBJECTS_IN_FLIGHT`
    object requests in flight, for every Flower push and pull in this process.

    Changes the keyword defaults of ``flwr.supercore.inflatable.inflatable_utils``'s
    ``pull_objects``, ``pull_and_inflate_object_from_tree``, ``push_objects`` and
    ``push_object_contents_from_iterable``, through which Flower's Grid, SuperNode and
    ClientApp move every object, and its ``get_num_workers``; idempotent. RuntimeError if
    the installed Flower no longer has them with these parameters.
    """
    from flwr.supercore.constant import PULL_MAX_TIME
    from flwr.supercore.inflatable import inflatable_utils

    wanted = {
        "pull_objects": (*_RETRIES, "max_concurrent_pulls"),
        "pull_and_inflate_object_from_tree": (*_RETRIES, "max_concurrent_pulls"),
        "push_objects": ("max_concurrent_pushes",),
        "push_object_contents_from_iterable": ("max_concurrent_pushes",),
    }
    found: dict[str, dict[str, Any]] = {}
    for name, keys in wanted.items():
        function: Callable[..., Any] | None = getattr(inflatable_utils, name, None)
        defaults = getattr(function, "__kwdefaults__", None)
        if not isinstance(defaults, dict) or not all(k in defaults for k in keys):
            raise RuntimeError(
                f"this flwr's {name} lacks the parameters Cohort tunes (Flower 1.42 expected)"
            )
        found[name] = defaults
    if not callable(getattr(inflatable_utils, "get_num_workers", None)):
        raise RuntimeError("this flwr has no get_num_workers to widen (Flower 1.42 expected)")
    for defaults in found.values():
        if "max_concurrent_pulls" in defaults:
            defaults.update(
                initial_backoff=PULL_FIRST_S,
                backoff_cap=PULL_MAX_S,
                max_tries_per_object=None,
                max_time=PULL_MAX_TIME,
                max_concurrent_pulls=OBJECTS_IN_FLIGHT,
            )
        else:
            defaults["max_concurrent_pushes"] = OBJECTS_IN_FLIGHT
    setattr(inflatable_utils, "get_num_workers", _in_flight)  # noqa: B010 (a module global)


def _in_flight(max_concurrent: int) -> int:
    """Worker threads for ``max_concurrent`` object requests: each waits on the network."""
    return max(1, max_concurrent)


__all__ = ["OBJECTS_IN_FLIGHT", "PULL_FIRST_S", "PULL_MAX_S", "tune_object_transfers"]
