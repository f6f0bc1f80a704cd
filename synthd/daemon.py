"""Lifecycle: recover, start the parts, run the feeders, drain on a signal.

``Daemon(config).run()`` is the whole service; ``once=True`` processes what is
in the spool and returns when the last outcome is durable (like arq's burst).
Start-up order: open the checkpoint, let the writer recover shard tails, start
senders, batch mode (``batchmode.py``), writer and HTTP endpoint, then one
feeder per job (``feeder.py``), which resumes claimed files and then watches the
spool for new ones. With ``[coordination]`` the node's lease comes first and its
takeovers of dead nodes run beside (``scaleout.py``).

Signals only set flags (``_on_signal``); ``run`` does the draining: stop
claiming, let admitted items finish within ``grace_s``, commit, exit. A second
SIGTERM/SIGINT cancels the senders at once; the writer still commits what it
holds, so no line is torn. SIGHUP reloads the config and templates (``reload.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from synthd import config as config_mod
from synthd import crashpoints, handoff, memory, notify
from synthd.admission import Admission
from synthd.batchmode import BatchMode
from synthd.checkpoint import STATE_FILE, Checkpoint
from synthd.client import make_client
from synthd.config import Config
from synthd.coordination import CoordinationCollector, Coordinator
from synthd.errors import DaemonFailed, WriterFailed
from synthd.feeder import Feeder
from synthd.livestatus import RecentLines
from synthd.looplag import LoopLag
from synthd.metrics import ProviderStats
from synthd.models import Outcome, Source
from synthd.monitor import JobInfo, Limits
from synthd.pacer import Pacer
from synthd.pipeline import Dispatcher, JobRuntime
from synthd.progress import ProgressLog
from synthd.reload import filter_chain, reload_jobs
from synthd.scaleout import ScaleOut
from synthd.service import Watched, start_service
from synthd.writer import Writer

log = structlog.get_logger("synthd.daemon")

_FAILED_CLOSE_S = 5.0  # how long a failed daemon lets the writer finish its batch


class Daemon:
    """The service's lifecycle: owns every part and runs them on one event loop.

    Builds the checkpoint, writer, feeder and, in ``run``, one dispatcher per provider,
    one ``JobRuntime`` per job, the HTTP endpoint and the tickers; wires the writer's
    callbacks to the job counters and the admission. ``run``, ``stop`` and the signal
    handlers run on the loop that ``run`` is awaited in; nothing here is thread-safe.
    Embeddable: ``Daemon(config, handle_signals=False)``, ``await daemon.run()``,
    ``daemon.stop()``; ``ready`` is set once it takes work, ``http_port`` is the bound port.
    """

    def __init__(
        self,
        config: Config,
        *,
        once: bool = False,
        handle_signals: bool = True,
        tune_gc: bool = False,
        coordinator: Coordinator | None = None,
        resume_only: bool = False,
    ) -> None:
        self.config = config
        self.scaleout = ScaleOut(config, coordinator, _run_takeover)
        self.coordinator = self.scaleout.coordinator
        self._takeover = self.scaleout.takeover
        self.once = once
        self.handle_signals = handle_signals
        self.tune_gc = tune_gc  # the process is ours: see memory.settle_gc
        self.checkpoint = Checkpoint(config.state_dir / STATE_FILE)
        self.writer = Writer(config, self.checkpoint, self._committed, self._source_done)
        self.provider_stats = {name: ProviderStats() for name in config.providers}
        self.dispatchers: dict[str, Dispatcher] = {}
        self.jobs: dict[str, JobRuntime] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.batch_mode = BatchMode(config, self.checkpoint, self.writer, self._fail)
        self.batchers = self.batch_mode.batchers  # batch-mode jobs, by name (filled at start)
        self.admission = Admission(config, self.writer, self.jobs, self.batchers)
        self.feeder = Feeder(
            config, self.checkpoint, self.writer, self.jobs, self.admission, self._stop, once=once
        )
        self.feeder.resume_only = resume_only
        self._signals = 0
        self._background: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        self.http_port: int | None = None
        self._progress_log = ProgressLog()
        self.started = time.time()
        self.failure: tuple[str, str] | None = None  # (task, error) that stopped the daemon
        self.loop_lag = LoopLag()
        self.pacer = Pacer()  # one for the loop: every provider's replies share its slices
        self.recent = RecentLines()  # the last lines committed, for the status page

    # -- run ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, in once mode, until the spool is done). Returns 0."""
        writer_task, service = await self._start()
        feeders = [self._supervised(self._feed(name), f"feed-{name}") for name in self.jobs]
        tickers = [
            self._supervised(self._progress(), "progress"),
            self._supervised(memory.release_freed_memory(), "trim"),
            self._supervised(self.loop_lag.run(), "loop_lag"),
        ]
        if self.tune_gc:
            tickers.append(self._supervised(memory.collect_middle(), "gc"))
        if (coordination := self.scaleout.loop()) is not None:
            tickers.append(self._supervised(coordination, "coordination"))
        if not self._takeover and (interval := notify.watchdog_interval_s()) is not None:
            tickers.append(self._supervised(self._watchdog(interval / 2), "watchdog"))
        self.ready.set()
        self._notify("READY=1")
        log.info("started", jobs=list(self.jobs), once=self.once, pid=os.getpid())
        try:
            await self._until_stopped()
        except asyncio.CancelledError:
            # A takeover, cancelled: another node has taken its lease (and finishes those
            # files now), or its host stops after its own drain (whose grace is spent).
            # Nothing more is waited for; the writer still commits what it holds.
            self._stop.set()
            self._force.set()
            raise
        finally:
            await self._shut_down(feeders, tickers, writer_task, service)
        if self.failure is not None and self.failure[0] != "writer":
            raise DaemonFailed(*self.failure)
        if writer_task.cancelled() or writer_task.exception() is not None:
            raise WriterFailed(str(self.config.paths.out), "the writer stopped; see the log")
        return 0

    async def _start(self) -> tuple[asyncio.Task[None], Any]:
        """Everything before the first item: the node's lease, recovery, the senders, batch
        mode, the writer and the HTTP endpoint. Returns the writer's task and the endpoint."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        await self.scaleout.start()  # nothing of this node's is touched before
        adopted = await asyncio.to_thread(self.writer.recover)
        log.info("recovered", adopted=adopted, state=str(self.checkpoint.path))
        if self._takeover:
            crashpoints.hit("takeover_recovered")  # a dead node's recovery, by another node
        await self._start_dispatchers()
        await self.batch_mode.start(self.jobs, self.dispatchers)
        writer_task = asyncio.create_task(self.writer.run(), name="writer")
        writer_task.add_done_callback(self._writer_ended)
        service = await self._start_service()
        if self.tune_gc:
            frozen = memory.settle_gc()
            log.info("gc_frozen", objects=frozen, thresholds=list(memory.GC_THRESHOLDS))
        return writer_task, service

    async def _shut_down(
        self,
        feeders: list[asyncio.Task[None]],
        tickers: list[asyncio.Task[None]],
        writer_task: asyncio.Task[None],
        service: Any,
    ) -> None:
        """Stop claiming, drain, let the writer commit what it holds, then close the rest;
        the order is the one the writer's promise needs (see design.md, Drain)."""
        self._notify("STOPPING=1")
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        await self._drain()
        await self.batch_mode.stop()
        self.loop_lag.stop_at_exit()  # the work is drained: what follows is the exit's
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
        work_left = self.coordinator is not None and self._work_left()
        self.checkpoint.close()
        await self.scaleout.close(work_left, [d.budget for d in self.dispatchers.values()])
        self._log_progress(final=True)
        log.info(
            "stopped",
            outstanding=self.admission.outstanding,
            loop_lag_p99_ms=round(1000 * self.loop_lag.quantile(0.99), 1),
            loop_lag_max_ms=round(1000 * self.loop_lag.max_s, 1),
        )

    def _notify(self, state: str) -> None:
        if not self._takeover:  # a takeover's daemon is not what systemd started
            notify.notify(state)

    def _work_left(self) -> bool:
        """Whether claimed files are unfinished (blocking; the checkpoint is still open)."""
        return any(self.checkpoint.active_sources(name) for name in self.jobs)

    def _feed(self, name: str) -> Coroutine[Any, Any, None]:
        """A job's feeder: the spool's, or its upstream job's records (a pipeline stage)."""
        if self.config.jobs[name].config.from_ is not None:
            return handoff.feed_stage(self.feeder, name)
        return self.feeder.feed(name)

    def _supervised(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A long-lived task whose death, whatever the cause, is seen: see ``_task_ended``."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """Crash-only: a task that died of something no single file explains stops the
        daemon, which exits non-zero so that its supervisor restarts it into recovery."""
        if task.cancelled() or (exc := task.exception()) is None:
            return
        self._fail(task.get_name(), exc)

    def _fail(self, task: str, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = (task, str(exc) or repr(exc))
            log.error("daemon_failed", task=task, error=self.failure[1], exc_info=exc)
        self._stop.set()
        self._force.set()  # nothing is waited for: what is not durable is redone on restart

    async def _close_writer(self, writer_task: asyncio.Task[None]) -> None:
        """Let the writer commit what it holds. Only a second signal while the
        output is blocked gives up on it: those items are redone on the next
        start, and a failed batch is always cut back out of the files."""
        close = asyncio.ensure_future(asyncio.shield(self.writer.close()))
        if self.failure is not None:
            # A failed daemon exits soon whatever the writer does: it is restarted.
            await asyncio.wait([close], timeout=_FAILED_CLOSE_S)
        while not close.done():
            force = asyncio.create_task(self._force.wait())
            waits: list[asyncio.Future[Any]] = [close, force]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            if not close.done() and (self.writer.blocked is not None or self.failure is not None):
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
        if self.failure is None:
            self.failure = ("writer", str(exc) or repr(exc))

    async def _until_stopped(self) -> None:
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._stop.wait())]
        if self.once:
            waits.append(asyncio.create_task(self._once_done()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _once_done(self) -> None:
        """The spool is read and its items committed, or packed: then every part-full
        pack goes at once, and once mode waits for every batch's results."""
        await self.admission.quiet.wait()
        await self.batch_mode.until_done()

    async def _drain(self) -> None:
        """Let admitted items finish, up to the grace period or a second signal."""
        if self.admission.outstanding == 0:
            return
        grace = self.config.service.grace_s
        log.info("draining", outstanding=self.admission.outstanding, grace_s=grace)
        done = asyncio.create_task(self.admission.until_outstanding_zero())
        force = asyncio.create_task(self._force.wait())
        await asyncio.wait([done, force], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        force.cancel()
        if self.admission.outstanding:
            log.warning(
                "drain_cut_short",
                outstanding=self.admission.outstanding,
                note="unfinished items are not checkpointed and will be redone",
            )

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal", signal=sig.name, action="drain")
            self._stop.set()
        else:
            log.warning("signal", signal=sig.name, action="exit_now")
            self._force.set()

    def _on_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(reload_jobs(self.config.source, self.jobs))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def stop(self) -> None:
        """Ask an embedded daemon to drain and return (as SIGTERM does)."""
        self._on_signal(signal.SIGTERM)

    # -- set-up --------------------------------------------------------------

    async def _start_dispatchers(self) -> None:
        for name, cfg in self.config.providers.items():
            client = make_client(cfg, self.config.api_key(name), self.pacer)
            d = Dispatcher(name, cfg, client, self.writer, self.provider_stats[name], self.pacer)
            if self.coordinator is not None:
                self.coordinator.attach(name, cfg, d.budget)
            await d.start()
            self.dispatchers[name] = d
        for name, job in self.config.jobs.items():
            self.jobs[name] = JobRuntime(
                job, filter_chain(job), self.dispatchers[job.config.provider]
            )

    async def _start_service(self) -> Any:
        listen = self.config.service.listen
        if not listen:
            return None
        watched = Watched(
            jobs={name: rt.stats for name, rt in self.jobs.items()},
            providers=self.provider_stats,
            providers_used=frozenset(rt.job.config.provider for rt in self.jobs.values()),
            loop_lag=self.loop_lag,
            started=self.started,
            failure=lambda: self.failure,
            output_blocked=lambda: self.writer.blocked,
            info={
                name: JobInfo(rt.job.config.provider, rt.job.config.model)
                for name, rt in self.jobs.items()
            },
            prices=self.config.prices,
            limits=lambda: {
                name: Limits(d.budget.rpm, d.budget.tpm) for name, d in self.dispatchers.items()
            },
            commit_s=self.writer.commit_s,
            recent=self.recent,
            status_token=config_mod.status_token(),
            coordination=None if self.coordinator is None else self.coordinator.health,
            collectors=[]
            if self.coordinator is None
            else [CoordinationCollector(self.coordinator)],
        )
        runner, self.http_port = await start_service(watched, listen)
        return runner

    # -- callbacks from the writer (on the loop) ---------------------------------

    def _committed(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            rt = self.jobs.get(o.source.job)
            if rt is not None:
                rt.stats.items_done += 1
                rt.stats.records += o.records_written
                if o.duplicates:
                    rt.stats.reject("duplicate", o.duplicates)
                if o.near_duplicates:
                    rt.stats.reject("near_duplicate", o.near_duplicates)
        self.recent.add(outcomes)
        self.admission.committed(outcomes)
        self.batch_mode.committed(outcomes)

    def _source_done(self, src: Source, path: str) -> None:
        log.debug("file_done", job=src.job, file=src.name, moved_to=path)

    # -- reporting ---------------------------------------------------------------

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.config.service.progress_interval_s)
            self._log_progress()

    def _log_progress(self, final: bool = False) -> None:
        self._progress_log.log(self.jobs, "summary" if final else "progress")
        done = sum(rt.stats.items_done for rt in self.jobs.values())
        self._notify(f"STATUS={done} items done")

    async def _watchdog(self, every_s: float) -> None:
        while True:
            notify.notify("WATCHDOG=1")
            await asyncio.sleep(every_s)


def _run_takeover(config: Config, coordinator: Coordinator) -> Coroutine[Any, Any, int]:
    """A dead node's daemon, run in this process on the host's coordinator (scaleout.py)."""
    node = Daemon(
        config, once=True, handle_signals=False, coordinator=coordinator, resume_only=True
    )
    return node.run()
