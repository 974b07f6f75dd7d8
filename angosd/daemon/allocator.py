"""Tune glibc's allocator for a process that moves large buffers all the time.

Upload bodies arrive as 256 KiB ``bytes`` objects, up to 8 MiB of them queued per upload.
With glibc's defaults, buffers that size are ``mmap``ed one by one, and the heap is trimmed
back to the kernel as soon as 128 KiB are free at its top: every buffer then costs fresh
zeroed pages from the kernel (page faults). Serving them from a heap that keeps up to
`TRIM_THRESHOLD` free bytes cut the daemon's CPU time per GiB pushed by about a tenth on the
benchmark machine; peak memory is unchanged (freed bytes are reused, not added).
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: Allocations at least this large get their own mapping (default: 128 KiB, adapting).
MMAP_THRESHOLD = 1024 * 1024
#: Free bytes at the top of the heap kept rather than given back to the kernel.
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune() -> bool:
    """Apply the thresholds above; False (and nothing changed) where the C library is not
    glibc or refuses them."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
