"""Process-level settings that matter for CPU training speed.

glibc serves allocations above a (dynamic) threshold with fresh ``mmap`` pages and returns
them on free, so every training step that allocates large temporaries (FBGEMM's backward
pass does, for the sorted indices and per-row gradients) pays page faults for them again.
Keeping such blocks on the heap roughly halves the time of a fused-Adagrad step here
(see docs/performance.md). This is what ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` or a jemalloc / tcmalloc preload do; :func:`tune_malloc` does it
from inside the process. The ``reccomp`` command calls it; library users may too.

Example::

    >>> from reccomp.runtime import tune_malloc
    >>> tune_malloc()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_done = False


def tune_malloc(
    mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30, top_pad: int = 64 << 20
) -> bool:
    """Keep blocks under ``mmap_threshold`` bytes on the heap and freed memory in the process.

    Returns True when glibc accepted the settings (False elsewhere, e.g. macOS or musl).
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, trim_threshold),
            (_M_TOP_PAD, top_pad),
        )
    )
    _done = ok
    return ok
