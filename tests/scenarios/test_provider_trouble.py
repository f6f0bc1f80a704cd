"""Provider trouble loses nothing: 429s never use up attempts, failed attempts give their
tokens back, a provider's wait is capped.

The daemon runs in-process against the simulator over real sockets (as in test_ratelimit).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from synthd import config, status
from synthd.daemon import Daemon
from synthd.sim import SimConfig, running_sim
from synthd.status import parse_live
from tests.helpers import (
    Workdir,
    budget_of,
    jsonl_job,
    run_once_timed,
    spool_items,
    write_provider_config,
)


async def test_429s_never_use_up_attempts(work: Workdir) -> None:
    # The server grants 2 requests a second; the daemon believes in 100 and may not learn
    # from headers, so it earns 429s. One attempt per item: a 429 that counted would
    # dead-letter its item.
    items = 12
    async with running_sim(SimConfig(port=0, rpm=120)) as sim:
        write_provider_config(
            work, sim.base_url, jsonl_job(), rpm=6000, adapt_to_headers=False, max_attempts=1
        )
        spool_items(work, items)
        await run_once_timed(work)
        stats = sim.stats()
    assert stats["rate_limited"] > 0, "the test needs 429s"
    dead = work.lines("q", "dead")
    assert not dead, [(d["kind"], d["error"]) for d in dead]
    assert len(work.lines("q")) == items


async def test_failed_attempts_give_their_tokens_back(work: Workdir) -> None:
    items = 40
    async with running_sim(SimConfig(port=0, p_500=0.3, fault_seed=3)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), max_attempts=20)
        spool_items(work, items)
        daemon, _ = await run_once_timed(work)
        stats = sim.stats()
    failed = stats["by_status"]["500"]
    assert failed > 0, "the test needs failures"
    budget = budget_of(daemon)
    assert budget.refunds == failed
    assert budget.refunded_tokens >= failed * 40  # each reserved at least max_tokens
    assert len(work.lines("q")) == items


# -- the provider circuit ------------------------------------------------------------


def watch_events(*names: str) -> tuple[dict[str, asyncio.Event], Any]:
    """Events set when a log event of that name is emitted (a processor for capture_logs)."""
    seen = {name: asyncio.Event() for name in names}

    def watch(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event.get("event") in seen:
            seen[event["event"]].set()
        return event

    return seen, watch


@pytest.mark.parametrize("kind", ["503", "refuse"])
async def test_an_outage_dead_letters_nothing(work: Workdir, kind: str) -> None:
    # The provider is down for the first 2 s. One attempt per item: any failure that
    # counted would dead-letter its item.
    items = 30
    outage = SimConfig(port=0, outage_at_s=0, outage_s=2, outage_kind=kind)  # type: ignore[arg-type]
    async with running_sim(outage) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), max_attempts=1, max_in_flight=8)
        spool_items(work, items)
        with capture_logs() as logs:
            daemon, _ = await run_once_timed(work)
    dead = work.lines("q", "dead")
    assert not dead, [(d["kind"], d["error"]) for d in dead]
    assert len(work.lines("q")) == items
    changes = [e for e in logs if e["event"] in ("provider_down", "provider_up")]
    assert [e["event"] for e in changes] == ["provider_down", "provider_up"]
    stats = daemon.provider_stats["default"]
    assert stats.up and stats.outages == 1


async def test_one_failing_item_among_successes_is_that_items_failure(work: Workdir) -> None:
    # 10% of requests fail at random while the rest succeed: no outage, and an item out of
    # attempts is dead-lettered as before.
    items = 60
    async with running_sim(SimConfig(port=0, p_500=0.1, fault_seed=5)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), max_attempts=1, max_in_flight=4)
        spool_items(work, items)
        with capture_logs() as logs:
            await run_once_timed(work)
    dead = work.lines("q", "dead")
    assert dead and {d["kind"] for d in dead} == {"attempts_exhausted"}
    assert len(work.lines("q")) + len(dead) == items
    assert not [e for e in logs if e["event"] == "provider_down"]


async def test_an_outage_shows_in_readyz_healthz_and_metrics(work: Workdir) -> None:
    async with running_sim(SimConfig(port=0, outage_at_s=0, outage_s=3)) as sim:
        write_provider_config(
            work, sim.base_url, jsonl_job(), service='listen = "127.0.0.1:0"', max_in_flight=8
        )
        spool_items(work, 20)
        cfg = config.load(work.path / "config" / "synthd.toml")
        daemon = Daemon(cfg, handle_signals=False)
        seen, watch = watch_events("provider_down", "file_done")
        with capture_logs(processors=[watch]):
            task = asyncio.create_task(daemon.run())
            try:
                await asyncio.wait_for(seen["provider_down"].wait(), 10)
                base = f"http://127.0.0.1:{daemon.http_port}"
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{base}/healthz") as r:
                        health = (r.status, await r.json())
                    async with http.get(f"{base}/readyz") as r:
                        ready = (r.status, await r.json())
                    async with http.get(f"{base}/metrics") as r:
                        metrics = await r.text()
                    async with http.get(f"{base}/api/status") as r:
                        page = await r.json()  # the status page's document
                # In a thread: the daemon answering /metrics runs on this loop.
                report = await asyncio.to_thread(status.collect, cfg, f"{base}/metrics")
                await asyncio.wait_for(seen["file_done"].wait(), 15)
            finally:
                daemon.stop()
                assert await asyncio.wait_for(task, 10) == 0
    assert health[0] == 200 and health[1]["ready"] is False
    assert health[1]["providers"] == {"default": {"up": False, "outages": 1}}
    assert ready == (503, {"ready": False, "down": ["default"]})
    assert 'synthd_provider_up{provider="default"} 0.0' in metrics
    live = parse_live(metrics)
    assert live is not None and live["default"].up is False
    assert report.jobs[0].provider_up is False
    provider = page["providers"][0]
    assert (provider["circuit"], provider["up"], provider["outages"]) == ("open", False, 1)
    assert page["health"]["ready"] is False
    assert "provider down" in status.render(report)
    assert len(work.lines("q")) == 20 and daemon.provider_stats["default"].up


async def test_a_concurrency_limit_without_headers_is_paced_by_429s_without_a_storm(
    work: Workdir,
) -> None:
    # The server takes 4 requests at a time and answers the rest with a bare 429: no
    # headers, no retry-after. The daemon believes in 32 at a time.
    items = 60
    async with running_sim(SimConfig(port=0, max_concurrent=4, latency_ms=50)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), max_in_flight=32, max_attempts=1)
        spool_items(work, items)
        await run_once_timed(work)
        stats = sim.stats()
    assert len(work.lines("q")) == items and not work.lines("q", "dead")
    # A storm would be a 429 for nearly every send at 32 in flight; paced by the 429s'
    # pauses and cuts, one for every few items (12 for 60 when this was written).
    assert stats["rate_limited"] <= items // 2, stats["by_status"]


async def test_a_day_long_retry_after_is_honoured_only_up_to_the_cap(work: Workdir) -> None:
    # The server's window is a second but it answers every 429 with "retry-after: 86400".
    items = 8
    sim_cfg = SimConfig(
        port=0, rpm=180, limit_kind="fixed", limit_window_s=1, retry_after_s=86400
    )  # 3 a second
    async with running_sim(sim_cfg) as sim:
        write_provider_config(
            work, sim.base_url, jsonl_job(), adapt_to_headers=False, retry_after_max_s=0.3
        )
        spool_items(work, items)
        _, elapsed = await run_once_timed(work)
        stats = sim.stats()
    assert stats["rate_limited"] > 0, "the test needs 429s"
    assert len(work.lines("q")) == items and not work.lines("q", "dead")
    assert elapsed < 60  # a day's wait was not kept; the per-test timeout would end it anyway
