"""Admission: items let into the pipeline, within bounds, and counted until durable.

Every item, a spool file's (``feeder.py``) or a pipeline stage's (``handoff.py``), takes one
of its provider's admission slots (``max_in_flight`` + ``ADMIT_AHEAD``) and its bytes from the
provider's byte allowance before it is rendered; both come back when its outcome is committed
(``committed``), or when a batch-mode job packs it into a batch. Those two bounds keep memory
flat whatever the size of the spool or of its files.

The counts kept here say when a run may end: ``quiet`` is set once no feeder is running and
nothing admitted or being read is left. A feeder's end must be told (``job_feeding``): once
mode waits on ``quiet``, and a stage in once mode ends only when its upstream job is no longer
feeding and has nothing admitted (``upstream_finished``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator

import structlog

from synthd.allowance import Allowance
from synthd.batches import JobBatches
from synthd.config import Config
from synthd.models import BadLine, Outcome, WorkItem
from synthd.pipeline import Attempt, JobRuntime, prepare
from synthd.records import bad_input
from synthd.writer import Writer

log = structlog.get_logger("synthd.admission")

# Items admitted beyond max_in_flight: enough that a sender finishing a request
# finds the next one rendered and waiting, few enough to keep memory flat.
ADMIT_AHEAD = 256
# Bytes of input admitted and not yet durable, per provider. An item holds its
# context three or four times over (fields, rendered text, request body, record),
# so with 4 MB files this keeps the peak near 200 MB (bench/big_files.py); with
# ordinary contexts of a few KB the slots bind long before it does.
ADMIT_BYTES = 32 * 1024 * 1024
YIELD_EVERY = 32  # items rendered between two chances for the loop to do other work


class Admission:
    """The slots and bytes every job's items are admitted within, and the count of what is
    admitted but not yet durable. Runs on the loop; nothing here is thread-safe."""

    def __init__(
        self,
        config: Config,
        writer: Writer,
        jobs: dict[str, JobRuntime],
        batchers: dict[str, JobBatches] | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.jobs = jobs
        # Sharing the spool, a node claims more only when its senders could use it: what
        # it holds admitted but unsent, another node could be sending.
        self._room = max((p.max_in_flight for p in config.providers.values()), default=1)
        self._roomy = asyncio.Event()
        self.slots = {
            name: asyncio.Semaphore(cfg.max_in_flight + ADMIT_AHEAD)
            for name, cfg in config.providers.items()
        }
        self.budgets = {name: Allowance(ADMIT_BYTES) for name in config.providers}
        self._held: dict[tuple[int, int], int] = {}  # (source id, seq) -> bytes admitted
        self._since_yield = 0
        self.outstanding = 0  # admitted items, plus files being read
        self.feeding = 0  # feeders still running
        self.quiet = asyncio.Event()  # nothing left to read or to finish
        # Pipelines (synthd.handoff): a stage waits on its event for its upstream's commits,
        # and in once mode ends when its upstream is no longer feeding and has nothing admitted.
        self.feeding_jobs = set(config.jobs)
        self.job_outstanding: Counter[str] = Counter()
        self.stages_of: dict[str, list[str]] = {}
        for name, job in config.jobs.items():
            if job.config.from_ is not None:
                self.stages_of.setdefault(job.config.from_, []).append(name)
        self.stage_events = {s: asyncio.Event() for ss in self.stages_of.values() for s in ss}
        # Batch-mode jobs (batches.py), by name: batch mode's own dict, filled as it starts.
        self.batchers: dict[str, JobBatches] = {} if batchers is None else batchers

    # -- the ends that let a run finish ---------------------------------------------------

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

    @contextlib.contextmanager
    def job_feeding(self, job: str) -> Iterator[None]:
        """A job's feeder runs inside this. Its end, however it comes, is told to the
        stages and to ``quiet``: without it once mode would never end."""
        self.feeding += 1
        try:
            yield
        finally:
            self.feeding -= 1
            self.job_fed(job)

    def job_fed(self, job: str) -> None:
        """``job``'s feeder has returned: its stages may be able to end too."""
        self.feeding_jobs.discard(job)
        self.wake_stages({job})
        self._check_quiet()

    def wake_stages(self, jobs: set[str]) -> None:
        """Tell the stages of ``jobs`` that there may be new items, or an end, upstream."""
        for job in jobs:
            for stage in self.stages_of.get(job, ()):
                self.stage_events[stage].set()

    def upstream_finished(self, job: str) -> bool:
        """No more records will come from ``job`` in this run (once mode)."""
        return job not in self.feeding_jobs and self.job_outstanding[job] <= 0

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A file being read counts as outstanding: its items are not admitted yet."""
        self.outstanding += 1
        try:
            yield
        finally:
            self.outstanding -= 1

    async def until_outstanding_zero(self) -> None:
        while self.outstanding:
            self.quiet.clear()
            await self.quiet.wait()

    def _check_quiet(self) -> None:
        if self.outstanding == 0 and self.feeding == 0:
            self.quiet.set()

    async def has_room(self) -> bool:
        """Whether few enough items are outstanding to claim more; waits a scan interval
        for it (or the stop) when not."""
        if self.outstanding <= self._room:
            return True
        self._roomy.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.service.scan_interval_s):
                await self._roomy.wait()
        return self.outstanding <= self._room

    # -- one item -------------------------------------------------------------------------

    async def admit(self, rt: JobRuntime, thing: WorkItem | BadLine, nbytes: int) -> None:
        """Wait for a slot and the item's bytes, then render and queue it."""
        provider = rt.job.config.provider
        if (batcher := self.batchers.get(rt.job.name)) is not None:
            await batcher.room()
        await self.slots[provider].acquire()
        await self.budgets[provider].acquire(nbytes)
        self._held[(thing.source.id, thing.seq)] = nbytes
        self.outstanding += 1
        self.job_outstanding[rt.job.name] += 1
        rt.stats.items_queued += 1
        self._route(rt, thing)
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await asyncio.sleep(0)  # rendering is CPU: let senders and the writer run

    def _route(self, rt: JobRuntime, thing: WorkItem | BadLine) -> None:
        """Render the item and hand it on: to its provider's senders, to its job's batches,
        or (an item that can never be sent) straight to the writer."""
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
