"""JSON bytes that are kept in memory take no more room than their length."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import orjson

from synthd import jsonbytes

BODY = {"model": "m", "messages": [{"role": "user", "content": "é context " * 400}]}


def _bytes_held_each(make: Callable[[], bytes], count: int = 100) -> tuple[list[bytes], float]:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return kept, held / count


def test_dumps_is_orjson_output_in_a_block_of_its_own_size() -> None:
    kept, each = _bytes_held_each(lambda: jsonbytes.dumps(BODY))
    assert kept[0] == orjson.dumps(BODY)
    # Room for the bytes header and the list; orjson's own result holds ~14x here.
    assert each < 1.25 * len(kept[0])


def test_append_line_writes_one_json_line_per_object() -> None:
    buf = bytearray()
    objs = [BODY, {"n": 1}, {"text": "line\nbreak"}]
    for obj in objs:
        jsonbytes.append_line(buf, obj)
    lines = bytes(buf).split(b"\n")
    assert lines[-1] == b""  # newline-terminated
    assert [orjson.loads(line) for line in lines[:-1]] == objs
