"""A data owner's record of the rounds it trained, so that training a round is idempotent.

After a round's update is uploaded, the owner keeps its receipt next to its approval of the
study (``<workdir>/studies/<study>/receipts/round-<r>.json``) together with the hash of the
global model it trained on. Asked to train the same round again (a coordinator that crashed
and resumed, or one that replays a message), the owner answers with the stored receipt and
spends no budget, provided the global model is the same; for any other model it declines,
because its ledger already holds that round (:class:`~cohort.clients.privacy.RoundReplayed`).

The file holds what the coordinator already received (ids, counts, epsilon, hashes, the
committee's signed upload receipts), never the update.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import BadInputError
from cohort.federation import wire
from cohort.federation.approval import study_dir
from cohort.files import PRIVATE, write_atomic

FORMAT = "cohort-train-receipt/1"


@dataclass(frozen=True)
class StoredReceipt:
    """The receipt of round ``round`` and the global model (hash) it answered."""

    round: int
    global_hash: bytes
    receipt: wire.TrainReceipt


def _path(workdir: Path, study_id: str, round: int) -> Path:
    return study_dir(workdir, study_id) / "receipts" / f"round-{round}.json"


def save(workdir: Path, study_id: str, stored: StoredReceipt) -> None:
    record = {
        "format": FORMAT,
        "round": stored.round,
        "global_hash": stored.global_hash.hex(),
        "receipt": stored.receipt.to_json(),
    }
    path = _path(workdir, study_id, stored.round)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(record, indent=1) + "\n").encode("utf-8"), mode=PRIVATE)


def load(workdir: Path, study_id: str, round: int) -> StoredReceipt | None:
    path = _path(workdir, study_id, round)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT or record.get("round") != round:
            raise ValueError("format or round")
        return StoredReceipt(
            round=round,
            global_hash=bytes.fromhex(record["global_hash"]),
            receipt=wire.TrainReceipt.from_json(record["receipt"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{path}: unreadable train receipt ({exc})") from None
