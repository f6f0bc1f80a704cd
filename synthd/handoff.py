"""Feeding a pipeline stage from its upstream job's committed records.

The writer's commit of an upstream record inserts its stage items into the hand-off
table in the same transaction (``stagestore.hand_over``): a stage item exists iff its
parent record is committed. ``feed_stage`` is a stage's feeder: it takes those rows in
order, a batch at a time, from where the stage's resume point stands, skips the ones
done out of order before a restart, and admits each as a ``WorkItem`` exactly as a
spool item is admitted. Their outcomes are committed like any other, under the stage's
one source row (status ``stage``), so the resume point, recovery's adoption of lines
past a crash and the ``items`` rows cover them with no code of their own.

The feeder waits for more on an event the writer's commit callback sets
(``Admission.committed``). In once mode it ends when its upstream job's feeder has ended,
that job has nothing admitted, and no row is left: by then every upstream record is
committed, and with it every row it gave.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import orjson
import structlog

from synthd import stages
from synthd.feeder import Feeder
from synthd.models import Source, WorkItem
from synthd.stagestore import StageRow, stage_rows, stage_source

log = structlog.get_logger("synthd.handoff")

ROWS_BATCH = 256  # stage items read in one trip to a thread, as a spool chunk is


def stage_item(src: Source, row: StageRow, per: stages.Per) -> WorkItem:
    """A hand-off row as the stage's work item: its name, line and id come from its
    parent's id and its index, so they are the same on every run."""
    kept = orjson.loads(row.fields)
    fields = stages.item_fields(kept, row.parent, row.idx, per)
    name = stages.child_name(row.upstream, row.parent, row.idx)
    fields["source"] = name
    source = replace(src, name=name, parent=row.parent, parent_fingerprint=row.parent_fingerprint)
    return WorkItem(source, row.seq, row.idx + 1, 0, fields)


async def feed_stage(feeder: Feeder, name: str) -> None:
    """Admit stage ``name``'s items as its upstream commits them; see the module doc."""
    with feeder.admission.job_feeding(name):
        await _feed(feeder, name)


async def _feed(feeder: Feeder, name: str) -> None:
    rt = feeder.jobs[name]
    cfg = rt.job.config
    upstream = cfg.from_
    assert upstream is not None
    cp = feeder.checkpoint
    src = await asyncio.to_thread(cp.write, stage_source, name, rt.job.fingerprint)
    if src.fingerprint != rt.job.fingerprint:
        log.warning(
            "job_changed",
            job=name,
            was=src.fingerprint,
            now=rt.job.fingerprint,
            note="done items are kept; the stage's other items use the new settings",
        )
        await asyncio.to_thread(cp.set_fingerprint, src.id, rt.job.fingerprint)
    done_after = await asyncio.to_thread(cp.done_after, src.id, src.resume_seq)
    feeder.writer.track(src, done_after)
    done_before = frozenset(done_after)
    cursor = src.resume_seq
    event = feeder.admission.stage_events[name]
    wait_s = feeder.config.service.scan_interval_s
    while not feeder.stopping:
        event.clear()  # a commit after this read sets it again: no wake-up is lost
        rows = await asyncio.to_thread(cp.read, stage_rows, name, cursor, ROWS_BATCH)
        for row in rows:
            cursor = row.seq + 1
            if row.seq in done_before:
                continue  # finished before a restart
            item = stage_item(src, row, cfg.per)
            nbytes = sum(len(v) for v in item.fields.values())
            await feeder.admission.admit(rt, item, nbytes)
            if feeder.stopping:
                return
        if rows:
            continue
        if feeder.once and feeder.admission.upstream_finished(upstream):
            # Every upstream record is committed now, with its rows: one last look.
            if not await asyncio.to_thread(cp.read, stage_rows, name, cursor, 1):
                return
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await event.wait()
