"""The role guides' commands are real: each parses with Cohort's own command line.

The other half of the check (every command ``cohort deploy local`` runs is shown in a guide)
is in test_deploy_local.py, which has the commands the deployment actually ran.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from guidekit import cohort_shape, guide_commands, guide_shapes


def _cohort_commands() -> list[tuple[str, list[str]]]:
    return [
        (guide, argv)
        for guide, commands in guide_commands().items()
        for argv in commands
        if Path(argv[0]).name == "cohort"
    ]


@pytest.mark.parametrize(
    ("guide", "argv"),
    _cohort_commands(),
    ids=lambda v: v if isinstance(v, str) else " ".join(v[1:3]),
)
def test_every_guide_command_parses(guide: str, argv: list[str]) -> None:
    cohort_shape(argv)


def test_each_role_guide_shows_its_deployment_command() -> None:
    shapes = guide_shapes()
    paths = {path: guide for (path, _), guide in shapes.items()}
    assert paths[("node", "start")] == "hospital.md"
    assert paths[("committee", "serve")] == "committee.md"
    for step in ("create", "launch", "status"):
        assert paths[("study", step)] == "sponsor.md"
    assert paths[("deploy", "local")] == "sponsor.md"
    assert ("audit",) in paths


@pytest.mark.parametrize(
    "argv",
    [
        ["cohort", "node", "strat", "--config", "x.toml"],
        ["cohort", "node", "start", "--conifg", "x.toml"],
        ["cohort", "study", "create"],
    ],
)
def test_a_wrong_command_is_caught(argv: list[str]) -> None:
    with pytest.raises(click.UsageError):
        cohort_shape(argv)
