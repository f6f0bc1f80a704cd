"""Feeding: claim a job's settled spool files and admit their items.

One ``feed(job)`` task per job first resumes the files it had claimed before a
restart, then claims new ones as they settle, many in one transaction
(``spool.claim_batch``). Files are opened and read in a worker thread, a batch
of small files or a chunk of a large one at a time, so the event loop never
waits on a disk. Each item takes one of its provider's admission slots
(``max_in_flight`` + 256) and its bytes from the provider's byte budget before
it is rendered; both come back when its outcome is committed. Those two bounds
keep memory flat whatever the size of the spool or of its files.

A failure that belongs to one file (unreadable, binary, changed while read)
sends it to ``failed/`` and feeding goes on; anything else ends ``feed`` with
the exception, which the daemon's supervision turns into a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from synthd import items as items_mod
from synthd import spool
from synthd.allowance import Allowance
from synthd.batches import JobBatches
from synthd.checkpoint import Checkpoint
from synthd.config import Config
from synthd.errors import InputError
from synthd.models import BadLine, Outcome, Source, WorkItem
from synthd.pipeline import Attempt, JobRuntime, prepare
from synthd.records import bad_input
from synthd.scanner import Scanner
from synthd.writer import SourceEnd, Writer

log = structlog.get_logger("synthd.feeder")

# Items admitted beyond max_in_flight: enough that a sender finishing a request
# finds the next one rendered and waiting, few enough to keep memory flat.
ADMIT_AHEAD = 256
# Bytes of input admitted and not yet durable, per provider. An item holds its
# context three or four times over (fields, rendered text, request body, record),
# so with 4 MB files this keeps the peak near 200 MB (bench/big_files.py); with
# ordinary contexts of a few KB the slots bind long before it does.
ADMIT_BYTES = 32 * 1024 * 1024
CLAIM_BATCH = 256  # files claimed in one transaction (two directory fsyncs)
SHARED_CLAIM_BATCH = 16  # with other nodes on the spool: claim little more than is worked on
READ_BATCH_BYTES = 8 * 1024 * 1024  # small files read in one trip to a thread
CHUNK_ITEMS = 256  # items of a large file read in one trip to a thread
CHUNK_BYTES = 4 * 1024 * 1024
YIELD_EVERY = 32  # items rendered between two chances for the loop to do other work

Thing = WorkItem | BadLine


class Feeder:
    """Every job's feeding, and the count of what is admitted but not yet durable."""

    def __init__(
        self,
        config: Config,
        checkpoint: Checkpoint,
        writer: Writer,
        jobs: dict[str, JobRuntime],
        stop: asyncio.Event,
        *,
        once: bool,
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.writer = writer
        self.jobs = jobs
        self.once = once
        self.resume_only = False  # a takeover: finish the claimed files, claim nothing new
        # Sharing the spool, a node claims more only when its senders could use it: what
        # it holds admitted but unsent, another node could be sending.
        self._room = max((p.max_in_flight for p in config.providers.values()), default=1)
        self._roomy = asyncio.Event()
        self._stop = stop
        self.slots = {
            name: asyncio.Semaphore(cfg.max_in_flight + ADMIT_AHEAD)
            for name, cfg in config.providers.items()
        }
        self.budgets = {name: Allowance(ADMIT_BYTES) for name in config.providers}
        self._held: dict[tuple[int, int], int] = {}  # (source id, seq) -> bytes admitted
        self._since_yield = 0
        self.outstanding = 0  # admitted items, plus files being read
        self.feeding = 0  # feed() tasks still running
        self.quiet = asyncio.Event()  # nothing left to read or to finish
        self._changed_jobs: set[str] = set()
        # Pipelines (synthd.handoff): a stage waits on its event for its upstream's commits,
        # and in once mode ends when its upstream is no longer feeding and has nothing admitted.
        self.feeding_jobs = set(config.jobs)
        self.job_outstanding: Counter[str] = Counter()
        self.stages_of: dict[str, list[str]] = {}
        for name, job in config.jobs.items():
            if job.config.from_ is not None:
                self.stages_of.setdefault(job.config.from_, []).append(name)
        self.stage_events = {s: asyncio.Event() for ss in self.stages_of.values() for s in ss}
        self.batchers: dict[str, JobBatches] = {}  # batch-mode jobs (batches.py), by name

    def committed(self, outcomes: list[Outcome]) -> None:
        """The writer made these durable: their slots are free again."""
        for o in outcomes:
            if (rt := self.jobs.get(o.source.job)) is not None:
                self._release(rt, (o.source.id, o.seq))
        if self.outstanding <= self._room:
            self._roomy.set()
        if self.stages_of:
            self.wake_stages({o.source.job for o in outcomes})
        self._check_quiet()

    def wake_stages(self, jobs: set[str]) -> None:
        """Tell the stages of ``jobs`` that there may be new items, or an end, upstream."""
        for job in jobs:
            for stage in self.stages_of.get(job, ()):
                self.stage_events[stage].set()

    def upstream_finished(self, job: str) -> bool:
        """No more records will come from ``job`` in this run (once mode)."""
        return job not in self.feeding_jobs and self.job_outstanding[job] <= 0

    def job_fed(self, job: str) -> None:
        """``job``'s feeder has returned: its stages may be able to end too."""
        self.feeding_jobs.discard(job)
        self.wake_stages({job})
        self._check_quiet()

    def _release(self, rt: JobRuntime, key: tuple[int, int]) -> None:
        """An admitted item is done with its slot: committed, or packed into a batch (whose
        items a restart finds again in the checkpoint, not among the admitted)."""
        if key not in self._held:
            return  # a batch's item from before a restart, or one released when packed
        provider = rt.job.config.provider
        self.slots[provider].release()
        if held := self._held.pop(key):
            self.budgets[provider].release(held)
        self.outstanding -= 1
        self.job_outstanding[rt.job.name] -= 1

    async def until_outstanding_zero(self) -> None:
        while self.outstanding:
            self.quiet.clear()
            await self.quiet.wait()

    def _check_quiet(self) -> None:
        if self.outstanding == 0 and self.feeding == 0:
            self.quiet.set()

    async def feed(self, name: str) -> None:
        """Resume this job's claimed files, then claim new ones as they settle."""
        self.feeding += 1
        try:
            job_dir = self.config.paths.spool / name
            cp = self.checkpoint
            await asyncio.to_thread(spool.ensure_layout, job_dir)
            await asyncio.to_thread(spool.sweep_work, cp, job_dir)
            for src in await asyncio.to_thread(cp.active_sources, name):
                if await asyncio.to_thread(spool.claim_happened, cp, src):
                    await self._resume_source(name, src)
            if (batcher := self.batchers.get(name)) is not None:
                batcher.resumed.set()
            if self.resume_only:
                return
            scanner = Scanner(job_dir, self.config.service.settle_s)
            loop = asyncio.get_running_loop()
            stats = self.jobs[name].stats
            batch = self._claim_batch(name)
            while not self._stop.is_set():
                if self.config.coordination is not None and not await self._has_room():
                    continue
                entries = await asyncio.to_thread(scanner.take, loop.time(), batch)
                stats.bytes_unclaimed = scanner.bytes_waiting
                if entries:
                    await self._take(name, job_dir, entries)
                    continue
                if self.once and scanner.idle:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.config.service.scan_interval_s)
        finally:
            if (batcher := self.batchers.get(name)) is not None:
                batcher.resumed.set()
            self.feeding -= 1
            self.job_fed(name)

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

    async def _has_room(self) -> bool:
        """Whether few enough items are outstanding to claim more; waits a scan interval
        for it (or the stop) when not."""
        if self.outstanding <= self._room:
            return True
        self._roomy.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._roomy.wait(), self.config.service.scan_interval_s)
        return self.outstanding <= self._room

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
        if (batcher := self.batchers.get(name)) is not None:
            skip = await asyncio.to_thread(batcher.store.batched_seqs, src.id)
        await self._stream_source(name, src, done_after, skip)

    # -- small files: one item each, read many at a time -------------------------------

    async def _read_whole_files(self, name: str, sources: list[Source]) -> None:
        rt = self.jobs[name]
        cfg = rt.job.config
        max_bytes = self.config.service.max_line_bytes
        provider = cfg.provider
        pending = list(sources)
        while pending and not self._stop.is_set():
            self.outstanding += 1  # hold the files open while they are read
            try:
                read, pending = await asyncio.to_thread(
                    _read_whole, pending, cfg.text_field, max_bytes
                )
            finally:
                self.outstanding -= 1
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
                await self._admit_one(rt, provider, item, size)
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
        provider = rt.job.config.provider
        try:
            f, reader, watch, size = await asyncio.to_thread(self._open_source, rt, src)
        except (InputError, OSError) as e:
            await self._fail_source(name, src, e)
            return
        self.writer.track(src, done_after)
        # What was done before a restart; what this run finishes was read before the cursor.
        done_before = frozenset(done_after)
        total = src.resume_seq
        self.outstanding += 1  # hold the source open while its items are read
        try:
            with f:
                rt.stats.bytes_claimed += size - src.resume_offset
                last_end = src.resume_offset
                things = iter(reader)
                loop = asyncio.get_running_loop()
                while chunk := await asyncio.to_thread(_next_chunk, things, watch, loop.time()):
                    for thing in chunk:
                        total = thing.seq + 1
                        nbytes = thing.end - last_end
                        rt.stats.bytes_read += nbytes
                        last_end = thing.end
                        if thing.seq < src.resume_seq or thing.seq in done_before:
                            continue  # finished before a restart
                        if thing.seq in skip:
                            continue  # in a batch: its result comes from there
                        await self._admit_one(rt, provider, thing, nbytes)
                        if self._stop.is_set():
                            return
        except InputError as e:
            await self._fail_source(name, src, e)
            return
        except OSError as e:
            await self._fail_source(name, src, InputError("unreadable", str(e)))
            return
        finally:
            self.outstanding -= 1
            if reader.replaced:
                log.warning("invalid_utf8_replaced", job=name, file=src.name, count=reader.replaced)
        if total == 0:
            await self._fail_source(name, src, InputError("empty", "no items in the file"))
            return
        self.writer.submit(SourceEnd(src.id, total))

    def _open_source(
        self, rt: JobRuntime, src: Source
    ) -> tuple[Any, items_mod.Reader | items_mod.ChunkReader, spool.ClaimWatch, int]:
        """Open a claimed file where its work resumes (blocking): a UTF-16/32 file is
        made UTF-8 first."""
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
        max_line = self.config.service.max_line_bytes
        reader = items_mod.reader_for(src, f, rt.job.config, max_line, rt.job.chunk_tokens)
        return f, reader, watch, watch.size

    async def admit(self, rt: JobRuntime, thing: Thing, nbytes: int) -> None:
        """Admit one item made elsewhere (a pipeline stage's): as a spool item is."""
        await self._admit_one(rt, rt.job.config.provider, thing, nbytes)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def _admit_one(self, rt: JobRuntime, provider: str, thing: Thing, nbytes: int) -> None:
        """Wait for a slot and the item's bytes, then render and queue it."""
        if (batcher := self.batchers.get(rt.job.name)) is not None:
            await batcher.room()
        await self.slots[provider].acquire()
        await self.budgets[provider].acquire(nbytes)
        self._held[(thing.source.id, thing.seq)] = nbytes
        self.outstanding += 1
        self.job_outstanding[rt.job.name] += 1
        rt.stats.items_queued += 1
        self._admit(rt, thing)
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)  # rendering is CPU: let senders and the writer run

    def _admit(self, rt: JobRuntime, thing: WorkItem | Any) -> None:
        if isinstance(thing, WorkItem):
            prepared = prepare(rt, thing)
        else:
            rt.stats.bad_input += 1
            log.warning(
                "bad_input_line",
                job=rt.job.name,
                file=thing.source.name,
                line=thing.line,
                reason=thing.reason,
            )
            prepared = bad_input(rt.job, thing, time.time())
        if isinstance(prepared, Attempt):
            if (batcher := self.batchers.get(rt.job.name)) is not None:
                batcher.add(prepared)
                self._release(rt, (thing.source.id, thing.seq))
                self._check_quiet()
            else:
                rt.dispatcher.submit(prepared)
        else:
            self.writer.submit(prepared)

    async def _fail_source(self, name: str, src: Source, e: Exception) -> None:
        reason = e.reason if isinstance(e, InputError) else "unreadable"
        detail = e.detail if isinstance(e, InputError) else str(e)
        job_dir = self.config.paths.spool / name
        self.writer.untrack(src.id)
        await asyncio.to_thread(spool.fail_claimed, self.checkpoint, job_dir, src, reason, detail)
        log.error("file_failed", job=name, file=src.name, reason=reason, detail=detail)


def _read_whole(
    sources: list[Source], text_field: str, max_bytes: int
) -> tuple[list[tuple[Source, tuple[WorkItem, int] | Exception, int]], list[Source]]:
    """Read small claimed files into their one item each (blocking), up to
    ``READ_BATCH_BYTES``; returns what was read and the sources left for later."""
    out: list[tuple[Source, tuple[WorkItem, int] | Exception, int]] = []
    budget = READ_BATCH_BYTES
    for i, src in enumerate(sources):
        if budget <= 0:
            return out, sources[i:]
        try:
            raw = _read_file(src, max_bytes)
            out.append((src, items_mod.whole_file_item(src, raw, max_bytes), len(raw)))
            budget -= len(raw)
        except (InputError, OSError) as e:
            out.append((src, e, 0))
    return out, []


def _read_file(src: Source, max_bytes: int) -> bytes:
    """A small file's bytes (one more than ``max_bytes`` at most), UTF-8 if it had a BOM.

    Never asks for ``max_bytes`` at once: a read of 4 MB maps and unmaps a 4 MB
    buffer, which would cost more than a small file's own read.
    """
    raw = _read_upto(src.path, max_bytes + 1)
    if spool.bom_codec(raw[:4]) is not None:
        codec = spool.transcode_if_bom(Path(src.path))
        log.info("transcoded", job=src.job, file=src.name, codec=codec)
        raw = _read_upto(src.path, max_bytes + 1)
    return raw


def _read_upto(path: str, most: int) -> bytes:
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


def _next_chunk(things: Iterator[Thing], watch: spool.ClaimWatch, now: float) -> list[Thing]:
    """The next items of a streamed file (blocking); empty at its end.

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
