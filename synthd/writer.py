"""The single writer: where an outcome becomes durable, in a fixed order.

Every item's outcome (records, rejects, a dead letter, a bad input line) goes
through ``Writer.submit``. The writer batches them for ``commit_interval_s``
and commits each batch in a worker thread, in this order:

1. de-duplicate records against the job's history (inside the transaction): exact
   copies by digest, near-duplicates by MinHash (``synthd.nearindex``) where the job
   asks for it, their keys computed in the thread before the transaction opens;
2. append the batch's lines to the ``.part`` shards and fsync each file once
   (group fsync: one fsync per stream per batch, not per record);
3. commit the checkpoint: the items, the new resume points and the shard
   offsets the checkpoint now vouches for;
   and the end of every source whose items are now all done;
   and the items of pipeline stages made from the batch's records
   (``synthd.stagestore``);
4. roll full shards to their final names; move finished sources' files to
   ``done/`` (``spool.move_finished``).

So a record is on disk before its item counts as done. A crash between 2 and 3
leaves lines past the committed offset: ``recover`` adopts the complete items
among them (no request is sent again) and cuts the rest, including a torn last
line. If a write fails (disk full, read-only folder) the batch is rolled back
from the files, the writer reports itself blocked, and retries until it works:
nothing is thrown away, and the dispatcher stops sending meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from synthd import crashpoints, jsonbytes, nearindex, recovery, spool
from synthd.checkpoint import Checkpoint, Transaction
from synthd.config import Config
from synthd.errors import OutputBlocked
from synthd.histogram import Histogram
from synthd.models import Outcome, Source
from synthd.nearindex import BatchKeys
from synthd.shards import ShardStream
from synthd.stagestore import Handover, stage_links

log = structlog.get_logger("synthd.writer")
_T = TypeVar("_T")

# Errors that mean "the disk cannot take this now", not "the program is wrong".
_BLOCKING_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EIO}
)
_RETRY_BLOCKED_S = 2.0
# Seconds from a batch handed to the commit thread to it being durable (blocked time included).
COMMIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


@dataclass(slots=True)
class Progress:
    """How far a source's items are done, for its resume point."""

    source: Source
    seq: int  # every item below this is done
    line: int
    offset: int
    done: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq -> (line, end)
    total: int | None = None

    def mark(self, seq: int, line: int, end: int) -> bool:
        """Record one done item; True if the resume point moved."""
        self.done[seq] = (line, end)
        return self.advance()

    def advance(self) -> bool:
        """Move the resume point over every done item right after it."""
        moved = False
        while self.seq in self.done:
            self.line, self.offset = self.done.pop(self.seq)
            self.seq += 1
            moved = True
        return moved

    def copy(self) -> Progress:
        return Progress(self.source, self.seq, self.line, self.offset, dict(self.done), self.total)

    def restore(self, saved: Progress) -> None:
        """Undo marks whose commit failed, so the retry moves the resume point again."""
        self.seq, self.line, self.offset = saved.seq, saved.line, saved.offset
        self.done, self.total = saved.done, saved.total

    @property
    def complete(self) -> bool:
        return self.total is not None and self.seq >= self.total


@dataclass(frozen=True, slots=True)
class SourceEnd:
    """The reader reached the end of a source: it has ``total`` items."""

    source_id: int
    total: int


class Writer:
    """The only code that appends to shards and commits outcomes to the checkpoint.

    Owns the shard streams (``streams``), the batch waiting to commit and each tracked
    source's ``Progress`` (``progress``: its resume point). The loop side (``track``,
    ``untrack``, ``submit``, ``run``, ``close``) runs on the daemon's event loop; each batch's
    ``_commit`` and the rotations run in one worker thread at a time, which alone appends,
    fsyncs and commits. The two sides share ``progress`` under one invariant: the loop adds
    a source's entry before the first of its items is submitted and drops it only for a
    failed source, and the thread only reads and updates the entries of the sources in its
    batch (a dropped one is skipped); each dict operation is atomic under the GIL. Nobody
    else reads a ``Progress``: the feeder skips what was done before a restart from what
    it passed to ``track``.

    ``on_committed`` and ``on_source_done`` are called on the loop after each commit, in
    that order; ``recover`` is blocking and runs once in a thread before any work is read.
    """

    def __init__(
        self,
        config: Config,
        checkpoint: Checkpoint,
        on_committed: Callable[[list[Outcome]], None],
        on_source_done: Callable[[Source, str], None],
    ) -> None:
        self.config = config
        self.cp = checkpoint
        self._on_committed = on_committed
        self._on_source_done = on_source_done
        self.streams: dict[str, dict[str, ShardStream]] = {}
        for name, job in config.jobs.items():
            out = config.paths.out / name
            o = job.config.output
            self.streams[name] = {
                "records": ShardStream(
                    out, config.shard_prefix(name), o.shard_max_records, o.shard_max_bytes
                ),
                "rejects": ShardStream(
                    out / "rejects", config.shard_prefix("rejects"), 1_000_000, o.shard_max_bytes
                ),
                "dead": ShardStream(
                    out / "dead-letter", config.shard_prefix("dead"), 1_000_000, o.shard_max_bytes
                ),
            }
        self.near = nearindex.params_by_job(config)
        self._key = {s: (job, kind) for job, ss in self.streams.items() for kind, s in ss.items()}
        self.stage_links = stage_links(config)
        self.progress: dict[int, Progress] = {}
        self._pending: list[Outcome | SourceEnd] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.blocked: str | None = None
        self.commit_s = Histogram(COMMIT_BUCKETS_S)  # exported as synthd_writer_commit_seconds
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self._closing = False
        self._unrotated: set[ShardStream] = set()
        self.records_written = 0  # since start, after de-duplication

    # -- start-up --------------------------------------------------------

    def recover(self) -> int:
        """Reconcile shards with the checkpoint (``recovery.recover``); items adopted.

        Blocking; runs once before any work is read.
        """
        return recovery.recover(self.cp, self.streams, self.stage_links, self.near)

    def track(self, source: Source, done_after: dict[int, tuple[int, int]]) -> Progress:
        """Start following a source's progress from its resume point.

        ``done_after`` holds items finished out of order before a restart: the
        reader skips them, and the resume point moves past them in turn.
        """
        p = Progress(source, source.resume_seq, source.resume_line, source.resume_offset)
        p.done.update(done_after)
        p.advance()  # items adopted by recovery may sit right at the resume point
        self.progress[source.id] = p
        return p

    # -- the loop side ---------------------------------------------------

    def submit(self, item: Outcome | SourceEnd) -> None:
        """Queue an outcome for the next commit. Never blocks."""
        self._pending.append(item)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once everything submitted so far is committed."""
        await self._idle.wait()

    async def run(self) -> None:
        """Commit batches until ``close``; the last batch is committed before return."""
        interval = self.config.service.commit_interval_s
        while True:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(interval)  # gather a group for one fsync
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._commit_until_done(batch)
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return

    async def close(self) -> None:
        """Commit what is pending, then stop ``run``. Shielded by the caller."""
        self._closing = True
        self._wake.set()
        await self.wait_idle()

    async def _commit_until_done(self, batch: list[Outcome | SourceEnd]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        finished = await self._until_unblocked(lambda: self._commit(batch))
        self.commit_s.observe(loop.time() - started)
        # The batch is committed; a shard the folder would not let us close keeps
        # the writer blocked (so sending stays paused) until it can be closed.
        if self._unrotated:
            await self._until_unblocked(self._rotate_pending)
        if self.blocked is not None:
            log.warning("output_resumed", was=self.blocked)
            self.blocked = None
            self.unblocked.set()
        self._on_committed([o for o in batch if isinstance(o, Outcome)])
        for source, path in finished:
            self._on_source_done(source, path)

    async def _until_unblocked(self, work: Callable[[], _T]) -> _T:
        """Run ``work`` in a thread until it stops raising ``OutputBlocked``.

        Cancelling the caller does not stop the thread, so a cancelled caller
        still waits for it: once this returns or raises, no commit is running
        and the shards may be closed (an exit while blocked does just that).
        """
        while True:
            thread = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                while not thread.done():
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait([thread])
                if not thread.cancelled():
                    thread.exception()  # retrieved: a batch that failed is redone on restart
                raise
            except OutputBlocked as e:
                if self.blocked is None:
                    log.error("output_blocked", path=e.path, error=str(e))
                    self.blocked = str(e)
                    self.unblocked.clear()
                await asyncio.sleep(_RETRY_BLOCKED_S)

    # -- the thread side -------------------------------------------------

    def _commit(self, batch: list[Outcome | SourceEnd]) -> list[tuple[Source, str]]:
        outcomes = [o for o in batch if isinstance(o, Outcome)]
        ends = [e for e in batch if isinstance(e, SourceEnd)]
        touched: dict[ShardStream, tuple[int, int]] = {}
        sids = {o.source.id for o in outcomes} | {e.source_id for e in ends}
        before = [(p, p.copy()) for sid in sids if (p := self.progress.get(sid)) is not None]
        keys = nearindex.batch_keys(self.near, outcomes)  # hashed outside the lock claims wait on
        try:
            with self.cp.transaction() as tx:
                handover = Handover(self.stage_links)
                data = self._encode(tx, outcomes, keys, handover)
                for (job, kind), (chunk, count) in data.items():
                    stream = self.streams[job][kind]
                    touched.setdefault(stream, stream.mark())
                    stream.append(chunk, count)
                crashpoints.hit("shard_appended")
                for stream in touched:
                    stream.sync()
                crashpoints.hit("shard_fsynced")
                tx.record(outcomes)
                handover.commit(tx.db)
                moved = self._advance(outcomes, ends)
                finished = self._end_sources(tx, outcomes, ends)
                ended = {src.id for src, _ in finished}  # no resume point needed
                tx.resume_points({k: v for k, v in moved.items() if k not in ended})
                tx.shard_offsets(
                    {(*self._key[s], s.number): s.offset for s in touched if s.number is not None}
                )
        except (OSError, sqlite3.Error) as e:
            for stream, mark in touched.items():
                stream.truncate_to(mark)
            for p, saved in before:
                p.restore(saved)
            if isinstance(e, sqlite3.OperationalError) or (
                isinstance(e, OSError) and e.errno in _BLOCKING_ERRNOS
            ):
                where = getattr(e, "filename", None) or self.config.paths.out
                raise OutputBlocked(str(where), str(e)) from e
            raise
        crashpoints.hit("checkpoint_committed")
        self.records_written += sum(o.records_written for o in outcomes)
        # The batch is committed: nothing below may fail it, or it would be written twice.
        self._unrotated.update(s for s in touched if s.full)
        with contextlib.suppress(OutputBlocked):  # retried, blocked, by the loop side
            self._rotate_pending()
        for src, _ in finished:
            self.progress.pop(src.id, None)
        spool.move_finished(finished)
        return finished

    def _rotate_pending(self) -> None:
        """Close every full shard. Raises ``OutputBlocked`` if the folder refuses.

        The checkpoint is made power-cut safe first: once renamed, a shard may be
        taken away, so a lost commit's lines there could not be adopted again.
        """
        if self._unrotated:
            try:
                self.cp.sync()
            except OSError as e:
                raise OutputBlocked(str(self.cp.path), str(e)) from e
        for stream in list(self._unrotated):
            try:
                stream.close_shard()
            except OSError as e:
                raise OutputBlocked(str(stream.part_path), str(e)) from e
            crashpoints.hit("shard_renamed")
            self._unrotated.discard(stream)

    def _encode(
        self,
        tx: Transaction,
        outcomes: list[Outcome],
        keys: BatchKeys | None = None,
        handover: Handover | None = None,
    ) -> dict[tuple[str, str], tuple[bytearray, int]]:
        """The batch's lines per stream, duplicates turned into rejects; the records
        written are offered to ``handover``."""
        # One growing buffer per stream: see jsonbytes for why not a list to join.
        chunks: defaultdict[tuple[str, str], bytearray] = defaultdict(bytearray)
        counts: Counter[tuple[str, str]] = Counter()

        def add(key: tuple[str, str], obj: dict[str, Any]) -> None:
            jsonbytes.append_line(chunks[key], obj)
            counts[key] += 1

        keys = keys or {}
        for i, o in enumerate(outcomes):
            job = o.source.job
            records = o.lines.get("records", [])
            for rec, reject in zip(records, self._duplicates(tx, i, o, keys), strict=True):
                if reject is not None:
                    add((job, "rejects"), reject)
                    continue
                add((job, "records"), rec)
                if handover is not None:
                    handover.offer(job, rec)
            o.records_written = len(records) - o.duplicates - o.near_duplicates
            for kind in ("rejects", "dead"):
                for obj in o.lines.get(kind, ()):
                    add((job, kind), obj)
        return {k: (buf, counts[k]) for k, buf in chunks.items()}

    def _duplicates(
        self, tx: Transaction, i: int, o: Outcome, keys: BatchKeys
    ) -> list[dict[str, Any] | None]:
        """Per record of outcome ``i``: its reject line if it is a duplicate (exact, or
        near where the job asks), else None and it joins the job's history. Counts both
        on the outcome."""
        job = o.source.job
        records = o.lines.get("records", [])
        fresh = tx.dedupe(job, o.digests) if o.digests else [True] * len(records)
        o.duplicates = len(records) - sum(fresh)
        o.near_duplicates = 0
        rejects: list[dict[str, Any] | None] = []
        for j, (rec, new) in enumerate(zip(records, fresh, strict=True)):
            if not new:
                rejects.append(
                    {**rec, "reason": "duplicate", "detail": "same completion seen before"}
                )
                continue
            near = nearindex.near_reject(tx.db, self.near, job, rec, keys.get((i, j)))
            if near is not None:
                o.near_duplicates += 1
            rejects.append(near)
        return rejects

    def _advance(
        self, outcomes: list[Outcome], ends: list[SourceEnd]
    ) -> dict[int, tuple[int, int, int]]:
        moved: dict[int, tuple[int, int, int]] = {}
        for o in outcomes:
            p = self.progress.get(o.source.id)
            if p is not None and p.mark(o.seq, o.line, o.end):
                moved[o.source.id] = (p.seq, p.line, p.offset)
        for e in ends:
            if (p := self.progress.get(e.source_id)) is not None:
                p.total = e.total
        return moved

    def _end_sources(
        self, tx: Transaction, outcomes: list[Outcome], ends: list[SourceEnd]
    ) -> list[tuple[Source, str]]:
        """In the batch's transaction: sources whose every item is now done end, with
        their place in ``done/``. Their files move there once it is committed."""
        ids = {o.source.id for o in outcomes} | {e.source_id for e in ends}
        complete = [p.source for i in ids if (p := self.progress.get(i)) is not None and p.complete]
        if not complete:
            return []
        finished: list[tuple[Source, str]] = []
        for job in {src.job for src in complete}:
            mine = [src for src in complete if src.job == job]
            targets = spool.done_targets(self.config.paths.spool / job, [s.name for s in mine])
            finished.extend(zip(mine, targets, strict=True))
        tx.end_sources([(src.id, "done", path, None) for src, path in finished])
        return finished

    def untrack(self, source_id: int) -> None:
        """Stop following a source that failed (on the loop; its items may still arrive)."""
        self.progress.pop(source_id, None)

    def close_files(self) -> None:
        """On a clean stop every open shard gets its final name: the run is whole."""
        try:
            self.cp.sync()  # see _rotate_pending
        except OSError as e:  # they stay .part, complete up to their last newline
            log.warning("shards_not_closed", error=str(e))
            return
        for streams in self.streams.values():
            for s in streams.values():
                try:
                    s.close_shard()
                except OSError as e:  # stays .part: complete up to its last newline
                    log.warning("shard_not_closed", shard=s.part_path, error=str(e))
