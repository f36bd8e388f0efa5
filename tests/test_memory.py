"""cohort.memory: the allocator tuning members and the CLI apply at start."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_stay_mapped_after_tuning() -> None:
    """After keep_freed_memory, a freed 40 MB block is reused from the heap: allocating it
    again takes no new page faults. Untuned, glibc maps a block that large afresh every
    time (above its 32 MiB adaptive limit), faulting in each page again (4 KiB pages, or
    2 MiB ones where numpy asks for huge pages: at least 20 faults). Run in children so
    the tuning does not leak into this process."""
    program = """
import resource, sys
import numpy as np
from cohort.memory import keep_freed_memory
tune = sys.argv[1] == "tune"
if tune:
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
def faults_of_one_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(5_000_000, dtype=np.uint64)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_buffer()
print(min(faults_of_one_buffer() for _ in range(3)))
"""

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", program, mode], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip())

    assert faults("plain") >= 20
    assert faults("tune") <= 2
