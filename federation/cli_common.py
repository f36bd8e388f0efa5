"""What every ``cohort`` sub-command shares: the consoles and one-line refusals."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console(highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def fail(message: str, *, code: int = 1) -> NoReturn:
    """One line on stderr, then exit ``code`` (2: bad command line, 1: refused or failed)."""
    err_console.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(Text.assemble(("warning: ", "bold yellow"), message))


def line(label: str, value: str, *, indent: int = 2, width: int = 16) -> None:
    """``label  value`` on one line that is never wrapped (hashes stay whole)."""
    console.print(
        Text.assemble(" " * indent, (f"{label:<{width}}", "bold"), " ", value), soft_wrap=True
    )


def heading(title: str) -> None:
    console.print(Text(title, style="bold underline"), soft_wrap=True)
