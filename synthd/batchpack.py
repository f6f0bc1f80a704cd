"""A batch job's open pack: rendered requests gathered into one Batch API input file.

``Packer.add`` puts an item's request line in the open ``Pack`` (``batchfile.Pack``); the
pack is flushed when full, ``batch_max_wait_s`` after its first line, or when asked
(``--once``: when the spool is read). A big pack's lines go to its file in pieces as it
fills (``SPILL_BYTES``), so a pack of 100 MB does not sit in memory. ``Packer.record``
writes the rest of a pack's file, fsyncs it and its folder, and only then records its
membership in one transaction (``BatchStore.add``): from then on its items are the
batch's. ``room`` is the feeder's wait while ``PACKED_AHEAD`` packs are recorded and not
yet created at the provider.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from synthd import crashpoints
from synthd.batchfile import Member, Pack, custom_id, request_line
from synthd.batchstore import BatchRow, BatchStore, NewBatch
from synthd.config_jobs import JobConfig
from synthd.pipeline import Attempt, JobSnapshot

log = structlog.get_logger("synthd.batches")

PACKED_AHEAD = 2  # packs recorded but not yet created before the feeder waits
SPILL_BYTES = 4 * 1024 * 1024  # a pack's lines go to its file in pieces of this size


@dataclass(frozen=True, slots=True)
class Sealed:
    """A flushed pack, to be recorded: its job snapshot, and its file if lines were
    spilled to it (``writes`` is the last spill, done once the file holds them all)."""

    pack: Pack
    snap: JobSnapshot
    path: Path | None
    writes: asyncio.Future[None] | None


class Packer:
    """One batch job's open pack and its files, on the daemon's loop."""

    def __init__(
        self,
        name: str,
        cfg: JobConfig,
        store: BatchStore,
        folder: Path,
        on_sealed: Callable[[Sealed], None],
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.store = store
        self.folder = folder
        self._on_sealed = on_sealed
        self._pack = self.new_pack()
        self._pack_snap: JobSnapshot | None = None
        self._pack_path: Path | None = None  # its file, once lines were spilled to it
        self._pack_writes: asyncio.Future[None] | None = None  # the last spill, chained
        self._timer: asyncio.TimerHandle | None = None
        self._unsubmitted = 0
        self._room = asyncio.Event()
        self._room.set()

    def new_pack(self) -> Pack:
        return Pack(self.cfg.batch_max_requests, self.cfg.batch_max_bytes)

    @property
    def holding(self) -> bool:
        """Whether the open pack has any item."""
        return bool(self._pack.members)

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
            self._pack.size,
            len(line),
            item.fields,
            item.meta,
            None if a.context == context else a.context,
            a.prompt_chars,
            a.reserved,
        )
        if not self._pack.members:
            self._pack_snap = a.snap
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.cfg.batch_max_wait_s, self.flush)
        self._pack.add(line, member)
        if self._pack.full:
            self.flush()
        elif len(self._pack.data) >= SPILL_BYTES:
            self._spill()

    def _spill(self) -> None:
        """Hand the pack's lines so far to its file (in order, in a thread)."""
        if self._pack_path is None:
            self._pack_path = self._new_path()
        self._pack_writes = asyncio.ensure_future(
            _append_after(self._pack_writes, self._pack_path, self._pack.take())
        )

    def flush(self) -> None:
        """Seal the open pack and hand it on (to be recorded), if it holds anything."""
        self._cancel_timer()
        pack, snap = self._pack, self._pack_snap
        path, writes = self._pack_path, self._pack_writes
        self._pack, self._pack_snap = self.new_pack(), None
        self._pack_path, self._pack_writes = None, None
        if pack.members and snap is not None:
            self._unsubmitted += 1
            if self._unsubmitted >= PACKED_AHEAD:
                self._room.clear()
            self._on_sealed(Sealed(pack, snap, path, writes))

    def stop(self) -> None:
        """No flush by the timer from now on (the daemon is stopping)."""
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def room(self) -> None:
        """Wait while enough packs are recorded and not yet created: the spool waits."""
        await self._room.wait()

    def unsubmitted_one(self) -> None:
        """One more pack recorded and not yet created that did not come from ``flush``:
        a batch a previous run left, or a batch's next round (neither closes ``room``)."""
        self._unsubmitted += 1

    def submitted_one(self) -> None:
        """A recorded pack is created at the provider (or refused): one less ahead."""
        self._unsubmitted -= 1
        if self._unsubmitted < PACKED_AHEAD:
            self._room.set()

    async def record(
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
        membership in one transaction (closing batch ``closing`` in the same one)."""
        if path is None:
            path = self._new_path()
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

    async def record_round(
        self, row: BatchRow, again: list[Member], lines: bytes, params: dict[str, Any]
    ) -> BatchRow:
        """A batch's next round: the requests of ``again`` (read back from ``lines``, its
        file) as a new pack, recorded in the transaction that closes ``row``."""
        pack = self.new_pack()
        for m in again:
            pack.add(lines[m.offset : m.offset + m.length], replace(m, offset=pack.size))
        self.unsubmitted_one()
        try:
            return await self.record(pack, row.api, row.fingerprint, params, row.id, row.round + 1)
        except BaseException:
            self.submitted_one()
            raise

    def _new_path(self) -> Path:
        return self.folder / f"{os.urandom(8).hex()}.jsonl"


def read_pack_file(path: Path) -> bytes:
    """A recorded pack's lines, read back for its members' requests (none once removed)."""
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
