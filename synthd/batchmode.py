"""Batch mode in a running daemon: its jobs' packers and the clients they share.

At start-up every ``mode = "batch"`` job gets its ``JobBatches`` (``batches.py``), which
drives the batches a previous run left open; the jobs of one provider share one Files/Batch
API client (``batchapi.py``) and one allowance of enqueued tokens. Once mode waits here for
every batch's results; at the end the drivers stop (a batch goes on at the provider, the
next start picks it up) and the clients close.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from synthd.allowance import Allowance
from synthd.batchapi import BatchApi
from synthd.batches import JobBatches
from synthd.batchstore import BatchStore
from synthd.checkpoint import Checkpoint
from synthd.config import Config
from synthd.models import Outcome
from synthd.pipeline import Dispatcher, JobRuntime
from synthd.writer import Writer


class BatchMode:
    """The batch-mode jobs of one daemon, by name (``batchers``); empty when there are none."""

    def __init__(
        self,
        config: Config,
        checkpoint: Checkpoint,
        writer: Writer,
        on_failure: Callable[[str, BaseException], None],
    ) -> None:
        self.config = config
        self.checkpoint = checkpoint
        self.writer = writer
        self.on_failure = on_failure
        self.batchers: dict[str, JobBatches] = {}
        self._apis: list[BatchApi] = []

    async def start(self, jobs: dict[str, JobRuntime], dispatchers: dict[str, Dispatcher]) -> None:
        """Batch-mode jobs get their packer and the drivers of the batches left open."""
        wanted = [rt for rt in jobs.values() if rt.job.config.mode == "batch"]
        if not wanted:
            return
        store = await asyncio.to_thread(BatchStore, self.checkpoint)
        apis: dict[str, tuple[BatchApi, Allowance]] = {}
        for rt in wanted:
            provider = rt.job.config.provider
            if provider not in apis:
                cfg = self.config.providers[provider]
                api = BatchApi(cfg, self.config.api_key(provider), dispatchers[provider].budget)
                await api.start()
                self._apis.append(api)
                apis[provider] = (api, Allowance(cfg.batch_enqueued_tokens))
            api, tokens = apis[provider]
            folder = self.config.paths.state / "batches" / rt.job.name
            price = self.config.prices.get(rt.job.config.model)
            b = JobBatches(rt, store, api, tokens, self.writer, folder, price, self.on_failure)
            self.batchers[rt.job.name] = b
            await b.start()

    async def until_done(self) -> None:
        """Once mode, the spool read and its items committed or packed: every part-full
        pack goes at once, then this waits for every batch's results."""
        for b in self.batchers.values():
            b.flush()
        for b in self.batchers.values():
            await b.until_idle()

    def committed(self, outcomes: list[Outcome]) -> None:
        for b in self.batchers.values():
            b.committed(outcomes)

    async def stop(self) -> None:
        """Stop driving the batches, then close the API clients."""
        for b in self.batchers.values():
            await b.stop()
        for api in self._apis:
            await api.close()
