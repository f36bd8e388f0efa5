"""No usage reports: Flower's telemetry is off in every process that imports Cohort.

Flower sends a usage event to ``https://telemetry.flower.ai`` from every SuperLink,
SuperNode, ServerApp, ClientApp and simulation unless ``FLWR_TELEMETRY_ENABLED=0``
(``flwr.supercore.telemetry``). Each event names the platform, the Python and Flower
versions and a per-machine id; a ClientApp sends one when it starts a message and waits up
to 4 s at its end for the one it sends then. A hospital's node must reach only the
endpoints its operator configured (the SuperLink, the committee, the chain), so importing
:mod:`cohort` sets ``FLWR_TELEMETRY_ENABLED=0`` for this process and every process it
starts: ``cohort node start``'s SuperNode and ClientApp runner, ``cohort deploy local``'s
SuperLink and nodes, ``cohort study launch``'s ``flwr run``. An operator who wants
Flower's telemetry sets ``FLWR_TELEMETRY_ENABLED=1`` themselves; that choice is kept.
The container image sets the variable too, for the Flower commands that never import
Cohort (``flower-superlink``, ``flower-superexec``).
"""

from __future__ import annotations

import os
import sys

TELEMETRY_ENV = "FLWR_TELEMETRY_ENABLED"
_TELEMETRY_MODULE = "flwr.supercore.telemetry"


def keep_flower_offline() -> None:
    """Switch Flower's telemetry off unless ``FLWR_TELEMETRY_ENABLED`` is set; idempotent.

    Flower reads the variable once, when its telemetry module is imported: a process that
    imported Flower before Cohort (``flwr-serverapp`` loading the ServerApp) also gets the
    module's flag switched off.
    """
    if os.environ.get(TELEMETRY_ENV) is not None:
        return
    os.environ[TELEMETRY_ENV] = "0"
    telemetry = sys.modules.get(_TELEMETRY_MODULE)
    if telemetry is not None:
        telemetry.FLWR_TELEMETRY_ENABLED = "0"  # type: ignore[attr-defined]


__all__ = ["TELEMETRY_ENV", "keep_flower_offline"]
