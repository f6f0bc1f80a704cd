"""Lifecycle: recover, start the parts, run the feeders, drain on a signal.

``Daemon(config).run()`` is the whole service; ``once=True`` processes what is
in the spool and returns when the last outcome is durable (like arq's burst).
Start-up order: open the checkpoint, let the writer recover shard tails, start
senders, writer and HTTP endpoint, then one feeder per job (``feeder.py``),
which resumes claimed files and then watches the spool for new ones.

Signals only set flags (``_on_signal``); ``run`` does the draining: stop
claiming, let admitted items finish within ``grace_s``, commit, exit. A second
SIGTERM/SIGINT cancels the senders at once; the writer still commits what it
holds, so no line is torn. SIGHUP reloads the config and templates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from synthd import config as config_mod
from synthd import crashpoints, handoff, memory, notify
from synthd.allowance import Allowance
from synthd.batchapi import BatchApi
from synthd.batches import JobBatches
from synthd.batchstore import BatchStore
from synthd.checkpoint import STATE_FILE, Checkpoint
from synthd.client import make_client
from synthd.config import Config, Job
from synthd.coordination import CoordinationCollector, Coordinator
from synthd.errors import ConfigError, DaemonFailed, WriterFailed
from synthd.feeder import Feeder
from synthd.filters import FilterChain
from synthd.livestatus import RecentLines
from synthd.looplag import LoopLag
from synthd.metrics import ProviderStats
from synthd.models import Outcome, Source
from synthd.monitor import JobInfo, Limits
from synthd.pacer import Pacer
from synthd.pipeline import Dispatcher, JobRuntime
from synthd.progress import ProgressLog
from synthd.service import Watched, start_service
from synthd.writer import Writer

log = structlog.get_logger("synthd.daemon")

_FAILED_CLOSE_S = 5.0  # how long a failed daemon lets the writer finish its batch


class Daemon:
    """The service's lifecycle: owns every part and runs them on one event loop.

    Builds the checkpoint, writer, feeder and, in ``run``, one dispatcher per provider,
    one ``JobRuntime`` per job, the HTTP endpoint and the tickers; wires the writer's
    callbacks to the job counters and the feeder. ``run``, ``stop`` and the signal
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
        # Several daemons on one Redis: our own coordinator, or (a takeover) the host's.
        self._own_coordinator = coordinator is None and config.coordination is not None
        if self._own_coordinator and config.coordination is not None:
            coordinator = Coordinator(config.coordination, config.paths.state)
        self.coordinator = coordinator
        self._takeover = coordinator is not None and not self._own_coordinator
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
        self.feeder = Feeder(config, self.checkpoint, self.writer, self.jobs, self._stop, once=once)
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
        self.batchers: dict[str, JobBatches] = {}  # batch-mode jobs
        self._batch_apis: list[BatchApi] = []

    # -- run ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped (or, in once mode, until the spool is done). Returns 0."""
        loop = asyncio.get_running_loop()
        if self.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        if self._own_coordinator and self.coordinator is not None:
            await self.coordinator.start()  # nothing of this node's is touched before
        adopted = await asyncio.to_thread(self.writer.recover)
        log.info("recovered", adopted=adopted, state=str(self.checkpoint.path))
        if self._takeover:
            crashpoints.hit("takeover_recovered")  # a dead node's recovery, by another node
        await self._start_dispatchers()
        await self._start_batches()
        writer_task = asyncio.create_task(self.writer.run(), name="writer")
        writer_task.add_done_callback(self._writer_ended)
        service = await self._start_service()
        if self.tune_gc:
            frozen = memory.settle_gc()
            log.info("gc_frozen", objects=frozen, thresholds=list(memory.GC_THRESHOLDS))
        feeders = [self._supervised(self._feed(name), f"feed-{name}") for name in self.jobs]
        tickers = [
            self._supervised(self._progress(), "progress"),
            self._supervised(memory.release_freed_memory(), "trim"),
            self._supervised(self.loop_lag.run(), "loop_lag"),
        ]
        if self.tune_gc:
            tickers.append(self._supervised(memory.collect_middle(), "gc"))
        if self._own_coordinator and self.coordinator is not None:
            coordination = self.coordinator.run(self._take_over)
            tickers.append(self._supervised(coordination, "coordination"))
        if not self._takeover and (interval := notify.watchdog_interval_s()) is not None:
            tickers.append(self._supervised(self._watchdog(interval / 2), "watchdog"))
        self.ready.set()
        self._notify("READY=1")
        log.info("started", jobs=list(self.jobs), once=self.once, pid=os.getpid())
        try:
            await self._until_stopped()
        finally:
            self._notify("STOPPING=1")
            for task in feeders:
                task.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            await self._drain()
            for b in self.batchers.values():
                await b.stop()
            for api in self._batch_apis:
                await api.close()
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
            await self._close_coordination(work_left)
            self._log_progress(final=True)
            log.info(
                "stopped",
                outstanding=self.feeder.outstanding,
                loop_lag_p99_ms=round(1000 * self.loop_lag.quantile(0.99), 1),
                loop_lag_max_ms=round(1000 * self.loop_lag.max_s, 1),
            )
        if self.failure is not None and self.failure[0] != "writer":
            raise DaemonFailed(*self.failure)
        if writer_task.cancelled() or writer_task.exception() is not None:
            raise WriterFailed(str(self.config.paths.out), "the writer stopped; see the log")
        return 0

    def _notify(self, state: str) -> None:
        if not self._takeover:  # a takeover's daemon is not what systemd started
            notify.notify(state)

    def _work_left(self) -> bool:
        """Whether claimed files are unfinished (blocking; the checkpoint is still open)."""
        return any(self.checkpoint.active_sources(name) for name in self.jobs)

    async def _close_coordination(self, work_left: bool) -> None:
        """Give the shared budgets' stock back; our own coordinator lets the lease go."""
        c = self.coordinator
        if c is None:
            return
        if self._own_coordinator:
            await c.close(work_left)
            return
        for d in self.dispatchers.values():
            if d.budget.gate in c.gates:
                c.gates.remove(d.budget.gate)
                await d.budget.gate.close()

    async def _take_over(self, node: str) -> None:
        """Finish a dead node's claimed files as that node (its checkpoint, its shards):
        its recovery, then its resumed files, in once mode, without claiming new ones."""
        coord = self.config.coordination
        assert coord is not None and self.coordinator is not None
        as_node = dataclasses.replace(
            self.config,
            coordination=coord.model_copy(update={"node": node}),
            service=self.config.service.model_copy(update={"listen": ""}),
        )
        if not (as_node.state_dir / STATE_FILE).exists():
            return  # it never wrote anything here: nothing to finish
        other = Daemon(
            as_node,
            once=True,
            handle_signals=False,
            coordinator=self.coordinator,
            resume_only=True,
        )
        await other.run()

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
        await self.feeder.quiet.wait()
        for b in self.batchers.values():
            b.flush()
        for b in self.batchers.values():
            await b.until_idle()

    async def _drain(self) -> None:
        """Let admitted items finish, up to the grace period or a second signal."""
        if self.feeder.outstanding == 0:
            return
        grace = self.config.service.grace_s
        log.info("draining", outstanding=self.feeder.outstanding, grace_s=grace)
        done = asyncio.create_task(self.feeder.until_outstanding_zero())
        force = asyncio.create_task(self._force.wait())
        await asyncio.wait([done, force], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        force.cancel()
        if self.feeder.outstanding:
            log.warning(
                "drain_cut_short",
                outstanding=self.feeder.outstanding,
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
        task = asyncio.get_running_loop().create_task(self._reload())
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
            self.jobs[name] = JobRuntime(job, _filters(job), self.dispatchers[job.config.provider])

    async def _start_batches(self) -> None:
        """Batch-mode jobs get their packer and the drivers of the batches left open."""
        wanted = [rt for rt in self.jobs.values() if rt.job.config.mode == "batch"]
        if not wanted:
            return
        store = await asyncio.to_thread(BatchStore, self.checkpoint)
        apis: dict[str, tuple[BatchApi, Allowance]] = {}
        for rt in wanted:
            provider = rt.job.config.provider
            if provider not in apis:
                cfg = self.config.providers[provider]
                api = BatchApi(
                    cfg, self.config.api_key(provider), self.dispatchers[provider].budget
                )
                await api.start()
                self._batch_apis.append(api)
                apis[provider] = (api, Allowance(cfg.batch_enqueued_tokens))
            api, tokens = apis[provider]
            folder = self.config.paths.state / "batches" / rt.job.name
            price = self.config.prices.get(rt.job.config.model)
            b = JobBatches(rt, store, api, tokens, self.writer, folder, price, self._fail)
            self.batchers[rt.job.name] = b
            self.feeder.batchers[rt.job.name] = b
            await b.start()

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
            was = rt.job.config
            if (job.config.from_, job.config.per) != (was.from_, was.per):
                log.warning("reload_skipped_job", job=name, note="from and per need a restart")
                continue
            if job.config.mode != was.mode:
                log.warning("reload_skipped_job", job=name, note="a mode change needs a restart")
                continue
            if job.fingerprint != rt.job.fingerprint or job.config != rt.job.config:
                rt.reload(job, _filters(job))
                changed.append(name)
        log.info("reloaded", changed=changed)

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
        self.feeder.committed(outcomes)
        for b in self.batchers.values():
            b.committed(outcomes)

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


def _filters(job: Job) -> FilterChain:
    return FilterChain(job.config.filters, job.schema, job.config.judge)
