"""Feeding: claim a job's settled spool files and admit their items.

One ``feed(job)`` task per job first resumes the files it had claimed before a
restart, then claims new ones as they settle (claim = a checkpoint row, then a
rename into ``.work/``). A claimed file is streamed item by item; each item
takes one of its provider's admission slots (``max_in_flight`` + 256) before
it is rendered, and the slot comes back when its outcome is committed. That
bound is what keeps memory flat whatever the size of the spool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import structlog

from synthd import items as items_mod
from synthd import spool
from synthd.checkpoint import Checkpoint
from synthd.config import Config
from synthd.errors import InputError
from synthd.models import Outcome, Source, WorkItem
from synthd.pipeline import Attempt, JobRuntime, prepare
from synthd.records import bad_input
from synthd.writer import SourceEnd, Writer

log = structlog.get_logger("synthd.feeder")

# Items admitted beyond max_in_flight: enough that a sender finishing a request
# finds the next one rendered and waiting, few enough to keep memory flat.
ADMIT_AHEAD = 256


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
        self._stop = stop
        self.slots = {
            name: asyncio.Semaphore(cfg.max_in_flight + ADMIT_AHEAD)
            for name, cfg in config.providers.items()
        }
        self.outstanding = 0  # admitted items, plus files being read
        self.feeding = 0  # feed() tasks still running
        self.quiet = asyncio.Event()  # nothing left to read or to finish
        self._changed_jobs: set[str] = set()

    def committed(self, outcomes: list[Outcome]) -> None:
        """The writer made these durable: their slots are free again."""
        for o in outcomes:
            if (rt := self.jobs.get(o.source.job)) is not None:
                self.slots[rt.job.config.provider].release()
        self.outstanding -= len(outcomes)
        self._check_quiet()

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
            await asyncio.to_thread(spool.ensure_layout, job_dir)
            await asyncio.to_thread(self._sweep_work, job_dir)
            for src in await asyncio.to_thread(self.checkpoint.active_sources, name):
                if await asyncio.to_thread(self._claim_happened, job_dir, src):
                    await self._read_source(name, src)
            settler = spool.Settler(self.config.service.settle_s)
            while not self._stop.is_set():
                entries = await asyncio.to_thread(spool.scan, job_dir)
                self.jobs[name].stats.bytes_unclaimed = sum(e.size for e in entries)
                ready = settler.settled(entries, time.time_ns())
                for entry in ready:
                    if self._stop.is_set():
                        return
                    await self._take(name, job_dir, entry)
                if self.once and not entries:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.config.service.scan_interval_s)
        finally:
            self.feeding -= 1
            self._check_quiet()

    async def _take(self, name: str, job_dir: Path, entry: spool.Entry) -> None:
        if entry.refused is not None:
            await asyncio.to_thread(_refuse, job_dir, entry.name, "not_a_file", entry.refused)
            log.warning("file_refused", job=name, file=entry.name, reason=entry.refused)
            return
        src = await asyncio.to_thread(self._claim, name, job_dir, entry.name)
        if src is not None:
            await self._read_source(name, src)

    def _sweep_work(self, job_dir: Path) -> None:
        """Finish moves a crash interrupted: a finished source's file left in .work/."""
        work = job_dir / spool.WORK
        names = {p.name.split("-", 1)[0]: p for p in work.iterdir() if "-" in p.name}
        for claim_id, target in self.checkpoint.ended_paths(names).items():
            src_path = names[claim_id]
            if str(src_path) != target and not Path(target).exists():
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                os.rename(src_path, target)
                log.info("move_finished", file=src_path.name, moved_to=target)

    def _claim_happened(self, job_dir: Path, src: Source) -> bool:
        """A crash between recording a claim and its rename leaves a row to drop."""
        if Path(src.path).exists() or src.resume_seq > 0:
            return True
        self.checkpoint.forget_source(src.id)
        log.info("claim_forgotten", job=src.job, file=src.name)
        return False

    def _claim(self, name: str, job_dir: Path, filename: str) -> Source | None:
        """Record the claim, then rename: a crash between leaves a row to forget."""
        job = self.jobs[name].job
        claim_id = spool.new_claim_id()
        target = job_dir / spool.WORK / f"{claim_id}-{filename}"
        src = self.checkpoint.add_source(name, claim_id, filename, str(target), job.fingerprint)
        if spool.claim(job_dir, filename, claim_id) is None:
            self.checkpoint.forget_source(src.id)
            return None
        return src

    async def _read_source(self, name: str, src: Source) -> None:
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
        try:
            await asyncio.to_thread(self._prepare_source, src)
            # Opened here, with no await before the with-block: a stop arriving
            # now cannot leave the file open.
            f, reader = self._open_source(rt, src)
        except (InputError, OSError) as e:
            await self._fail_source(name, src, e)
            return
        progress = self.writer.track(src, done_after)
        slots = self.slots[job.config.provider]
        total = src.resume_seq
        self.outstanding += 1  # hold the source open while its items are read
        try:
            with f:
                rt.stats.bytes_claimed += _size(src.path) - src.resume_offset
                last_end = src.resume_offset
                watch = spool.ClaimWatch(f.fileno(), src.path)
                loop = asyncio.get_running_loop()
                for thing in reader:
                    watch.check(loop.time())  # deleted, replaced, truncated: stop
                    total = thing.seq + 1
                    rt.stats.bytes_read += thing.end - last_end
                    last_end = thing.end
                    if thing.seq < progress.seq or thing.seq in progress.done:
                        continue  # finished before a restart
                    await slots.acquire()
                    self.outstanding += 1
                    rt.stats.items_queued += 1
                    self._admit(rt, thing)
                    if self._stop.is_set():
                        return
                watch.check()  # a truncated file ends early, as if it were whole
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

    def _prepare_source(self, src: Source) -> None:
        """Before a file's first read: make a UTF-16/32 file UTF-8 (blocking)."""
        if src.resume_offset == 0 and src.resume_seq == 0:
            codec = spool.transcode_if_bom(Path(src.path))
            if codec is not None:
                log.info("transcoded", job=src.job, file=src.name, codec=codec)

    def _open_source(self, rt: JobRuntime, src: Source) -> tuple[Any, items_mod.Reader]:
        path = Path(src.path)
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block
        f.seek(src.resume_offset)
        cfg = rt.job.config
        kind = items_mod.kind_of(src.name, cfg.input)
        max_line = self.config.service.max_line_bytes
        return f, items_mod.Reader(src, f, kind, cfg.text_field, max_line)

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
            rt.dispatcher.submit(prepared)
        else:
            self.writer.submit(prepared)

    async def _fail_source(self, name: str, src: Source, e: Exception) -> None:
        reason = e.reason if isinstance(e, InputError) else "unreadable"
        detail = e.detail if isinstance(e, InputError) else str(e)
        job_dir = self.config.paths.spool / name

        def move() -> None:
            self.writer.progress.pop(src.id, None)
            current = Path(src.path)
            if current.exists():
                target = spool.fail(job_dir, current, src.name, reason, detail)
            else:  # deleted while claimed: the report alone says what happened
                target = spool.fail_missing(job_dir, src.name, reason, detail)
            self.checkpoint.end_source(src.id, "failed", str(target), f"{reason}: {detail}")

        await asyncio.to_thread(move)
        log.error("file_failed", job=name, file=src.name, reason=reason, detail=detail)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _refuse(job_dir: Path, name: str, reason: str, detail: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        spool.fail(job_dir, job_dir / name, name, reason, detail)
