"""The commands the role guides (docs/guides/*.md) show, parsed the way the programs would.

:func:`guide_commands` reads every ```bash block of the guides, joins ``\\`` continuations
and splits each command into argv (``shlex``). :func:`cohort_shape` parses a ``cohort`` argv
with Cohort's own click tree (an unknown sub-command or option fails) and returns its shape:
the sub-command path and the option names given. The deployment tests compare the shapes of
the commands ``cohort deploy local`` actually ran with the guides' shapes, so a guide cannot
show a command the code does not run, nor the code run one the guides do not show.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import typer

from cohort.federation.cli import app

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ROOT / "docs" / "guides"
FENCE = re.compile(r"```(?:bash|sh)\n(.*?)```", re.DOTALL)

Shape = tuple[tuple[str, ...], frozenset[str]]


def guide_commands(folder: Path = GUIDES) -> dict[str, list[list[str]]]:
    """Every command of every guide: {guide file name: [argv, ...]}."""
    found: dict[str, list[list[str]]] = {}
    for path in sorted(folder.glob("*.md")):
        commands = []
        for block in FENCE.findall(path.read_text(encoding="utf-8")):
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith("#"):
                    continue
                argv = shlex.split(line)
                if ">" in argv:
                    argv = argv[: argv.index(">")]
                commands.append(argv)
        found[path.name] = commands
    return found


def cohort_shape(argv: list[str]) -> Shape:
    """(sub-command path, option names) of a ``cohort`` command; click.UsageError if invalid."""
    if not argv or Path(argv[0]).name != "cohort":
        raise ValueError(f"not a cohort command: {argv[:1]}")
    command: click.Command = typer.main.get_command(app)
    args = argv[1:]
    path: list[str] = []
    ctx = command.make_context("cohort", list(args), resilient_parsing=False)
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        if sub is None or name is None:
            raise click.UsageError(f"unknown command {rest[:1]}")
        path.append(name)
        command = sub
        ctx = command.make_context(name, list(rest), parent=ctx, resilient_parsing=False)
    options = frozenset(a.split("=", 1)[0] for a in args if a.startswith("--"))
    return tuple(path), options


CHECKED = ("cohort", "flower-superlink", "flower-supernode", "flwr")
WORD = re.compile(r"^[a-z][a-z-]*$")


def shape(argv: list[str]) -> Shape:
    """A command's shape: Cohort's are parsed (:func:`cohort_shape`); Flower's are read as
    the program, its leading sub-command words and the option names."""
    program = Path(argv[0]).name
    if program == "cohort":
        return cohort_shape(argv)
    words = [program]
    for arg in argv[1:]:
        if not WORD.match(arg):
            break
        words.append(arg)
    options = frozenset(a.split("=", 1)[0] for a in argv[1:] if a.startswith("--"))
    return tuple(words), options


def guide_shapes() -> dict[Shape, str]:
    """Every shape of a Cohort or Flower command the guides show: {shape: guide file name}."""
    shapes: dict[Shape, str] = {}
    for guide, commands in guide_commands().items():
        for argv in commands:
            if Path(argv[0]).name in CHECKED:
                shapes.setdefault(shape(argv), guide)
    return shapes


def shown_in_guides(argv: list[str], shapes: dict[Shape, str]) -> bool:
    """True if a guide shows this command: the same sub-command, with every option it uses."""
    path, options = shape(argv)
    return any(p == path and options <= o for p, o in shapes)
