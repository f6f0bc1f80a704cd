"""Batch mode: a job's items packed into Batch API files, each batch driven to its results.

``JobBatches.add`` takes a rendered ``Attempt`` instead of the dispatcher. Its two halves:
the open pack (``Packer`` in ``batchpack.py``: lines gathered, spilled, fsynced, recorded
in ``state/batches/<job>/`` and ``BatchStore``) and each recorded batch's driver
(``BatchDriver`` in ``batchdriver.py``: created, polled, settled, closed). Here: the
tasks that run them, and when the job is idle (no pack open, no batch open, nothing sent
online still to be committed). A restart skips a recorded batch's items in the spool and
drives the batch instead (``start``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthd.allowance import Allowance
from synthd.batchapi import BatchApi
from synthd.batchdriver import BatchDriver
from synthd.batchpack import Packer, Sealed
from synthd.batchstore import BatchStore
from synthd.config import Price
from synthd.models import Outcome
from synthd.pipeline import Attempt, JobRuntime
from synthd.writer import Writer


class JobBatches:
    """One batch job's pack and the drivers of its batches, on the daemon's loop."""

    def __init__(
        self,
        rt: JobRuntime,
        store: BatchStore,
        api: BatchApi,
        tokens: Allowance,  # the provider's enqueued tokens
        writer: Writer,
        folder: Path,
        price: Price | None,
        on_failure: Callable[[str, BaseException], None],
    ) -> None:
        self._on_failure = on_failure
        self.name = rt.job.name
        self.store = store
        self.folder = folder
        self.resumed = asyncio.Event()  # set by the feeder: every resumed file is tracked
        self._packer = Packer(self.name, rt.job.config, store, folder, self._sealed)
        self._driver = BatchDriver(rt, self._packer, api, tokens, writer, price, self.resumed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()

    @property
    def made(self) -> int:
        """Batches created this run, for the benchmark and the log."""
        return self._driver.made

    async def start(self) -> None:
        """Drive the batches a previous run left open; forget files no batch names."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = await asyncio.to_thread(self.store.open_batches, self.name)
        known = {Path(r.path).name for r in rows}
        for f in await asyncio.to_thread(lambda: list(self.folder.iterdir())):
            if f.name not in known:  # written, never recorded: its items are in the spool
                await asyncio.to_thread(f.unlink)
        for row in rows:
            if row.state != "submitted":
                self._packer.unsubmitted_one()
            self._spawn(self._driver.drive(row, recovered=True))
        self._check()

    async def stop(self) -> None:
        """Stop driving (a batch goes on at the provider; the next start picks it up)."""
        self._packer.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, a: Attempt) -> None:
        """Put one rendered item in the open pack. Never blocks (``room`` is the wait)."""
        self._packer.add(a)
        self._idle.clear()

    def flush(self) -> None:
        """Send the open pack on its way (recorded, then uploaded), if it holds anything."""
        self._packer.flush()
        self._check()

    async def room(self) -> None:
        """Wait while enough packs are recorded and not yet created: the spool waits."""
        await self._packer.room()

    async def until_idle(self) -> None:
        """Once every batch is closed and every item of theirs committed."""
        self._check()
        await self._idle.wait()

    def committed(self, outcomes: list[Outcome]) -> None:
        """The writer's callback: items sent online after an expiry are done."""
        if self._driver.online_pending:
            self._driver.committed(outcomes)
            self._check()

    def _sealed(self, sealed: Sealed) -> None:
        self._spawn(self._record(sealed))
        self._check()

    async def _record(self, sealed: Sealed) -> None:
        if sealed.writes is not None:
            await sealed.writes  # the lines spilled so far are in the file, in order
        job = sealed.snap.job
        row = await self._packer.record(
            sealed.pack, job.config.api, job.fingerprint, sealed.snap.params, path=sealed.path
        )
        del sealed  # its lines are on disk now: not kept for the batch's life
        await self._driver.drive(row, recovered=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"batch-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._check()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Crash-only, as the daemon's other tasks: the restart resumes the batch.
            self._on_failure(task.get_name(), exc)

    def _check(self) -> None:
        if not self._tasks and not self._packer.holding and not self._driver.online_pending:
            self._idle.set()
        else:
            self._idle.clear()
