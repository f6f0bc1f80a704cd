"""The heap: freed memory given back to the OS, and the cyclic collector kept short.

Freed memory goes back so that RSS follows live memory. Contexts, prompts and
records are strings of a few KB, so they live in malloc's heap, not Python's
small-object arenas. Freed out of order they leave free holes between live
blocks, and glibc only returns the top of the heap to the OS: without help RSS
stays at the run's high-water mark. Two glibc calls return the holes as well
(on a 200,000-line run at 2048 in flight: peak 155 instead of 165 MB, and a
plateau near 115 instead of 158 MB). On another C library this does nothing.
(The larger cause of heap growth, orjson's oversized results, is handled in
``jsonbytes``.)

The cyclic collector stops the loop while it walks a generation's objects.
A full collection walks everything alive, start-up included (modules, pydantic
models, aiohttp): 50-110 ms on the benchmark machine, several times a run, and
the largest event-loop lags in bench/throughput.py were those pauses. At run
time the daemon makes no cyclic garbage on its way (collections with
``gc.DEBUG_SAVEALL`` over a whole run found none after start-up), so
``settle_gc`` takes the start-up heap out of the collector's reach. The middle
generation is then collected on a clock (``collect_middle``), not after every
few young collections: most of what a request allocates lives for its whole trip
(queued, then in flight: hundreds of ms), longer than the 15 ms between young
collections, so it was walked once as young and once more by a middle collection
of 4-23 ms, 12 times a second; that was a sixth of the daemon's CPU, and the
largest share of the loop's lag at full speed. Every 30 s, most of it is gone
(freed by its reference count, never walked). Cycles made at run time (an
exception kept with its traceback, on error paths) are still freed: by the next
young or middle collection, or, once older than that, by a full collection of
what start-up did not freeze (every 10 middle ones: 5 minutes).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
from typing import Any

TRIM_EVERY_S = 1.0
_M_MMAP_THRESHOLD = -3  # from <malloc.h>
_MMAP_THRESHOLD_BYTES = 128 * 1024
# The youngest generation as CPython's default; the middle one never by count (it is
# collect_middle's, on a clock); a full one after 10 middle ones.
GC_THRESHOLDS = (700, 1_000_000, 10)
# Its pause walks what is in flight (30 ms at 512 requests, 80 at 2048, at full speed):
# rare enough that the loop's p99 lag never sees it, instead of 12 pauses of 4-23 ms a second.
MIDDLE_EVERY_S = 30.0


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


def settle_gc() -> int:
    """Once start-up is over: freeze what exists now (the collector never walks it
    again) and space out full collections. Process-wide: the CLI's daemon calls it,
    an embedded one does not. Returns how many objects were frozen."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()


async def collect_middle() -> None:
    """Run forever, after ``settle_gc``: collect the middle generation every
    ``MIDDLE_EVERY_S`` (on the loop: a collection holds the GIL wherever it runs)."""
    while True:
        await asyncio.sleep(MIDDLE_EVERY_S)
        gc.collect(1)
