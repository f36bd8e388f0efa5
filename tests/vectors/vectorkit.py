"""What every test-vector generator here and its test share: one JSON rendering, the write,
and loading a generator (a script, not a package module) by name.

A generator's ``render()`` must reproduce its checked-in file exactly; its test compares the
two, so a change to a format shows up as a changed file in review."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).parent


def render(document: dict[str, Any], *, sort_keys: bool = False) -> str:
    """The checked-in form of a vector file: one-space indented JSON and a final newline."""
    return json.dumps(document, indent=1, sort_keys=sort_keys) + "\n"


def write(path: Path, text: str) -> int:
    """Write a rendered vector file and say so on stderr; the generator's exit status."""
    path.write_text(text)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def load_generator(name: str) -> ModuleType:
    """The generator script ``tests/vectors/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
