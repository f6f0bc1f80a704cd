"""One batch's life at the provider, from its recorded pack to its closing transaction:

  packed -> (uploaded) -> created -> polled to a terminal state -> results -> closed

A crash may stop it anywhere; the next start resumes from the recorded state. Before
creating a recorded batch again it looks for it by the synthd key in its metadata, so a
batch created just before a kill is found, not created twice. Results go to the writer
as online outcomes do (the same filters, records, rejects and dead letters, one group
commit), skipping items already done; only once they are committed is the batch closed,
in the same transaction that moves its unfinished items to the next batch (up to
``batch_max_resubmits`` rounds; then a dead letter with the reason, or with
``batch_fallback = "online"`` after an expiry, the online path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import structlog

from synthd import batchresults, crashpoints
from synthd.allowance import Allowance
from synthd.batchapi import BatchApi
from synthd.batchfile import (
    BATCH_URLS,
    TERMINAL,
    LineResult,
    Member,
    batch_failure,
    body_of,
    failed_batch,
    parse_lines,
    poll_delay_s,
    token_limit_after,
)
from synthd.batchpack import Packer, read_pack_file
from synthd.batchstore import BatchRow
from synthd.client import parse_reply
from synthd.config import Job, Price
from synthd.errors import MalformedResponse, ProviderError, Retryable
from synthd.models import Outcome, Rejection, Reply, Source
from synthd.pipeline import Attempt, JobRuntime
from synthd.retry import retry_delay_s
from synthd.writer import Writer

log = structlog.get_logger("synthd.batches")

_TOKEN_LIMIT = "token_limit_exceeded"
# Result lines turned into outcomes and committed before the next are read: a batch of
# 50,000 never has all its records in memory at once.
SETTLE_CHUNK = 1000


class BatchDriver:
    """Drives each batch of one batch job, many at once, on the daemon's loop."""

    def __init__(
        self,
        rt: JobRuntime,
        packer: Packer,  # records a batch's next round, counts packs not yet created
        api: BatchApi,
        tokens: Allowance,  # the provider's enqueued tokens
        writer: Writer,
        price: Price | None,
        resumed: asyncio.Event,  # every resumed file is tracked by the writer
    ) -> None:
        self.rt = rt
        self.name = rt.job.name
        self.cfg = rt.job.config
        self.store = packer.store
        self.api = api
        self.tokens = tokens
        self.writer = writer
        self.price = price
        self.packer = packer
        self.resumed = resumed
        self._online: set[tuple[int, int]] = set()
        self._rng_state = 0
        self._enqueued_before: dict[int, int] = {}  # batch -> tokens enqueued when it was made
        self._open: dict[int, tuple[str, int]] = {}  # batch -> (state, requests), for /metrics
        self._settling = asyncio.Lock()
        self.made = 0  # batches created this run, for the benchmark and the log

    @property
    def online_pending(self) -> bool:
        """Whether items sent online after an expiry are not yet committed."""
        return bool(self._online)

    def committed(self, outcomes: list[Outcome]) -> None:
        """Items sent online after an expiry are done once their outcomes are committed."""
        for o in outcomes:
            self._online.discard((o.source.id, o.seq))

    async def drive(self, row: BatchRow, recovered: bool) -> None:
        """The batch from its recorded state to closed, and its next rounds after it.
        ``recovered``: a previous run recorded it, and may have uploaded or created it."""
        held = False
        self._show(row, row.state)
        try:
            obj, held = await self._submit(row, recovered)
            if obj.get("status") not in TERMINAL:
                obj = await self._poll(row, str(obj["id"]))
            if held:
                self.tokens.release(row.tokens)
                held = False
            self._show(row, str(obj.get("status")))
            await self.resumed.wait()  # outcomes only for files the writer follows
            async with self._settling:  # one batch's results at a time: memory stays flat
                nxt = await self._settle(row, obj)
            if nxt is not None:
                await self.drive(nxt, recovered=False)
        finally:
            self._show(row, None)
            if held:
                self.tokens.release(row.tokens)

    def _show(self, row: BatchRow, state: str | None) -> None:
        """Keep the job's batch gauges (``JobStats.batches``) to the batch's state."""
        if state is None:
            self._open.pop(row.id, None)
        else:
            self._open[row.id] = (state, row.requests)
        counts: dict[str, int] = {}
        for s, _ in self._open.values():
            counts[s] = counts.get(s, 0) + 1
        self.rt.stats.batches = counts
        self.rt.stats.batch_requests = sum(n for _, n in self._open.values())

    async def _submit(self, row: BatchRow, recovered: bool) -> tuple[dict[str, Any], bool]:
        """The batch as the provider has it: created now, or found again."""
        if row.state == "submitted":
            assert row.remote_id is not None
            self.tokens.used += row.tokens  # enqueued before the restart: still counts
            rid = row.remote_id
            return await self._status(rid), True
        try:
            if recovered:
                found = await self._retrying(lambda: self.api.find(row.key, row.created_at))
                if found is not None:
                    log.info("batch_found", job=self.name, batch=row.key, id=found["id"])
                    await asyncio.to_thread(self.store.submitted, row.id, found)
                    self.tokens.used += row.tokens
                    return found, True
            file_id = row.input_file_id
            name = f"{row.key}.jsonl"
            if file_id is None and recovered:  # uploaded just before a kill?
                file_id = await self._find_file(name, row.created_at)
                if file_id is not None:
                    await asyncio.to_thread(self.store.uploaded, row.id, file_id)
            if file_id is None:
                file_id = await self._retrying(lambda: self.api.upload(Path(row.path), name))
                crashpoints.hit("batch_uploaded")
                await asyncio.to_thread(self.store.uploaded, row.id, file_id)
            await self.tokens.acquire(row.tokens)
            self._enqueued_before[row.id] = self.tokens.used - row.tokens
            try:
                fid = file_id
                obj = await self._retrying(
                    lambda: self.api.create(fid, BATCH_URLS[row.api], row.key)
                )
            except ProviderError:
                self.tokens.release(row.tokens)
                raise
            crashpoints.hit("batch_created")
            await asyncio.to_thread(self.store.submitted, row.id, obj)
            self.made += 1
            self.rt.stats.batches_created += 1
            log.info("batch_created", job=self.name, batch=row.key, id=obj["id"])
            return obj, True
        except ProviderError as e:  # refused (a 4xx): the batch failed whole
            log.warning("batch_refused", job=self.name, batch=row.key, error=str(e))
            return failed_batch(None, "refused"), False
        finally:
            self.packer.submitted_one()

    async def _poll(self, row: BatchRow, batch_id: str) -> dict[str, Any]:
        polls = 0
        while True:
            delay = poll_delay_s(polls, self.cfg.batch_poll_s, self.cfg.batch_poll_max_s)
            await asyncio.sleep(delay)
            polls += 1
            obj = await self._status(batch_id)
            await asyncio.to_thread(self.store.observed, row.id, obj)
            self._show(row, str(obj.get("status")))
            if obj.get("status") in TERMINAL:
                return obj

    async def _find_file(self, name: str, since: float) -> str | None:
        """An upload found by its name; a provider that cannot list files finds none (the
        file is uploaded again, and the lost one only costs storage)."""
        try:
            found: str | None = await self._retrying(lambda: self.api.find_file(name, since))
        except ProviderError as e:
            log.info("batch_files_not_listed", job=self.name, error=str(e))
            return None
        return found

    async def _status(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider reports it; one it refuses to show (gone, a 404)
        reads as failed, so its items are sent again rather than waited for forever."""
        try:
            obj: dict[str, Any] = await self._retrying(lambda: self.api.get(batch_id))
        except ProviderError as e:
            log.warning("batch_lost", job=self.name, id=batch_id, error=str(e))
            return failed_batch(batch_id, "lost")
        return obj

    async def _retrying(self, call: Any) -> Any:
        """A Batch API call until it answers; a refusal (4xx) is raised."""
        attempt = 0
        pcfg = self.api.cfg
        while True:
            try:
                return await call()
            except Retryable as e:
                attempt += 1
                self._rng_state = (self._rng_state * 1103515245 + 12345) % (1 << 31)
                delay = retry_delay_s(
                    attempt,
                    pcfg.backoff_base_s,
                    pcfg.backoff_max_s,
                    self._rng_state / (1 << 31),
                    None,
                )
                log.warning("batch_api_retry", job=self.name, error=str(e), delay_s=round(delay, 2))
                await asyncio.sleep(delay)

    async def _settle(self, row: BatchRow, obj: dict[str, Any]) -> BatchRow | None:
        """Results to the writer, then the batch closed and what is missing sent again."""
        status = str(obj.get("status"))
        members = await asyncio.to_thread(self.store.members, row.id)
        handled = await asyncio.to_thread(self.store.done, row.id)
        sources = await asyncio.to_thread(self.store.sources, {m.source_id for m in members})
        lines = await asyncio.to_thread(read_pack_file, Path(row.path))
        job = replace(self.rt.job, fingerprint=row.fingerprint)
        params: dict[str, Any] = orjson.loads(row.params)
        now = time.time()
        failures = await self._results(row, obj, members, handled, sources, lines, job, params, now)
        whole = batch_failure(obj) if status == "failed" else f"batch_{status}"
        if whole == _TOKEN_LIMIT:
            # The provider's limit is below what was enqueued with this batch: keep under it.
            before = self._enqueued_before.pop(row.id, 0)
            self.tokens.limit = token_limit_after(self.tokens.limit, before, row.tokens)
            log.warning("batch_token_limit", job=self.name, batch=row.key, limit=self.tokens.limit)
        again, online, dead = batchresults.unfinished(
            members,
            handled,
            sources,
            status,
            self.cfg.batch_fallback,
            self.cfg.batch_max_resubmits,
        )
        for m in dead:
            failure = failures.get(m.custom_id)
            out = batchresults.dead(
                job, m, sources[m.source_id], failure, whole, obj.get("id"), now
            )
            self.rt.stats.dead += 1
            self.writer.submit(out)
        await self.writer.wait_idle()
        crashpoints.hit("batch_results_committed")
        log.info(
            "batch_done",
            job=self.name,
            batch=row.key,
            id=obj.get("id"),
            status=status,
            done=len(handled),
            again=len(again),
            online=len(online),
        )
        nxt: BatchRow | None = None
        if again:
            nxt = await self.packer.record_round(row, again, lines, params)
        else:
            await asyncio.to_thread(
                self.store.close, row.id, None if status == "completed" else whole
            )
        for m in online:
            self._send_online(m, sources, lines)
        await self._clean_up(row, obj)
        return nxt

    async def _results(
        self,
        row: BatchRow,
        obj: dict[str, Any],
        members: list[Member],
        handled: set[str],
        sources: dict[int, Source],
        lines: bytes,
        job: Job,
        params: dict[str, Any],
        now: float,
    ) -> dict[str, LineResult]:
        """The batch's output and error files to the writer, a chunk at a time, each
        committed before the next is read; ``handled`` grows by the items written. Returns
        the failed lines, by custom_id."""
        by_id = {m.custom_id: m for m in members}
        failures: dict[str, LineResult] = {}
        for fid in (obj.get("output_file_id"), obj.get("error_file_id")):
            if not fid:
                continue
            try:
                raw = await self._retrying(lambda f=fid: self.api.content(f))
            except ProviderError as e:  # gone: its items count as missing, sent again
                log.warning("batch_file_lost", job=self.name, file=fid, error=str(e))
                continue
            crashpoints.hit("batch_downloaded")
            rows = raw.splitlines()
            del raw
            for start in range(0, len(rows), SETTLE_CHUNK):
                chunk = rows[start : start + SETTLE_CHUNK]
                for r in await asyncio.to_thread(parse_lines, chunk):
                    m = by_id.get(r.custom_id)
                    if m is None or r.custom_id in handled or m.source_id not in sources:
                        continue
                    if r.body is None:
                        failures[r.custom_id] = r
                        continue
                    try:
                        reply = parse_reply(row.api, orjson.dumps(r.body))
                    except MalformedResponse as e:
                        failures[r.custom_id] = LineResult(r.custom_id, None, "malformed", str(e))
                        continue
                    out, rejected = batchresults.completed(
                        job,
                        self.rt.snapshot.filters,
                        m,
                        sources[m.source_id],
                        lines[m.offset : m.offset + m.length],
                        params,
                        reply,
                        obj.get("id"),
                        self.price,
                        now,
                    )
                    self._count(reply, rejected)
                    self.writer.submit(out)
                    handled.add(r.custom_id)
                await self.writer.wait_idle()
        return failures

    def _count(self, reply: Reply, rejected: list[Rejection]) -> None:
        stats = self.rt.stats
        stats.count("batch_200")
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.completion_tokens
        for r in rejected:
            stats.reject(r.reason)

    def _send_online(self, m: Member, sources: dict[int, Source], lines: bytes) -> None:
        body = body_of(lines[m.offset : m.offset + m.length])
        item = batchresults.item_of(m, sources[m.source_id])
        context = m.sent_context if m.sent_context is not None else item.fields.get("context", "")
        snap = self.rt.snapshot
        a = Attempt(
            self.rt,
            snap,
            item,
            orjson.dumps(body),
            batchresults.prompt_of(body),
            m.prompt_chars,
            m.reserved,
            context,
        )
        self._online.add((m.source_id, m.seq))
        self.rt.dispatcher.submit(a)

    async def _clean_up(self, row: BatchRow, obj: dict[str, Any]) -> None:
        """The batch's files: ours always, the provider's when ``batch_delete_files``."""
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, row.path)
        if not self.cfg.batch_delete_files:
            return
        for fid in (
            row.input_file_id or obj.get("input_file_id"),
            obj.get("output_file_id"),
            obj.get("error_file_id"),
        ):
            if fid:
                try:
                    await self.api.delete_file(str(fid))
                except ProviderError as e:  # a leftover file costs storage, not data
                    log.warning("batch_file_not_deleted", file=fid, error=str(e))
