"""Import CrypTen 0.4.1 on torch 2.x.

CrypTen's ONNX converter imports ``torch.onnx._internal.registration``, which torch 2.x no
longer ships. Cohort never converts ONNX models, so before importing CrypTen we register an
empty stand-in for that one module; everything Cohort uses (secret sharing, the
communicator over torch.distributed) is untouched. Later MPC issues build on this.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_MISSING = "torch.onnx._internal.registration"


def load_crypten() -> Any:
    """Import and return the ``crypten`` module (adding the stand-in module if needed)."""
    if _MISSING not in sys.modules:
        try:
            importlib.import_module(_MISSING)
        except ImportError:
            stub = types.ModuleType(_MISSING)
            stub.registry = None  # type: ignore[attr-defined]
            sys.modules[_MISSING] = stub
    return importlib.import_module("crypten")
