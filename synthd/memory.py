"""Give freed heap memory back to the OS, so RSS follows live memory.

Contexts, prompts and records are strings of a few KB, so they live in malloc's
heap, not Python's small-object arenas. Freed out of order they leave free
holes between live blocks, and glibc only returns the top of the heap to the
OS: without help RSS stays at the run's high-water mark. Two glibc calls
return the holes as well (on a 200,000-line run at 2048 in flight: peak 155
instead of 165 MB, and a plateau near 115 instead of 158 MB). On another C
library this module does nothing. (The larger cause of heap growth, orjson's
oversized results, is handled in ``jsonbytes``.)
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Any

TRIM_EVERY_S = 1.0
_M_MMAP_THRESHOLD = -3  # from <malloc.h>
_MMAP_THRESHOLD_BYTES = 128 * 1024


def glibc() -> Any:
    """glibc, when it is the C library and has ``malloc_trim``; else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl and others lack it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


async def release_freed_memory() -> None:
    """Run forever: every second, hand every free heap page back (``malloc_trim``)."""
    libc = glibc()
    if libc is None:
        return
    # A fixed mmap threshold: glibc would otherwise raise it after the first
    # large free, and the writer's MB-sized batch buffers would then come from
    # (and fragment) the heap instead of being unmapped when freed.
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    while True:
        await asyncio.sleep(TRIM_EVERY_S)
        # In a thread: on a fragmented heap one trim takes tens of ms, and ctypes
        # lets go of the GIL for it, so the loop goes on meanwhile.
        await asyncio.to_thread(libc.malloc_trim, 0)
