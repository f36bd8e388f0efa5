"""A committee member's own folder of what a mode keeps per accepted upload between
acceptance and aggregation: one file per (round, payload hash), written atomically, removed
once the round is summed. Run by committee members (CKKS coefficients, MPC share values)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


class KeptFiles:
    """``folder/<round>-<payload hash hex><suffix>`` files: a header, then one array."""

    def __init__(self, folder: Path, suffix: str) -> None:
        self.folder = folder
        self.suffix = suffix

    def path(self, round: int, key: bytes) -> Path:
        return self.folder / f"{round:010d}-{key.hex()}{self.suffix}"

    def write(self, round: int, key: bytes, header: bytes, array: np.ndarray) -> None:
        """Write ``header`` and ``array``'s bytes atomically (a reader never sees half)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(header)
                array.tofile(f)
            os.replace(tmp, self.path(round, key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def release(self, round: int) -> None:
        """Remove the files (and stray temporaries) of rounds up to ``round``."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            stem = path.name.split("-", 1)[0]
            if path.suffix in (self.suffix, ".tmp") and (not stem.isdigit() or int(stem) <= round):
                path.unlink(missing_ok=True)
