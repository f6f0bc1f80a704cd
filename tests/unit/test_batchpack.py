"""synthd.batchpack: a job's open pack flushed when full, spilled to its file in pieces,
recorded with every member's line where its offset says; the feeder held while packs wait."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from synthd import batchpack
from synthd.batchpack import Packer, Sealed
from synthd.batchstore import BatchStore
from synthd.models import Source, WorkItem
from synthd.pipeline import Attempt, JobRuntime, prepare
from tests.helpers import Parts, Workdir, assemble, simple_job, write_provider_config

NOWHERE = "http://127.0.0.1:9/v1"  # packing sends nothing


def batch_parts(work: Workdir, max_requests: int) -> tuple[Parts, JobRuntime, Source]:
    """Job "q" in batch mode, and a claimed source for its items."""
    job = simple_job("q", input='"lines"', mode='"batch"', batch_max_requests=max_requests)
    parts = assemble(work, write_provider_config(work, NOWHERE, job))
    rt = parts.jobs["q"]
    src = parts.cp.add_source("q", "c0ffee00", "in.txt", "/nowhere", rt.job.fingerprint)
    return parts, rt, src


def attempt(rt: JobRuntime, src: Source, seq: int) -> Attempt:
    a = prepare(rt, WorkItem(src, seq, seq + 1, seq * 8, {"context": f"topic {seq}"}))
    assert isinstance(a, Attempt)
    return a


async def test_spilled_packs_are_recorded_whole_each_member_at_its_offset(
    work: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batchpack, "SPILL_BYTES", 300)  # a piece every line or so
    parts, rt, src = batch_parts(work, 5)
    store = BatchStore(parts.cp)
    folder = work.path / "state" / "batches" / "q"
    folder.mkdir(parents=True)
    sealed: list[Sealed] = []
    packer = Packer("q", rt.job.config, store, folder, sealed.append)
    for seq in range(12):
        packer.add(attempt(rt, src, seq))
    assert [len(s.pack.members) for s in sealed] == [5, 5]  # full packs go at once
    assert packer.holding
    packer.flush()
    assert not packer.holding and [len(s.pack.members) for s in sealed] == [5, 5, 2]
    seen = []
    for s in sealed:
        assert s.path is not None and s.writes is not None  # spilled before it was sealed
        await s.writes
        row = await packer.record(s.pack, "chat", rt.job.fingerprint, s.snap.params, path=s.path)
        data = s.path.read_bytes()
        members = store.members(row.id)
        assert sum(m.length for m in members) == len(data) == row.bytes
        for m in members:
            line = orjson.loads(data[m.offset : m.offset + m.length])
            assert line["custom_id"] == m.custom_id == f"c0ffee00:{m.seq}"
            assert f"topic {m.seq}" in line["body"]["messages"][-1]["content"]
            seen.append(m.seq)
    assert seen == list(range(12))
    parts.cp.close()


async def test_the_feeder_waits_while_packs_are_recorded_and_not_yet_created(
    work: Workdir,
) -> None:
    parts, rt, src = batch_parts(work, 1)
    packer = Packer("q", rt.job.config, BatchStore(parts.cp), work.path, lambda s: None)
    for seq in range(batchpack.PACKED_AHEAD):
        await packer.room()  # room for this one
        packer.add(attempt(rt, src, seq))  # a pack of one: sealed at once
    waiting = asyncio.ensure_future(packer.room())
    await asyncio.sleep(0)
    assert not waiting.done()
    packer.submitted_one()  # one created at the provider: room again
    await waiting
    parts.cp.close()
