"""Batch mode: a job's items packed into Batch API files, each batch driven to its results.

``JobBatches.add`` takes a rendered ``Attempt`` instead of the dispatcher: its request line
goes into the open ``Pack``, flushed when full or ``batch_max_wait_s`` after its first
line (``--once``: when the spool is read). A flushed pack is written to
``state/batches/<job>/``, fsynced, and its membership recorded in one transaction
(``BatchStore.add``); from then on its items are the batch's, and a restart skips them
in the spool and drives the batch instead. Each batch's driver:

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
from collections.abc import Callable
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
    Pack,
    batch_failure,
    body_of,
    custom_id,
    parse_lines,
    poll_delay_s,
    request_line,
)
from synthd.batchstore import BatchRow, BatchStore, NewBatch
from synthd.client import parse_reply
from synthd.config import Price
from synthd.errors import MalformedResponse, ProviderError, Retryable
from synthd.models import Outcome, Rejection, Reply
from synthd.pipeline import Attempt, JobRuntime, JobSnapshot
from synthd.retry import retry_delay_s
from synthd.writer import Writer

log = structlog.get_logger("synthd.batches")

PACKED_AHEAD = 2  # packs recorded but not yet created before the feeder waits
_TOKEN_LIMIT = "token_limit_exceeded"
# Result lines turned into outcomes and committed before the next are read: a batch of
# 50,000 never has all its records in memory at once.
SETTLE_CHUNK = 1000
SPILL_BYTES = 4 * 1024 * 1024  # a pack's lines go to its file in pieces of this size


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
        self.rt = rt
        self._on_failure = on_failure
        self.name = rt.job.name
        self.cfg = rt.job.config
        self.store = store
        self.api = api
        self.tokens = tokens
        self.writer = writer
        self.folder = folder
        self.price = price
        self.resumed = asyncio.Event()  # set by the feeder: every resumed file is tracked
        self._pack = self._new_pack()
        self._pack_snap: JobSnapshot | None = None
        self._pack_path: Path | None = None  # its file, once lines were spilled to it
        self._pack_writes: asyncio.Future[None] | None = None  # the last spill, chained
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubmitted = 0
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._online: set[tuple[int, int]] = set()
        self._rng_state = 0
        self._enqueued_before: dict[int, int] = {}  # batch -> tokens enqueued when it was made
        self._open: dict[int, tuple[str, int]] = {}  # batch -> (state, requests), for /metrics
        self._settling = asyncio.Lock()
        self.made = 0  # batches created this run, for the benchmark and the log

    def _new_pack(self) -> Pack:
        return Pack(self.cfg.batch_max_requests, self.cfg.batch_max_bytes)

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
                self._unsubmitted += 1
            self._spawn(self._drive(row, recovered=True))
        self._check()

    async def stop(self) -> None:
        """Stop driving (a batch goes on at the provider; the next start picks it up)."""
        if self._timer is not None:
            self._timer.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- packing (on the loop, from the feeder) --

    def add(self, a: Attempt) -> None:
        """Put one rendered item in the open pack. Never blocks (``room`` is the wait)."""
        if self._pack.members and a.snap is not self._pack_snap:
            self.flush()  # one batch, one job snapshot: its records share params
        item = a.item
        cid = custom_id(item.source.claim, item.seq)
        line = request_line(cid, a.snap.job.config.api, a.body)
        if not self._pack.fits(len(line)):
            self.flush()
        context = item.fields.get("context")
        member = Member(
            cid,
            item.source.id,
            item.seq,
            item.line,
            item.end,
            0,
            len(line),
            item.fields,
            item.meta,
            None if a.context == context else a.context,
            a.prompt_chars,
            a.reserved,
        )
        member = replace(member, offset=self._pack.size)
        if not self._pack.members:
            self._pack_snap = a.snap
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.cfg.batch_max_wait_s, self.flush)
        self._pack.add(line, member)
        self._idle.clear()
        if self._pack.full:
            self.flush()
        elif len(self._pack.data) >= SPILL_BYTES:
            self._spill()

    def _spill(self) -> None:
        """Hand the pack's lines so far to its file (in order, in a thread): a pack of
        100 MB need not sit in memory until it is full."""
        if self._pack_path is None:
            self._pack_path = self.folder / f"{os.urandom(8).hex()}.jsonl"
        self._pack_writes = asyncio.ensure_future(
            _append_after(self._pack_writes, self._pack_path, self._pack.take())
        )

    def flush(self) -> None:
        """Send the open pack on its way (recorded, then uploaded), if it holds anything."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pack, snap = self._pack, self._pack_snap
        path, writes = self._pack_path, self._pack_writes
        self._pack, self._pack_snap = self._new_pack(), None
        self._pack_path, self._pack_writes = None, None
        if pack.members and snap is not None:
            self._unsubmitted += 1
            if self._unsubmitted >= PACKED_AHEAD:
                self._room.clear()
            self._spawn(self._record(pack, snap, path, writes))
        self._check()

    async def room(self) -> None:
        """Wait while enough packs are recorded and not yet created: the spool waits."""
        await self._room.wait()

    async def until_idle(self) -> None:
        """Once every batch is closed and every item of theirs committed."""
        self._check()
        await self._idle.wait()

    def committed(self, outcomes: list[Outcome]) -> None:
        """The writer's callback: items sent online after an expiry are done."""
        if self._online:
            for o in outcomes:
                self._online.discard((o.source.id, o.seq))
            self._check()

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
        if not self._tasks and not self._pack.members and not self._online:
            self._idle.set()
        else:
            self._idle.clear()

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

    def _submitted_one(self) -> None:
        self._unsubmitted -= 1
        if self._unsubmitted < PACKED_AHEAD:
            self._room.set()

    # -- one batch's life --

    async def _record(
        self,
        pack: Pack,
        snap: JobSnapshot,
        path: Path | None,
        writes: asyncio.Future[None] | None,
    ) -> None:
        if writes is not None:
            await writes  # the lines spilled so far are in the file, in order
        job = snap.job
        row = await self._write(pack, job.config.api, job.fingerprint, snap.params, path=path)
        del pack  # its lines are on disk now: not kept for the batch's life
        await self._drive(row, recovered=False)

    async def _write(
        self,
        pack: Pack,
        api: str,
        fingerprint: str,
        params: dict[str, Any],
        closing: int | None = None,
        round_: int = 0,
        path: Path | None = None,
    ) -> BatchRow:
        """The pack's file (the rest of it, after what was spilled), fsynced, then its
        membership in one transaction."""
        if path is None:
            path = self.folder / f"{os.urandom(8).hex()}.jsonl"
        await asyncio.to_thread(_write_synced, path, pack.take())
        new = NewBatch(
            self.name,
            self.cfg.provider,
            api,
            str(path),
            fingerprint,
            params,
            pack.size,
            pack.tokens,
            pack.members,
            round_,
        )
        row = await asyncio.to_thread(self.store.add, new, closing)
        crashpoints.hit("batch_recorded")
        log.info("batch_packed", job=self.name, batch=row.key, requests=row.requests, round=round_)
        return row

    async def _drive(self, row: BatchRow, recovered: bool) -> None:
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
                await self._drive(nxt, recovered=False)
        finally:
            self._show(row, None)
            if held:
                self.tokens.release(row.tokens)

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
            return {
                "id": None,
                "status": "failed",
                "errors": {"data": [{"code": "refused"}]},
            }, False
        finally:
            self._submitted_one()

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
            return {"id": batch_id, "status": "failed", "errors": {"data": [{"code": "lost"}]}}
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
        by_id = {m.custom_id: m for m in members}
        sources = await asyncio.to_thread(self.store.sources, {m.source_id for m in members})
        lines = await asyncio.to_thread(_read_or_empty, Path(row.path))
        job = replace(self.rt.job, fingerprint=row.fingerprint)
        params: dict[str, Any] = orjson.loads(row.params)
        failures: dict[str, LineResult] = {}
        now = time.time()
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
        whole = batch_failure(obj) if status == "failed" else f"batch_{status}"
        if whole == _TOKEN_LIMIT:
            # The provider's limit is below what was enqueued with this batch: keep under it
            # from now on (a batch alone over it still goes, when nothing else is enqueued).
            before = self._enqueued_before.pop(row.id, 0)
            self.tokens.limit = min(self.tokens.limit, max(1, before + row.tokens - 1))
            log.warning("batch_token_limit", job=self.name, batch=row.key, limit=self.tokens.limit)
        again: list[Member] = []
        online: list[Member] = []
        for m in members:
            if m.custom_id in handled or m.source_id not in sources:
                continue
            if status == "expired" and self.cfg.batch_fallback == "online":
                online.append(m)
            elif m.tries < self.cfg.batch_max_resubmits:
                again.append(replace(m, tries=m.tries + 1))
            else:
                failure = failures.get(m.custom_id)
                source = sources[m.source_id]
                out = batchresults.dead(job, m, source, failure, whole, obj.get("id"), now)
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
            pack = self._new_pack()
            for m in again:
                line = lines[m.offset : m.offset + m.length]
                pack.add(line, replace(m, offset=pack.size))
            self._unsubmitted += 1
            try:
                nxt = await self._write(
                    pack, row.api, row.fingerprint, params, row.id, row.round + 1
                )
            except BaseException:
                self._submitted_one()
                raise
        else:
            await asyncio.to_thread(
                self.store.close, row.id, None if status == "completed" else whole
            )
        for m in online:
            self._send_online(m, sources, lines)
        self._check()
        await self._clean_up(row, obj)
        return nxt

    def _count(self, reply: Reply, rejected: list[Rejection]) -> None:
        stats = self.rt.stats
        stats.count("batch_200")
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.completion_tokens
        for r in rejected:
            stats.reject(r.reason)

    def _send_online(self, m: Member, sources: dict[int, Any], lines: bytes) -> None:
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


def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


async def _append_after(prev: asyncio.Future[None] | None, path: Path, data: bytes) -> None:
    if prev is not None:
        await prev
    await asyncio.to_thread(_append, path, data)


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def _write_synced(path: Path, data: bytes | bytearray) -> None:
    """Append the last of a pack's lines; fsync the file and its folder."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
