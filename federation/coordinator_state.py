"""The coordinator's resumable state: what a restarted coordinator needs to go on.

Written atomically after every round the coordinator finished (played or skipped), into one
folder::

    <out>/coordinator-state/state.json   study id, last finished round, round and client records
    <out>/coordinator-state/model.npy    the global model after that round

A restarted coordinator (``cohort study launch`` again, or a ServerApp restarted by its
SuperLink) reloads it and continues with the next round; the earlier rounds are neither
replayed nor counted twice. Nothing here is trusted by anyone else: each hospital's own
ledger refuses a (study, round) it already trained, each member refuses a second client set
for a round, and the contract finalizes a round once. The state is the coordinator's own
bookkeeping, so losing it costs the rounds it would have skipped, never a budget.

A round that was open but unfinished when the coordinator died is played again from the same
global model: a hospital that trained it already answers with its stored receipt and spends
no budget (:mod:`cohort.federation.train_receipts`), a member that opened or aggregated it
returns what it holds (the same client set gets the same signed result), and an owner that
decrypted its aggregate may decrypt that same aggregate again. So the round is counted once
and nobody is charged twice.

A round whose aggregate its members have signed and the chain has attested is saved as
``pending`` until its sum is revealed (:mod:`cohort.federation.reveal`): beside the next
round's training, or by decryption messages. A restarted coordinator reveals a pending sum
the same way and goes on with the next round; an owner decrypts the same aggregate again,
arrives at the same model and, for a round it trained already, sends its stored receipt.
One gap remains: a coordinator that dies after the members aggregated a round and before it
saved the round as pending (while it attests on the chain) plays that round again, and the
members refuse to open a round they aggregated (``round_not_after``): the study stops with
that reason.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cohort.errors import BadInputError
from cohort.federation.coordinator import ClientRecord, RoundRecord, StudyOutcome
from cohort.files import write_atomic

STATE_DIR = "coordinator-state"
STATE_FILE = "state.json"
MODEL_FILE = "model.npy"
STATE_FORMAT = "cohort-coordinator-state/1"


@dataclass
class CoordinatorState:
    """Rounds the coordinator finished, and the round it had opened last."""

    study_id: str
    finished_round: int = 0
    opened_round: int = 0
    rounds: list[RoundRecord] = field(default_factory=list)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    node_errors: list[dict[str, str]] = field(default_factory=list)
    model: np.ndarray | None = None
    #: The round played after ``finished_round`` whose sum is not yet revealed
    #: (:meth:`cohort.federation.coordinator.Pending.to_json`), if any.
    pending: dict[str, Any] | None = None

    @property
    def next_round(self) -> int:
        played = int(self.pending["record"]["round"]) if self.pending else self.finished_round
        return played + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "study_id": self.study_id,
            "finished_round": self.finished_round,
            "opened_round": self.opened_round,
            "rounds": [asdict(r) for r in self.rounds],
            "clients": {k: asdict(c) for k, c in self.clients.items()},
            "node_errors": self.node_errors,
            "pending": self.pending,
        }

    def restore(self, outcome: StudyOutcome) -> None:
        """Put the finished rounds and the clients' counters back into ``outcome``."""
        outcome.rounds = list(self.rounds)
        for party, record in self.clients.items():
            outcome.clients[party] = record
        outcome.node_errors = list(self.node_errors)


class StateStore:
    """One study's state folder under the coordinator's output directory."""

    def __init__(self, out: Path) -> None:
        self.root = out / STATE_DIR

    def load(self, study_id: str) -> CoordinatorState | None:
        """The saved state of ``study_id``; None when there is none. Another study's: refused."""
        path = self.root / STATE_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            if data["study_id"] != study_id:
                raise BadInputError(
                    f"{path}: holds the state of study {str(data['study_id'])[:16]}, not "
                    f"{study_id[:16]}; use another output folder"
                )
            state = CoordinatorState(
                study_id=study_id,
                finished_round=int(data["finished_round"]),
                opened_round=int(data["opened_round"]),
                rounds=[RoundRecord(**r) for r in data["rounds"]],
                clients={k: ClientRecord(**c) for k, c in data["clients"].items()},
                node_errors=list(data["node_errors"]),
                pending=data.get("pending"),
            )
            if state.pending is not None and not isinstance(state.pending, dict):
                raise ValueError("pending must be an object")
            state.next_round  # noqa: B018 (the pending round's number must read)
        except BadInputError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BadInputError(f"{path}: unreadable coordinator state ({exc})") from None
        model_path = self.root / MODEL_FILE
        if state.finished_round > 0 or state.pending is not None:
            try:
                state.model = np.load(model_path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BadInputError(f"{model_path}: unreadable global model ({exc})") from None
        return state

    def save(self, state: CoordinatorState) -> None:
        """Write the model first, then the state that points at it (both atomically)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if state.model is not None:
            buffer = io.BytesIO()
            np.save(buffer, state.model, allow_pickle=False)
            write_atomic(self.root / MODEL_FILE, buffer.getvalue())
        text = json.dumps(state.to_json(), indent=2) + "\n"
        write_atomic(self.root / STATE_FILE, text.encode("utf-8"))
