"""Cohort's Flower ServerApp: the coordinator's entry point.

The ServerApp hands Flower's ``Grid`` to a :class:`~cohort.federation.coordinator.Coordinator`
wrapped in a :class:`~cohort.federation.transcript.RecordingGrid`, so every message the
coordinator receives is described in ``coordinator-inbound.jsonl`` next to the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cohort.federation.coordinator import Coordinator, StudyOutcome
from cohort.federation.transcript import RecordingGrid

CoordinatorFactory = Callable[[Grid, Context], Coordinator]


@dataclass
class ServerRun:
    """Where the ServerApp thread leaves its outcome or its error for the caller."""

    outcome: StudyOutcome | None = None
    error: BaseException | None = None
    transcript: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


def make_server_app(factory: CoordinatorFactory, run: ServerRun) -> ServerApp:
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            if run.transcript is not None:
                grid = RecordingGrid(grid, run.transcript)  # type: ignore[assignment]
            run.outcome = factory(grid, context).run()
        except BaseException as exc:  # handed to the caller, re-raised there
            run.error = exc
            raise

    return app
