"""Keep memory a training step frees inside the process, for the next step, instead of handing it back to the kernel.

XLA's CPU runtime allocates a step's temporary buffers at every call and frees them when it returns. glibc serves
large allocations with their own `mmap` and gives them back with `munmap` (and trims the heap top past 128 KiB),
so every step faulted its gigabytes of temporaries in again as fresh zeroed pages: on the SD-1.5 JAX step, 1.5 s
of kernel time a step on 2 cores (bench/RESULTS.md, issue 21). With `mmap` off and trimming off, freed blocks
stay on glibc's heap and the next step reuses them; the process keeps its peak, which a training run reaches at its
first step anyway. Where the allocation lands changes no number a step computes.

A user's own `MALLOC_*` environment or `GLIBC_TUNABLES` is left alone, as is any C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(environ=os.environ) -> bool:
    """Turn glibc's `mmap` for large blocks and its heap trimming off for this process; True if applied."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in environ for name in USER_SETTINGS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(None)
    # -1 as the trim threshold is SIZE_MAX to glibc: the heap top is never given back.
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
