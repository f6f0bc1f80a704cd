"""synthd.feeder: claiming real spool files, admitting their items, and the bounds on admission."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from synthd.admission import ADMIT_AHEAD, Admission
from synthd.feeder import Feeder
from synthd.models import Outcome
from synthd.pipeline import Attempt
from tests.helpers import Parts, Workdir, assemble, simple_job, write_provider_config

# -- feeding a job from real spool files (nothing is sent: the queue is looked at) ----------

NOWHERE = "http://127.0.0.1:9/v1"


@pytest.fixture
def parts_of(work: Workdir) -> Iterator[Any]:
    made: list[Parts] = []

    def build(jobs: str, **provider: Any) -> Parts:
        made.append(assemble(work, write_provider_config(work, NOWHERE, jobs, **provider)))
        return made[-1]

    yield build
    for parts in made:
        parts.cp.close()


def feeder_of(parts: Parts) -> Feeder:
    admission = Admission(parts.cfg, parts.writer, parts.jobs)
    return Feeder(
        parts.cfg, parts.cp, parts.writer, parts.jobs, admission, asyncio.Event(), once=True
    )


def queued(parts: Parts) -> list[Attempt]:
    out = []
    while not parts.dispatcher.queue.empty():
        out.append(parts.dispatcher.queue.get_nowait())
    return out


async def test_a_file_is_claimed_and_each_line_admitted_as_one_attempt(
    work: Workdir, parts_of: Any
) -> None:
    parts = parts_of(simple_job(input='"lines"'))
    (work.spool("q") / "in.txt").write_text("harbours\nlighthouses\n\ntides\n")
    feeder = feeder_of(parts)
    await asyncio.wait_for(feeder.feed("q"), 10)
    attempts = queued(parts)
    assert [a.context for a in attempts] == ["harbours", "lighthouses", "tides"]
    assert len({a.item.source.id for a in attempts}) == 1
    claimed = work.path / attempts[0].item.source.path  # relative to the deployment
    assert claimed.parent == work.spool("q") / ".work" and claimed.name.endswith("-in.txt")
    assert sorted(p.name for p in work.spool("q").iterdir()) == [".work", "done", "failed"]
    assert feeder.admission.outstanding == 3 and parts.jobs["q"].stats.items_queued == 3


async def test_small_files_are_one_item_each_and_a_bad_one_goes_to_failed(
    work: Workdir, parts_of: Any
) -> None:
    parts = parts_of(simple_job())  # input = "file": a file is one item
    spool_dir = work.spool("q")
    for name, text in [("a.txt", "alpha"), ("b.txt", "bravo"), ("empty.txt", "  \n")]:
        (spool_dir / name).write_text(text)
    await asyncio.wait_for(feeder_of(parts).feed("q"), 10)
    assert sorted(a.context for a in queued(parts)) == ["alpha", "bravo"]
    assert (spool_dir / "failed" / "empty.txt").exists()
    report = orjson.loads((spool_dir / "failed" / "empty.txt.error.json").read_bytes())
    assert report["reason"] == "empty"


async def test_admission_stops_at_the_providers_slots_until_outcomes_are_committed(
    work: Workdir, parts_of: Any
) -> None:
    # One request in flight: max_in_flight + ADMIT_AHEAD slots, then feeding waits.
    slots = 1 + ADMIT_AHEAD
    parts = parts_of(simple_job(input='"lines"'), max_in_flight=1)
    (work.spool("q") / "in.txt").write_text("".join(f"topic {i}\n" for i in range(slots + 40)))
    feeder = feeder_of(parts)
    feeding = asyncio.create_task(feeder.feed("q"))
    for _ in range(2000):  # up to 20 s: the file is read in a thread
        if parts.dispatcher.queue.qsize() >= slots:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # room for a wrong admission to show
    assert parts.dispatcher.queue.qsize() == slots and not feeding.done()
    first = queued(parts)[:40]  # the queue is empty now, the slots still held
    feeder.admission.committed([Outcome(a.item.source, a.item.seq, 0, 0, "record") for a in first])
    await asyncio.wait_for(feeding, 10)
    assert parts.dispatcher.queue.qsize() == 40  # the rest of the file took the freed slots
    assert parts.jobs["q"].stats.items_queued == slots + 40
    assert feeder.admission.outstanding == slots
