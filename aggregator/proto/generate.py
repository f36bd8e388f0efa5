"""Regenerate committee_pb2.py, committee_pb2_grpc.py and their .pyi type stubs.

Run from anywhere with the project's virtual environment::

    python aggregator/proto/generate.py

Needs grpcio-tools and mypy-protobuf (the ``dev`` extra). The gRPC module that protoc
writes imports ``committee_pb2`` as a top-level module; this script rewrites that line to a
package-relative import so the code works as ``cohort.aggregator.proto``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = "committee.proto"


def _plugin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise SystemExit(f"{name} not found: install mypy-protobuf")
    return found


def main() -> int:
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={HERE}",
        f"--grpc_python_out={HERE}",
        f"--mypy_out={HERE}",
        f"--mypy_grpc_out={HERE}",
        str(HERE / PROTO),
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return int(code)
    for name in ("committee_pb2_grpc.py", "committee_pb2_grpc.pyi"):
        module = HERE / name
        fixed, count = re.subn(
            r"^import committee_pb2 as (\w+)$",
            r"from . import committee_pb2 as \1",
            module.read_text(encoding="utf-8"),
            flags=re.MULTILINE,
        )
        if count != 1:
            print(f"could not rewrite the committee_pb2 import in {name}", file=sys.stderr)
            return 1
        module.write_text(fixed, encoding="utf-8")
    print(f"generated {PROTO} -> committee_pb2.py(i), committee_pb2_grpc.py(i)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
