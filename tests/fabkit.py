"""Flower app bundles (FABs) for the tests of the node's FAB check: a zip archive's bytes."""

from __future__ import annotations

import io
import zipfile


def fab(files: dict[str, str]) -> bytes:
    """A zip archive with ``files`` (name -> text), as a FAB's bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return out.getvalue()
