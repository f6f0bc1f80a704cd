"""Reading claimed spool files: every function here blocks and runs in a worker thread.

Small whole-file inputs are read many per trip (``read_whole``), each into its one item.
A streamed file (lines, JSONL, chunks) is opened where its work resumes (``open_source``)
and read a chunk of items at a time (``next_chunk``), checking at each chunk that the
claimed file was not deleted, replaced or resized under us.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from synthd import items as items_mod
from synthd import spool
from synthd.config import Job
from synthd.errors import InputError
from synthd.models import BadLine, Source, WorkItem

log = structlog.get_logger("synthd.sourcefiles")

READ_BATCH_BYTES = 8 * 1024 * 1024  # small files read in one trip to a thread
CHUNK_ITEMS = 256  # items of a large file read in one trip to a thread
CHUNK_BYTES = 4 * 1024 * 1024

Thing = WorkItem | BadLine
WholeRead = tuple[Source, tuple[WorkItem, int] | Exception, int]  # item, replaced; or why not


def read_whole(
    sources: list[Source], text_field: str, max_bytes: int
) -> tuple[list[WholeRead], list[Source]]:
    """Read small claimed files into their one item each, up to ``READ_BATCH_BYTES``;
    returns what was read (with each file's size) and the sources left for later."""
    out: list[WholeRead] = []
    budget = READ_BATCH_BYTES
    for i, src in enumerate(sources):
        if budget <= 0:
            return out, sources[i:]
        try:
            raw = read_file(src, max_bytes)
            out.append((src, items_mod.whole_file_item(src, raw, max_bytes), len(raw)))
            budget -= len(raw)
        except (InputError, OSError) as e:
            out.append((src, e, 0))
    return out, []


def read_file(src: Source, max_bytes: int) -> bytes:
    """A small file's bytes (one more than ``max_bytes`` at most), UTF-8 if it had a BOM.

    Never asks for ``max_bytes`` at once: a read of 4 MB maps and unmaps a 4 MB
    buffer, which would cost more than a small file's own read.
    """
    raw = read_upto(src.path, max_bytes + 1)
    if spool.bom_codec(raw[:4]) is not None:
        codec = spool.transcode_if_bom(Path(src.path))
        log.info("transcoded", job=src.job, file=src.name, codec=codec)
        raw = read_upto(src.path, max_bytes + 1)
    return raw


def read_upto(path: str, most: int) -> bytes:
    """Up to ``most`` bytes of a file. A short read of a regular file is its end, so a
    small file costs one read, with a buffer its size rather than ``most``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts, total, ask = [], 0, 1 << 16
        while total < most:
            ask = min(ask, most - total)
            chunk = os.read(fd, ask)
            parts.append(chunk)
            total += len(chunk)
            if len(chunk) < ask:
                break
            ask *= 4
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def open_source(
    src: Source, job: Job, max_line: int
) -> tuple[Any, items_mod.Reader | items_mod.ChunkReader, spool.ClaimWatch, int]:
    """Open a claimed file where its work resumes: a UTF-16/32 file is made UTF-8 first.
    Returns the open file, its reader, the watch on the claim and the file's size."""
    path = Path(src.path)
    if spool.untouched(src):
        codec = spool.transcode_if_bom(path)
        if codec is not None:
            log.info("transcoded", job=src.job, file=src.name, codec=codec)
    f = spool.open_at_resume(src, path)
    try:
        watch = spool.ClaimWatch(f.fileno(), src.path)
    except OSError:
        f.close()
        raise
    reader = items_mod.reader_for(src, f, job.config, max_line, job.chunk_tokens)
    return f, reader, watch, watch.size


def next_chunk(things: Iterator[Thing], watch: spool.ClaimWatch, now: float) -> list[Thing]:
    """The next items of a streamed file; empty at its end.

    Raises ``InputError`` if the claimed file was deleted, replaced or resized.
    """
    watch.check(now)
    chunk: list[Thing] = []
    start = None
    for thing in things:
        chunk.append(thing)
        start = thing.end if start is None else start
        if len(chunk) >= CHUNK_ITEMS or thing.end - start >= CHUNK_BYTES:
            break
    if not chunk:
        watch.check()  # a truncated file ends early, as if it were whole
    return chunk
