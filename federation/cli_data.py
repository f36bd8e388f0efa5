"""``cohort data``: data a sponsor prepares for a study.

* ``cohort data normalizer CSV... --out normalizer.json [--label-column label]`` - the
  feature scaling the sponsor publishes in the manifest's ``normalizer`` field, fitted on the
  sponsor's own reference data exactly as docs/privacy.md ("Feature scaling") states
  (:mod:`cohort.clients.reference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cohort.errors import CohortError
from cohort.federation.cli_common import console, err_console
from cohort.federation.cli_common import fail as _fail

data_app = typer.Typer(
    help="Data a sponsor prepares for a study: the feature normaliser it publishes.",
    no_args_is_help=True,
)


@data_app.command("normalizer")
def normalizer(
    csv: Annotated[
        list[Path],
        typer.Argument(
            metavar="CSV...",
            help="Your own reference data (e.g. your held-out evaluation split), never a "
            "hospital's records: header row, numeric features, integer label column.",
        ),
    ],
    out: Annotated[
        Path, typer.Option(help="Where to write the normaliser (JSON for the manifest).")
    ],
    label_column: Annotated[
        str, typer.Option(help="The label column (read and checked, not used).")
    ] = "label",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out file.")
    ] = False,
) -> None:
    """Fit the study's feature normaliser (mean and standard deviation per feature) on CSV...

    The output is what the manifest's `normalizer` field takes (feature names, mean, scale).
    It reveals each feature's mean and standard deviation over the files' rows, nothing else:
    publish it only for data you may publish.
    """
    from cohort.clients.reference import fit_reference_normalizer
    from cohort.files import PUBLIC, write_atomic

    if out.exists() and not out.is_file():
        _fail(f"--out {out}: exists and is not a file", code=2)
    if out.exists() and not overwrite:
        _fail(f"--out {out} already exists (pass --overwrite to replace it)", code=2)
    if any(out.resolve() == path.resolve() for path in csv):
        _fail(f"--out {out} is one of the input files", code=2)
    try:
        fit = fit_reference_normalizer(csv, label_column=label_column)
    except CohortError as exc:
        _fail(str(exc))
    text = json.dumps(fit.normalizer.to_dict(), indent=1) + "\n"
    try:
        write_atomic(out, text.encode("utf-8"), mode=PUBLIC)
    except OSError as exc:
        _fail(f"--out {out}: cannot write ({exc.strerror})")
    features = len(fit.normalizer.feature_names)
    console.print(
        f"wrote {out}: {features} features, mean and standard deviation over {fit.rows} rows "
        f"of {len(fit.files)} file(s)",
        soft_wrap=True,
    )
    err_console.print(
        "it reveals each feature's mean and standard deviation over these files: publish it "
        "(the manifest's normalizer field) only if they are your own reference data, never a "
        "hospital's records (docs/privacy.md)"
    )
