#!/usr/bin/env python3
"""Write one party's share of the demo study's data as a CSV file (Docker Compose demo).

Run by each hospital in its own container (``--hospital N``: that hospital's records only)
and by the sponsor (``--test``: the held-out split it evaluates on and fits the normaliser
to). Every party computes the same seeded split of scikit-learn's breast-cancer set
(:func:`cohort.clients.data.demo_split`, Dirichlet label skew) and keeps only its own part,
so no container ever holds another party's records. The values are written unscaled: the
hospitals apply the normaliser the sponsor publishes in the manifest.

A file that already exists is kept, so a hospital can mount its own CSV at the same path
instead (and drop this step). Real patient data never passes through this script.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (the compose test parses every service's call with it)."""
    parser = argparse.ArgumentParser(
        prog="demo_data.py", description="Write one party's part of the demo split as CSV."
    )
    parser.add_argument("--hospitals", type=int, required=True, help="hospitals in the split")
    parser.add_argument("--seed", type=int, required=True, help="the split's seed")
    part = parser.add_mutually_exclusive_group(required=True)
    part.add_argument("--hospital", type=int, metavar="N", help="hospital N's records (1-based)")
    part.add_argument("--test", action="store_true", help="the sponsor's held-out test split")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--label-column", default="label", help="label column name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out: Path = args.out
    if args.hospital is not None and not 1 <= args.hospital <= args.hospitals:
        parser.error(f"--hospital must be in 1..{args.hospitals}, got {args.hospital}")
    if out.exists():
        print(f"demo_data: {out} exists, keeping it", flush=True)
        return 0
    from cohort.clients.data import demo_split

    hospitals, test = demo_split(num_hospitals=args.hospitals, seed=args.seed, standardize=False)
    data = test if args.test else hospitals[args.hospital - 1]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*data.feature_names, args.label_column])
            for row, label in zip(data.features.tolist(), data.labels.tolist(), strict=True):
                writer.writerow([*(f"{value:.9g}" for value in row), int(label)])
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"demo_data: wrote {len(data)} records to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
