"""JSON encoding for bytes that stay in memory: request bodies and shard batches.

orjson 3.12+ reserves several times the output's size for its result and never
gives the surplus back: a 4 KB request body holds a 32 KB block for as long as
it lives (orjson issue #483; Home Assistant trims the same way, PR #181240). With
thousands of requests in flight that surplus alone is tens of MB. So a body
that is kept is copied to its exact size, and records bound for a shard are
appended to one growing buffer, so each oversized block is freed at once and
the next encode reuses it instead of touching fresh pages. Pure.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    """``obj`` as compact JSON, in a block no larger than the bytes themselves."""
    return bytes(memoryview(orjson.dumps(obj)))


def append_line(buf: bytearray, obj: Any) -> None:
    """Add ``obj`` to ``buf`` as one JSON line."""
    buf += orjson.dumps(obj)
    buf += b"\n"
