"""Batch mode against the simulator's Batch API: every item exactly once, whatever fails."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from synthd.sim import RunningSim, SimConfig, running_sim
from tests.helpers import Workdir, run_once, simple_job, write_provider_config

N_LINES = 30


def batch_job(**extra: Any) -> str:
    keys: dict[str, Any] = {
        "input": '"lines"',
        "mode": '"batch"',
        "batch_max_requests": 8,
        "batch_poll_s": 0.02,
        "batch_poll_max_s": 0.1,
        "batch_max_wait_s": 30,
        **extra,
    }
    return simple_job("q", **keys)


def spool_lines(work: Workdir, n: int = N_LINES, name: str = "topics.txt") -> None:
    rows = "\n".join(f"topic number {i} about rivers" for i in range(n))
    (work.spool("q") / name).write_text(rows + "\n")


def outcomes(work: Workdir) -> Counter[int]:
    """Lines per input item, over records, rejects and dead letters."""
    lines = [*work.lines("q"), *work.lines("q", "rejects"), *work.lines("q", "dead")]
    return Counter(ln["source"]["seq"] for ln in lines)


async def sim(**kw: Any) -> AsyncIterator[RunningSim]:
    async with running_sim(SimConfig(**{"port": 0, "batch_time_s": 0.05, **kw})) as s:
        yield s


@pytest.fixture
async def plain() -> AsyncIterator[RunningSim]:
    async for s in sim():
        yield s


async def test_once_sends_every_item_in_batches_and_records_each_once(
    work: Workdir, plain: RunningSim
) -> None:
    write_provider_config(work, plain.base_url, batch_job())
    spool_lines(work)
    daemon = await run_once(work)
    assert outcomes(work) == dict.fromkeys(range(N_LINES), 1)
    recs = work.lines("q")
    assert len(recs) == N_LINES and all(r["batch_id"].startswith("batch_") for r in recs)
    assert len({r["batch_id"] for r in recs}) == 4  # 30 items, 8 a batch
    assert plain.stats()["requests"] == 0  # not one online request
    assert daemon.batchers["q"].made == 4
    assert not plain.sim.batches.files, "input and output files are deleted"
    assert (work.spool("q") / "done" / "topics.txt").exists()
