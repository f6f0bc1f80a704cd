"""Lifecycle: recover, watch the spool, feed the senders, drain on a signal.

``Daemon(config).run()`` is the whole service; ``once=True`` processes what is
in the spool and returns when the last outcome is durable (like arq's burst).
Start-up order: open the checkpoint, let the writer recover shard tails, start
senders, writer and HTTP endpoint, resume claimed files, then watch for new
ones. Memory stays flat because each provider admits at most a fixed number of
items (``max_in_flight`` + 256) between reading them and committing them.

Signals only set flags (``_on_signal``); ``run`` does the draining: stop
claiming, let admitted items finish within ``grace_s``, commit, exit. A second
SIGTERM/SIGINT cancels the senders at once; the writer still commits what it
holds, so no line is torn. SIGHUP reloads the config and templates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from synthd import config as config_mod
from synthd import items as items_mod
from synthd import memory, notify, spool
from synthd.checkpoint import Checkpoint
from synthd.client import make_client
from synthd.config import Config, Job
from synthd.errors import ConfigError, InputError, WriterFailed
from synthd.filters import FilterChain
from synthd.metrics import ProviderStats
from synthd.models import Outcome, Source, WorkItem
from synthd.pipeline import Attempt, Dispatcher, JobRuntime, prepare
from synthd.progress import ProgressLog
from synthd.records import bad_input
from synthd.writer import SourceEnd, Writer

log = structlog.get_logger("synthd.daemon")

STATE_FILE = "synthd.db"
# Items admitted beyond max_in_flight: enough that a sender finishing a request
# finds the next one rendered and waiting, few enough to keep memory flat.
_ADMIT_AHEAD = 256


class Daemon:
    def __init__(self, config: Config, *, once: bool = False, handle_signals: bool = True) -> None:
        self.config = config
        self.once = once
        self.handle_signals = handle_signals
        self.checkpoint = Checkpoint(config.paths.state / STATE_FILE)
        self.writer = Writer(config, self.checkpoint, self._committed, self._source_done)
        self.provider_stats = {name: ProviderStats() for name in config.providers}
        self.dispatchers: dict[str, Dispatcher] = {}
        self.jobs: dict[str, JobRuntime] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._outstanding = 0
        self._feeding = 0
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._quiet = asyncio.Event()  # once mode: nothing left to read or finish
        self._signals = 0
        self._background: set[asyncio.Task[None]] = set()
        self._changed_jobs: set[str] = set()
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self._progress_log = ProgressLog()
        self.started = time.time()

    # -- run ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, in once mode, until the spool is done). Returns 0."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        adopted = await asyncio.to_thread(self.writer.recover)
        log.info("recovered", adopted=adopted, state=str(self.checkpoint.path))
        await self._start_dispatchers()
        writer_task = asyncio.create_task(self.writer.run(), name="writer")
        writer_task.add_done_callback(self._writer_ended)
        service = await self._start_service()
        feeders = [asyncio.create_task(self._feed(name), name=f"feed-{name}") for name in self.jobs]
        tickers = [
            asyncio.create_task(self._progress(), name="progress"),
            asyncio.create_task(memory.release_freed_memory(), name="trim"),
        ]
        if (interval := notify.watchdog_interval_s()) is not None:
            tickers.append(asyncio.create_task(self._watchdog(interval / 2), name="watchdog"))
        self.ready.set()
        notify.notify("READY=1")
        log.info("started", jobs=list(self.jobs), once=self.once, pid=os.getpid())
        try:
            await self._until_stopped()
        finally:
            notify.notify("STOPPING=1")
            for task in feeders:
                task.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            await self._drain()
            for d in self.dispatchers.values():
                await d.stop()
            # The writer's last commit must complete even if we are cancelled.
            if not writer_task.done():
                await self._close_writer(writer_task)
            for task in tickers:
                task.cancel()
            if service is not None:
                await service.cleanup()
            self.writer.close_files()
            self.checkpoint.close()
            self._log_progress(final=True)
            log.info("stopped", outstanding=self._outstanding)
        if writer_task.cancelled() or writer_task.exception() is not None:
            raise WriterFailed(str(self.config.paths.out), "the writer stopped; see the log")
        return 0

    async def _close_writer(self, writer_task: asyncio.Task[None]) -> None:
        """Let the writer commit what it holds. Only a second signal while the
        output is blocked gives up on it: those items are redone on the next
        start, and a failed batch is always cut back out of the files."""
        close = asyncio.ensure_future(asyncio.shield(self.writer.close()))
        while not close.done():
            force = asyncio.create_task(self._force.wait())
            waits: list[asyncio.Future[Any]] = [close, force]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if not close.done() and self.writer.blocked is not None:
                log.error("exit_while_blocked", blocked=self.writer.blocked)
                writer_task.cancel()
                close.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer_task
                return
            self._force.clear()  # forced, but the writer is making progress: wait on

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """The writer must outlive everything else; if it dies, stop at once."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("writer_failed", error=repr(exc), exc_info=exc)
        self._stop.set()
        self._force.set()

    async def _until_stopped(self) -> None:
        waits = [asyncio.create_task(self._stop.wait())]
        if self.once:
            waits.append(asyncio.create_task(self._quiet.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _drain(self) -> None:
        """Let admitted items finish, up to the grace period or a second signal."""
        if self._outstanding == 0:
            return
        grace = self.config.service.grace_s
        log.info("draining", outstanding=self._outstanding, grace_s=grace)
        done = asyncio.create_task(self._until_outstanding_zero())
        force = asyncio.create_task(self._force.wait())
        await asyncio.wait([done, force], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        force.cancel()
        if self._outstanding:
            log.warning(
                "drain_cut_short",
                outstanding=self._outstanding,
                note="unfinished items are not checkpointed and will be redone",
            )

    async def _until_outstanding_zero(self) -> None:
        while self._outstanding:
            self._quiet.clear()
            await self._quiet.wait()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal", signal=sig.name, action="drain")
            self._stop.set()
        else:
            log.warning("signal", signal=sig.name, action="exit_now")
            self._force.set()

    def _on_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self._reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stop(self) -> None:
        """Ask an embedded daemon to drain and return (as SIGTERM does)."""
        self._on_signal(signal.SIGTERM)

    # -- set-up --------------------------------------------------------------

    async def _start_dispatchers(self) -> None:
        for name, cfg in self.config.providers.items():
            client = make_client(cfg, self.config.api_key(name))
            d = Dispatcher(name, cfg, client, self.writer, self.provider_stats[name])
            await d.start()
            self.dispatchers[name] = d
            self._slots[name] = asyncio.Semaphore(cfg.max_in_flight + _ADMIT_AHEAD)
        for name, job in self.config.jobs.items():
            self.jobs[name] = JobRuntime(job, _filters(job), self.dispatchers[job.config.provider])

    async def _start_service(self) -> Any:
        listen = self.config.service.listen
        if not listen:
            return None
        from synthd.service import start_service

        return await start_service(self, listen)

    async def _reload(self) -> None:
        """Re-read config and templates; jobs keep running, in flight work is kept."""
        try:
            fresh = await asyncio.to_thread(config_mod.load, self.config.source)
        except ConfigError as e:
            log.error("reload_failed", error=str(e))
            return
        changed = []
        for name, job in fresh.jobs.items():
            rt = self.jobs.get(name)
            if rt is None or job.config.provider != rt.job.config.provider:
                log.warning("reload_skipped_job", job=name, note="new jobs need a restart")
                continue
            if job.fingerprint != rt.job.fingerprint or job.config != rt.job.config:
                rt.job, rt.filters = job, _filters(job)
                from synthd.fingerprint import sampling_params

                rt.params = sampling_params(job.config)
                changed.append(name)
        log.info("reloaded", changed=changed)

    # -- feeding ---------------------------------------------------------------

    async def _feed(self, name: str) -> None:
        """Resume this job's claimed files, then claim new ones as they settle."""
        self._feeding += 1
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
            self._feeding -= 1
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
        slots = self._slots[job.config.provider]
        total = src.resume_seq
        self._outstanding += 1  # hold the source open while its items are read
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
                    self._outstanding += 1
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
            self._outstanding -= 1
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

    # -- callbacks from the writer (on the loop) ---------------------------------

    def _committed(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            rt = self.jobs.get(o.source.job)
            if rt is not None:
                rt.stats.items_done += 1
                rt.stats.records += o.records_written
                if o.duplicates:
                    rt.stats.reject("duplicate", o.duplicates)
                self._slots[rt.job.config.provider].release()
        self._outstanding -= len(outcomes)
        self._check_quiet()

    def _source_done(self, src: Source, path: str) -> None:
        log.info("file_done", job=src.job, file=src.name, moved_to=path)

    def _check_quiet(self) -> None:
        if self._outstanding == 0 and self._feeding == 0:
            self._quiet.set()

    # -- reporting ---------------------------------------------------------------

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.config.service.progress_interval_s)
            self._log_progress()

    def _log_progress(self, final: bool = False) -> None:
        self._progress_log.log(self.jobs, "summary" if final else "progress")
        done = sum(rt.stats.items_done for rt in self.jobs.values())
        notify.notify(f"STATUS={done} items done")

    async def _watchdog(self, every_s: float) -> None:
        while True:
            notify.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _filters(job: Job) -> FilterChain:
    return FilterChain(job.config.filters, job.schema)


def _refuse(job_dir: Path, name: str, reason: str, detail: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        spool.fail(job_dir, job_dir / name, name, reason, detail)
