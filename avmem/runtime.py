"""Process-level settings for long-running streams."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3


def pin_malloc_mmap_threshold(threshold: int = 64 * 1024) -> bool:
    """Serve allocations above ``threshold`` bytes with mmap, always (glibc only).

    glibc raises its mmap threshold each time a large block is freed, after which large temporary
    tensors come from the heap and their pages stay resident: a stream's RSS then drifts upwards over
    hours. Pinning the threshold returns every large temporary to the OS when freed (peak RSS of a
    20-minute stream within 6 % of a 2-minute one, `benchmarks/stream.py`) at a small cost in system
    calls. The ``avmem`` commands call this at start; call it yourself in long-running programs.

    Returns:
        True if applied; False where there is no glibc ``mallopt`` (macOS, Windows, musl).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False
