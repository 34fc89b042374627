"""Keep freed activation memory in the process instead of handing it back to the kernel.

A CPU forward pass allocates and frees the same few megabyte-sized activation tensors on
every batch. glibc's malloc serves requests above its mmap threshold with a fresh ``mmap``
and returns them with ``munmap``; below it, it trims the heap top back to the kernel once
more than the trim threshold is free. Either way the next batch page-faults its activations
in again (the kernel zeroes every page). Its *dynamic* threshold usually learns to avoid
this, but not in a process whose heap is also churned by small objects between batches:
a worker that parses 64 messages, builds 64 results and talks to Redis per batch. There
the forward ran ~20 % slower than the same forward in a quiet process
(``bench/stream_throughput.py``: "arms inside the workers" against "arms alone"), with
15,000-23,000 page faults per ResNet-20 batch of 64 where it should have next to none.

``keep_freed_memory()`` sets both thresholds high with ``mallopt`` (what the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables do, but
from inside the process). The price: the process keeps its peak heap (a few hundred MB
for batch 64 on ResNet-20) instead of returning it between batches. PyTorch's CPU
performance guide recommends the same thing by another route (jemalloc or tcmalloc).
A no-op, returning False, where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest value glibc's dynamic threshold would reach by itself
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds; True if both were accepted."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: allocator thresholds left as they are")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting either one turns glibc's dynamic threshold off
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not ok:
        log.warning("mallopt refused the allocator thresholds; CPU forwards may page-fault their activations")
    return ok
