"""Batch mode against the simulator's Batch API: every item exactly once, whatever fails."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from synthd.daemon import Daemon
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


async def run_lines(work: Workdir, s: RunningSim, **job: Any) -> Daemon:
    """The batch job over ``N_LINES`` spooled lines, run once against ``s``; every item
    has ended as exactly one outcome."""
    write_provider_config(work, s.base_url, batch_job(**job))
    spool_lines(work)
    daemon = await run_once(work)
    assert outcomes(work) == dict.fromkeys(range(N_LINES), 1)
    return daemon


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
    daemon = await run_lines(work, plain)
    recs = work.lines("q")
    assert len(recs) == N_LINES and all(r["batch_id"].startswith("batch_") for r in recs)
    assert len({r["batch_id"] for r in recs}) == 4  # 30 items, 8 a batch
    assert plain.stats()["requests"] == 0  # not one online request
    assert daemon.batchers["q"].made == 4
    assert not plain.sim.batches.files, "input and output files are deleted"
    assert (work.spool("q") / "done" / "topics.txt").exists()


def sim_batches(s: RunningSim) -> list[dict[str, Any]]:
    return [b.obj() for b in s.sim.batches.batches.values()]


async def test_failed_lines_are_resubmitted_alone_until_done(work: Workdir) -> None:
    async for s in sim(batch_p_line_fail=0.3, fault_seed=3):
        await run_lines(work, s, batch_max_resubmits=12)
        assert len(work.lines("q")) == N_LINES
        made = sim_batches(s)
        assert len(made) > 4  # the failed lines went again ...
        sent = sum(b["request_counts"]["total"] for b in made)
        failed = sum(b["request_counts"]["failed"] for b in made)
        assert sent == N_LINES + failed  # ... and only they did


async def test_an_expired_batch_resubmits_its_remainder(work: Workdir) -> None:
    async for s in sim(batch_expire_every=2):
        await run_lines(work, s, batch_max_resubmits=10)
        assert len(work.lines("q")) == N_LINES
        made = sim_batches(s)
        assert any(b["status"] == "expired" for b in made)
        assert sum(b["request_counts"]["completed"] for b in made) == N_LINES


async def test_resubmits_run_out_into_dead_letters_with_the_reason(work: Workdir) -> None:
    async for s in sim(batch_expire_every=1):
        await run_lines(work, s, batch_max_resubmits=1)
        dead = work.lines("q", "dead")
        assert dead and all("batch_expired" in d["error"] and d["batch_id"] for d in dead)
        assert len(work.lines("q")) + len(dead) == N_LINES
        assert s.stats()["requests"] == 0  # no fallback asked: nothing online


async def test_fallback_online_sends_what_an_expiry_left(work: Workdir) -> None:
    async for s in sim(batch_expire_every=1):
        await run_lines(work, s, batch_fallback='"online"')
        recs = work.lines("q")
        assert len(recs) == N_LINES
        online = [r for r in recs if "batch_id" not in r]
        assert online and s.stats()["requests"] == len(online)
        assert len(sim_batches(s)) == 4  # the remainder did not go in another batch


async def test_a_failed_batch_is_sent_again_whole(work: Workdir) -> None:
    async for s in sim(batch_fail_every=2):
        await run_lines(work, s)
        assert len(work.lines("q")) == N_LINES
        assert any(b["status"] == "failed" for b in sim_batches(s))


async def test_token_limit_exceeded_then_success(work: Workdir) -> None:
    async for s in sim(batch_enqueued_tokens=2000, batch_time_s=2.0):
        await run_lines(work, s)
        assert len(work.lines("q")) == N_LINES
        made = sim_batches(s)
        codes = [b["errors"]["data"][0]["code"] for b in made if b["status"] == "failed"]
        assert codes and set(codes) == {"token_limit_exceeded"}
        assert sum(b["request_counts"]["completed"] for b in made) == N_LINES


async def test_status_metrics_and_dry_run_know_batches(work: Workdir, plain: RunningSim) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from synthd import config, dryrun, status
    from synthd.metrics import StatsCollector

    prices = '[prices."sim-1"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n'
    path = write_provider_config(work, plain.base_url, batch_job() + prices)
    spool_lines(work)
    cfg = config.load(path)
    online = config.load(
        write_provider_config(work, plain.base_url, simple_job("q", input='"lines"') + prices)
    )
    batch_plan, online_plan = dryrun.plan(cfg).jobs[0], dryrun.plan(online).jobs[0]
    assert batch_plan.mode == "batch" and batch_plan.cost and online_plan.cost
    assert batch_plan.cost.total_usd_max == round(online_plan.cost.total_usd_max / 2, 6)
    assert "at the batch rate" in dryrun.render(dryrun.plan(cfg))
    write_provider_config(work, plain.base_url, batch_job() + prices)

    daemon = await run_once(work)
    registry = CollectorRegistry()
    registry.register(StatsCollector({"q": daemon.jobs["q"].stats}, {}))
    text = generate_latest(registry).decode()
    assert 'synthd_batches_created_total{job="q"} 4.0' in text
    assert 'synthd_batch_requests{job="q"} 0.0' in text

    st = status.collect(cfg)
    assert len(st.batches) == 4 and {b["state"] for b in st.batches} == {"closed"}
    assert sum(b["completed"] for b in st.batches) == N_LINES
    assert "batches (batch mode)" in status.render(st)
    assert all(r["cost_usd"] > 0 for r in work.lines("q"))


async def test_a_pack_spilled_to_its_file_in_pieces_keeps_every_line_whole(
    work: Workdir, plain: RunningSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthd import batchpack

    monkeypatch.setattr(batchpack, "SPILL_BYTES", 700)  # a piece every line or two
    await run_lines(work, plain, batch_max_requests=13)
    for r in work.lines("q"):  # each record's prompt is its own line's, read back by offset
        assert f"topic number {r['source']['seq']} about" in r["messages"][-1]["content"]
    assert (
        sum(b.obj()["request_counts"]["completed"] for b in plain.sim.batches.batches.values())
        == N_LINES
    )


async def test_a_running_daemon_sends_a_part_full_batch_after_max_wait(
    work: Workdir, plain: RunningSim
) -> None:
    import asyncio

    from synthd import config
    from synthd.daemon import Daemon
    from tests.helpers import wait_until

    path = write_provider_config(
        work, plain.base_url, batch_job(batch_max_requests=1000, batch_max_wait_s=0.3)
    )
    spool_lines(work, 5)
    daemon = Daemon(config.load(path), handle_signals=False)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: len(work.lines("q")) == 5, timeout_s=30)
    finally:
        daemon.stop()
        assert await task == 0
    assert outcomes(work) == dict.fromkeys(range(5), 1)
    assert len(plain.sim.batches.batches) == 1


async def test_a_stop_while_a_batch_runs_leaves_it_to_the_next_start(work: Workdir) -> None:
    import asyncio

    from synthd import config
    from synthd.daemon import Daemon
    from tests.helpers import wait_until

    async with running_sim(SimConfig(port=0, batch_time_s=5.0)) as s:
        path = write_provider_config(work, s.base_url, batch_job(batch_max_wait_s=0.1))
        spool_lines(work)
        daemon = Daemon(config.load(path), handle_signals=False)
        task = asyncio.create_task(daemon.run())
        await wait_until(lambda: len(s.sim.batches.batches) == 4, timeout_s=30)
        daemon.stop()  # SIGTERM: every batch is still in progress at the provider
        assert await task == 0
        assert work.lines("q") == []
        await run_once(work)  # finds them in the checkpoint, waits for them, writes them
        assert outcomes(work) == dict.fromkeys(range(N_LINES), 1)
        assert len(s.sim.batches.batches) == 4  # none created again


async def test_a_batch_job_and_an_online_job_share_a_daemon(
    work: Workdir, plain: RunningSim
) -> None:
    jobs = batch_job() + simple_job("o", input='"lines"')
    write_provider_config(work, plain.base_url, jobs)
    spool_lines(work)
    (work.spool("o") / "t.txt").write_text("\n".join(f"online topic {i}" for i in range(12)) + "\n")
    await run_once(work)
    assert outcomes(work) == dict.fromkeys(range(N_LINES), 1)
    online = work.lines("o")
    assert sorted(r["source"]["seq"] for r in online) == list(range(12))
    assert not any("batch_id" in r for r in online)
    assert plain.stats()["requests"] == 12  # the online job's, and only those


async def test_files_are_kept_when_asked(work: Workdir, plain: RunningSim) -> None:
    await run_lines(work, plain, batch_delete_files="false")
    made = sim_batches(plain)
    kept = set(plain.sim.batches.files)
    assert {b["input_file_id"] for b in made} | {b["output_file_id"] for b in made} <= kept
    assert not list((work.path / "state" / "batches" / "q").iterdir())  # ours always go
