"""Process-wide allocator tuning for the roles that move megabytes per message.

A committee member handles one CKKS upload of a 1M-parameter model as a handful of 6-16 MB
buffers (the unsealed payload, the decoded coefficients, the expanded ``c1``, the sum).
glibc's ``malloc`` serves blocks that large with a fresh ``mmap`` and returns them to the
kernel on ``free``, so every upload pays a page fault for each 4 KiB (or a zeroed 2 MiB
huge page) of every buffer again. On this project's reference machine that was about a
third of a member's time for 10 uploads (``bench/round.py``: 530 ms against 346 ms with the
heap kept). :func:`keep_freed_memory` raises glibc's two thresholds with ``mallopt`` so that
such blocks come from the heap and stay there once freed: the next upload reuses the same,
already mapped pages. Resident memory then stays at the process's high-water mark instead
of falling back between rounds; it does not grow with the number of uploads (a member
handles one upload per worker thread at a time).

Only glibc is tuned; on any other C library this does nothing. Called once at start by the
member (``python -m cohort.aggregator``, which ``cohort committee serve`` runs) and by
``bench/round.py``, where it was measured to help. Not by a hospital's node, whose warm
ClientApp runner forks a child per message: a parent that keeps its freed heap gives each
fork more pages to share copy-on-write, and nothing was measured there to gain.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (glibc's default starts at 128 KiB and adapts
#: up to 32 MiB); larger ones are still mapped on their own.
MMAP_THRESHOLD = 64 << 20
#: Free memory at the top of the heap is returned to the kernel only beyond this.
TRIM_THRESHOLD = 512 << 20

_done = False


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says (once per process); whether it was
    applied (False off Linux/glibc, or if ``mallopt`` refused)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    _done = bool(ok)
    return _done
