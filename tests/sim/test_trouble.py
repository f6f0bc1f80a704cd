"""The simulator's provider trouble: outages, a second client on the key, fixed windows with
a constant retry-after, concurrency-only limits."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from synthd.sim import SimConfig, running_sim
from synthd.sim.limits import Bucket, FixedWindow, Limiter, Outage, SharedClient
from tests.helpers import chat, post


def test_a_fixed_window_admits_its_quota_then_refuses_until_the_window_ends() -> None:
    w = FixedWindow(rpm=3, window_s=60)
    assert [w.admit("k", 1, 61.0).admitted for _ in range(4)] == [True, True, True, False]
    refused = w.admit("k", 1, 90.0)
    assert not refused.admitted and refused.wait_s == pytest.approx(30.0)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert w.admit("k", 1, 120.0).admitted  # a new window
    assert w.admit("other", 1, 90.0).admitted  # per key


def test_a_shared_client_takes_its_share_of_the_request_bucket() -> None:
    bucket = Bucket.full(600, 1.0, 0.0)  # 10 a second, a bucket of 10
    other = SharedClient(rpm=300, sent_at=0.0)  # 5 a second
    other.catch_up(bucket, 1.0)
    assert other.admitted == 5 and bucket.level == pytest.approx(5.0)
    bucket.take(5)  # we empty the bucket: the other client still gets its share, in debt
    other.catch_up(bucket, 1.5)
    assert other.admitted == 7 and bucket.level == pytest.approx(-2.0)


def test_the_limiter_leaves_us_the_limit_minus_the_shared_clients_rate() -> None:
    limiter = Limiter(rpm=600, tpm=0, window_s=1.0, shared_rpm=300)
    admitted = sum(limiter.admit("k", 1, i / 100).admitted for i in range(1000))  # 10 s
    assert limiter.shared_admitted() == pytest.approx(50, abs=1)
    assert admitted == pytest.approx(50 + 10, abs=3)  # the remainder, plus the bucket


def test_an_outage_is_a_time_span() -> None:
    o = Outage(at_s=10, duration_s=5)
    assert [o.active(t) for t in (9.9, 10, 14.9, 15)] == [False, True, True, False]


async def test_a_503_outage_answers_503_then_recovers() -> None:
    cfg = SimConfig(port=0, outage_at_s=0, outage_s=0.5)
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        down, _, _ = await post(session, sim, chat())
        async with session.get(sim.base_url + "/models") as resp:
            models_down = resp.status
        await asyncio.sleep(0.6)
        up, _, _ = await post(session, sim, chat())
        stats = sim.stats()
    assert (down, models_down, up) == (503, 503, 200)
    assert stats["outage"]["end"] - stats["outage"]["start"] == pytest.approx(0.5)


async def test_a_refusing_outage_closes_the_port_then_reopens_it() -> None:
    cfg = SimConfig(port=0, outage_at_s=0.3, outage_s=0.6, outage_kind="refuse")
    async with running_sim(cfg) as sim:
        async with aiohttp.ClientSession() as session:
            before, _, _ = await post(session, sim, chat())
        await asyncio.sleep(0.4)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectorError):
                await post(session, sim, chat())
        await asyncio.sleep(0.6)
        async with aiohttp.ClientSession() as session:
            after, _, _ = await post(session, sim, chat())
    assert (before, after) == (200, 200)


async def test_a_concurrency_limit_answers_a_bare_429() -> None:
    cfg = SimConfig(port=0, max_concurrent=2, latency_ms=300)
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, sim, chat()) for _ in range(3)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 429]
    refused = next(headers for status, headers, _ in results if status == 429)
    assert not [h for h in refused if "ratelimit" in h or "retry-after" in h]


async def test_a_fixed_window_answers_a_constant_retry_after_without_limit_headers() -> None:
    cfg = SimConfig(
        port=0, rpm=2, limit_kind="fixed", limit_window_s=60, retry_after_s=60, rate_headers=False
    )
    async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
        results = [await post(session, sim, chat()) for _ in range(3)]
    assert [status for status, _, _ in results] == [200, 200, 429]
    headers = results[2][1]
    assert headers["retry-after"] == "60"
    assert not [h for h in headers if "ratelimit" in h]


async def test_one_spurious_429_below_every_limit() -> None:
    async with running_sim(SimConfig(port=0, spurious_429_at=2)) as sim:
        async with aiohttp.ClientSession() as session:
            results = [await post(session, sim, chat()) for _ in range(4)]
        stats = sim.stats()
    assert [status for status, _, _ in results] == [200, 429, 200, 200]
    assert results[1][1]["retry-after"] == "1"
    assert stats["rate_limited"] == 1 and "spurious_429_at" in stats
