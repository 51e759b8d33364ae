"""Keep freed memory in the training process (glibc).

glibc hands every block above its mmap threshold (dynamic, at most 32 MiB) back to the
kernel when it is freed. A paper-size CPU step frees and reallocates gigabytes of
activations, so each step maps them afresh and the kernel zeroes every page on first
touch: about 300,000 page faults and 0.8 s of system time a step. Raising the mmap and
trim thresholds keeps freed blocks in the heap for the next step (once the heap has
settled, after the first few steps, a step takes no fresh pages); the price is that the
process keeps its peak memory until it exits. Nothing changes on other C libraries.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB stay in the heap


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); whether it took."""
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST))
