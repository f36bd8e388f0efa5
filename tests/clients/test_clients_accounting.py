"""The accountant's memo on disk (clients/accounting.py)."""

from __future__ import annotations

import json
from pathlib import Path


def test_the_disk_memo_answers_a_fresh_process_and_ignores_foreign_files(tmp_path: Path) -> None:
    """A deployed ClientApp is a fresh process per message: the calibration is read back
    from the owner's memo folder, and a file answering other arguments is not trusted."""
    from cohort.clients import accounting

    args = {"target_epsilon": 2.0, "delta": 1e-5, "sample_rate": 0.25, "steps": 8}
    accounting.use_disk_memo(tmp_path)
    try:
        sigma = accounting.calibrate_noise_multiplier(**args)
        (memo,) = [p for p in tmp_path.iterdir() if not p.name.startswith("rdp-")]
        accounting.calibrate_noise_multiplier.cache_clear()
        assert accounting.calibrate_noise_multiplier(**args) == sigma
        # a file whose recorded key is another question is recomputed, not believed
        record = json.loads(memo.read_text())
        memo.write_text(json.dumps({"key": record["key"].replace("2.0", "9.0"), "value": 0.01}))
        accounting.calibrate_noise_multiplier.cache_clear()
        assert accounting.calibrate_noise_multiplier(**args) == sigma
        memo.write_text("not json")
        accounting.calibrate_noise_multiplier.cache_clear()
        assert accounting.calibrate_noise_multiplier(**args) == sigma
    finally:
        accounting.use_disk_memo(None)
        accounting.calibrate_noise_multiplier.cache_clear()
