"""A job's backlog as the daemon would read it, for ``synthd dry-run``, and its tally.

Claimed files first (from their resume points in the checkpoint, skipping items already
done), then unclaimed files oldest first, opened, transcoded and streamed by the daemon's
own ``synthd.spool`` and ``synthd.items`` functions, so memory does not grow with the spool.
Nothing is moved or written: spool files are opened for reading, the checkpoint read-only,
and a UTF-16/32 file, which the daemon transcodes in place when it claims it, is transcoded
into a temporary copy instead.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synthd import items as items_mod
from synthd import spool
from synthd.checkpoint import Checkpoint
from synthd.config import Config, Job
from synthd.models import BadLine, Source, WorkItem


@dataclass(slots=True)
class Backlog:
    """What is left to do for one job."""

    files_pending: int = 0  # in spool/<job>/, not claimed yet
    files_claimed: int = 0  # in .work/, with work left
    requests: int = 0  # items that would be sent (one request each, n = samples)
    bad_lines: int = 0  # lines the reader refuses: invalid JSON, no text field, too long
    unsendable: int = 0  # items the daemon would refuse: missing placeholder, prompt too long ...
    prompt_tokens: int = 0  # estimated
    completion_tokens_max: int = 0  # max_tokens × samples per request: an upper bound
    reserved_tokens: int = 0  # what the budget reserves: prompt + max_tokens × samples
    failing_files: dict[str, str] = field(default_factory=dict)  # name -> reason
    # A pipeline stage: items its upstream's backlog would hand it (their tokens are in the
    # figures above), at ``fan_out`` items per upstream record, all records assumed kept.
    projected_requests: int = 0
    fan_out: float | None = None
    context_chars: int = 0  # of the items counted, real and projected: passed down the chain


def files_in_order(
    cfg: Config, job: Job, cp: Checkpoint | None, tally: Backlog
) -> Iterator[tuple[Source, Path, set[int]]]:
    """The job's files in the daemon's order: claimed ones, then the spool's, oldest first.

    Each comes with the seqs already done past its resume point (claimed files only).
    """
    job_dir = cfg.paths.spool / job.name
    if cp is not None:
        for src in cp.active_sources(job.name):
            if not spool.claim_surely_happened(cp, src):
                continue  # a claim whose rename never happened: the daemon forgets it
            tally.files_claimed += 1
            yield src, Path(src.path), set(cp.done_after(src.id, src.resume_seq))
    try:
        entries = spool.scan(job_dir)
    except FileNotFoundError:
        return
    for entry in entries:
        tally.files_pending += 1
        if entry.refused is not None:
            tally.failing_files[entry.name] = "not_a_file"
            continue
        src = Source(0, job.name, "dry-run", entry.name, str(job_dir / entry.name), job.fingerprint)
        yield src, job_dir / entry.name, set()


def read_items(cfg: Config, job: Job, src: Source, path: Path) -> Iterator[WorkItem | BadLine]:
    """The items of one file from its resume point, read by the daemon's own functions.

    A file the daemon would transcode at claim time is transcoded into a temporary copy.
    """
    with contextlib.ExitStack() as stack:
        if spool.untouched(src) and spool.file_bom_codec(path) is not None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="synthd-dry-run-"))
            path = spool.utf8_copy(path, Path(tmp))
        f = stack.enter_context(spool.open_at_resume(src, path))
        max_line = cfg.service.max_line_bytes
        yield from items_mod.reader_for(src, f, job.config, max_line, job.chunk_tokens)
