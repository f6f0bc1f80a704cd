"""Feeding: claim a job's settled spool files, read them, admit their items.

One ``feed(job)`` task per job first resumes the files it had claimed before a
restart, then claims new ones as they settle, many in one transaction
(``spool.claim_batch``). Files are opened and read in a worker thread
(``sourcefiles.py``), a batch of small files or a chunk of a large one at a time,
so the event loop never waits on a disk. Each item is then admitted within its
provider's slots and bytes (``admission.py``).

A failure that belongs to one file (unreadable, binary, changed while read)
sends it to ``failed/`` and feeding goes on; anything else ends ``feed`` with
the exception, which the daemon's supervision turns into a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from synthd import items as items_mod
from synthd import sourcefiles, spool
from synthd.admission import Admission
from synthd.checkpoint import Checkpoint
from synthd.config import Config
from synthd.errors import InputError
from synthd.models import Source
from synthd.pipeline import JobRuntime
from synthd.scanner import Scanner
from synthd.writer import SourceEnd, Writer

log = structlog.get_logger("synthd.feeder")

CLAIM_BATCH = 256  # files claimed in one transaction (two directory fsyncs)
SHARED_CLAIM_BATCH = 16  # with other nodes on the spool: claim little more than is worked on


class Feeder:
    """Every spool-fed job's feeding: take a source, read it, admit its items."""

    def __init__(
        self,
        config: Config,
        checkpoint: Checkpoint,
        writer: Writer,
        jobs: dict[str, JobRuntime],
        admission: Admission,
        stop: asyncio.Event,
        *,
        once: bool,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.writer = writer
        self.jobs = jobs
        self.admission = admission
        self.once = once
        self.resume_only = False  # a takeover: finish the claimed files, claim nothing new
        self._stop = stop
        self._changed_jobs: set[str] = set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def feed(self, name: str) -> None:
        """Resume this job's claimed files, then claim new ones as they settle."""
        with self.admission.job_feeding(name):
            try:
                await self._feed(name)
            finally:
                if (batcher := self.admission.batchers.get(name)) is not None:
                    batcher.resumed.set()

    async def _feed(self, name: str) -> None:
        job_dir = self.config.paths.spool / name
        cp = self.checkpoint
        await asyncio.to_thread(spool.ensure_layout, job_dir)
        await asyncio.to_thread(spool.sweep_work, cp, job_dir)
        for src in await asyncio.to_thread(cp.active_sources, name):
            if await asyncio.to_thread(spool.claim_happened, cp, src):
                await self._resume_source(name, src)
        if (batcher := self.admission.batchers.get(name)) is not None:
            batcher.resumed.set()
        if self.resume_only:
            return
        scanner = Scanner(job_dir, self.config.service.settle_s)
        loop = asyncio.get_running_loop()
        stats = self.jobs[name].stats
        batch = self._claim_batch(name)
        while not self._stop.is_set():
            if self.config.coordination is not None and not await self.admission.has_room():
                continue
            entries = await asyncio.to_thread(scanner.take, loop.time(), batch)
            stats.bytes_unclaimed = scanner.bytes_waiting
            if entries:
                await self._take(name, job_dir, entries)
                continue
            if self.once and scanner.idle:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.service.scan_interval_s):
                    await self._stop.wait()

    async def _take(self, name: str, job_dir: Path, entries: list[spool.Entry]) -> None:
        """Claim a batch of settled entries and read what was claimed."""
        for e in entries:
            if e.refused is not None:
                await asyncio.to_thread(spool.refuse, job_dir, e.name, "not_a_file", e.refused)
                log.warning("file_refused", job=name, file=e.name, reason=e.refused)
        names = [e.name for e in entries if e.refused is None]
        if not names:
            return
        fingerprint = self.jobs[name].job.fingerprint
        sources, unclaimable = await asyncio.to_thread(
            spool.claim_batch, self.checkpoint, name, job_dir, names, fingerprint
        )
        for filename, err in unclaimable:
            await asyncio.to_thread(spool.refuse, job_dir, filename, "unclaimable", str(err))
            log.warning("file_refused", job=name, file=filename, reason=str(err))
        whole = [s for s in sources if self._kind(name, s) == "file"]
        streamed = [s for s in sources if self._kind(name, s) != "file"]
        await self._read_whole_files(name, whole)
        for src in streamed:
            if self._stop.is_set():
                return
            await self._stream_source(name, src, {})

    def _claim_batch(self, name: str) -> int:
        """Files claimed at a time. Alone, many (fewer fsyncs); sharing the spool with other
        nodes, what this node works on next: a streamed file one at a time, since it is
        read to its end before the next is claimed, and a few whole files."""
        if self.config.coordination is None:
            return CLAIM_BATCH
        return SHARED_CLAIM_BATCH if self.jobs[name].job.config.input == "file" else 1

    def _kind(self, job: str, src: Source) -> str:
        return items_mod.kind_of(src.name, self.jobs[job].job.config.input)

    async def _resume_source(self, name: str, src: Source) -> None:
        rt = self.jobs[name]
        job = rt.job
        if src.fingerprint != job.fingerprint:
            if name not in self._changed_jobs:
                self._changed_jobs.add(name)
                log.warning(
                    "job_changed",
                    job=name,
                    was=src.fingerprint,
                    now=job.fingerprint,
                    note="done items are kept; the rest of this file uses the new settings",
                )
            await asyncio.to_thread(self.checkpoint.set_fingerprint, src.id, job.fingerprint)
        done_after = await asyncio.to_thread(self.checkpoint.done_after, src.id, src.resume_seq)
        skip: frozenset[int] = frozenset()
        if (batcher := self.admission.batchers.get(name)) is not None:
            skip = await asyncio.to_thread(batcher.store.batched_seqs, src.id)
        await self._stream_source(name, src, done_after, skip)

    # -- small files: one item each, read many at a time -------------------------------

    async def _read_whole_files(self, name: str, sources: list[Source]) -> None:
        rt = self.jobs[name]
        cfg = rt.job.config
        max_bytes = self.config.service.max_line_bytes
        pending = list(sources)
        while pending and not self._stop.is_set():
            with self.admission.reading():
                read, pending = await asyncio.to_thread(
                    sourcefiles.read_whole, pending, cfg.text_field, max_bytes
                )
            for src, got, size in read:
                rt.stats.bytes_claimed += size
                if isinstance(got, Exception):
                    await self._fail_source(name, src, got)
                    continue
                item, replaced = got
                if replaced:
                    log.warning("invalid_utf8_replaced", job=name, file=src.name, count=replaced)
                rt.stats.bytes_read += size
                self.writer.track(src, {})
                await self.admission.admit(rt, item, size)
                self.writer.submit(SourceEnd(src.id, 1))

    # -- large files: streamed a chunk at a time -----------------------------------------

    async def _stream_source(
        self,
        name: str,
        src: Source,
        done_after: dict[int, tuple[int, int]],
        skip: frozenset[int] = frozenset(),
    ) -> None:
        rt = self.jobs[name]
        max_line = self.config.service.max_line_bytes
        try:
            f, reader, watch, size = await asyncio.to_thread(
                sourcefiles.open_source, src, rt.job, max_line
            )
        except (InputError, OSError) as e:
            await self._fail_source(name, src, e)
            return
        self.writer.track(src, done_after)
        # What was done before a restart; what this run finishes was read before the cursor.
        done_before = frozenset(done_after)
        total = src.resume_seq
        with self.admission.reading():  # held open while its items are read
            try:
                with f:
                    rt.stats.bytes_claimed += size - src.resume_offset
                    last_end = src.resume_offset
                    things = iter(reader)
                    loop = asyncio.get_running_loop()
                    while chunk := await asyncio.to_thread(
                        sourcefiles.next_chunk, things, watch, loop.time()
                    ):
                        for thing in chunk:
                            total = thing.seq + 1
                            nbytes = thing.end - last_end
                            rt.stats.bytes_read += nbytes
                            last_end = thing.end
                            if thing.seq < src.resume_seq or thing.seq in done_before:
                                continue  # finished before a restart
                            if thing.seq in skip:
                                continue  # in a batch: its result comes from there
                            await self.admission.admit(rt, thing, nbytes)
                            if self._stop.is_set():
                                return
            except InputError as e:
                await self._fail_source(name, src, e)
                return
            except OSError as e:
                await self._fail_source(name, src, InputError("unreadable", str(e)))
                return
            finally:
                if reader.replaced:
                    replaced = reader.replaced
                    log.warning("invalid_utf8_replaced", job=name, file=src.name, count=replaced)
        if total == 0:
            await self._fail_source(name, src, InputError("empty", "no items in the file"))
            return
        self.writer.submit(SourceEnd(src.id, total))

    async def _fail_source(self, name: str, src: Source, e: Exception) -> None:
        reason = e.reason if isinstance(e, InputError) else "unreadable"
        detail = e.detail if isinstance(e, InputError) else str(e)
        job_dir = self.config.paths.spool / name
        self.writer.untrack(src.id)
        await asyncio.to_thread(spool.fail_claimed, self.checkpoint, job_dir, src, reason, detail)
        log.error("file_failed", job=name, file=src.name, reason=reason, detail=detail)
