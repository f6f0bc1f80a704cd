"""The shared budget against a real redis-server: what is granted, paused, adopted, kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from synthd.budget import Budget
from synthd.config import ProviderConfig
from synthd.config_coordination import CoordinationConfig
from synthd.redisclient import connect
from synthd.sharedbudget import SharedBudget, provider_keys
from tests.redisserver import RedisServer


class Health:
    def __init__(self, nodes: int = 1) -> None:
        self.nodes = nodes
        self.ups = 0
        self.downs: list[str] = []

    def redis_up(self) -> None:
        self.ups += 1

    def redis_down(self, error: str) -> None:
        self.downs.append(error)


_clients: list[Redis] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _clients:
        await _clients.pop().aclose()


def client(server: RedisServer) -> Redis:
    r = connect(server.url)
    _clients.append(r)
    return r


def gate(
    server: RedisServer,
    *,
    rpm: int = 6000,
    tpm: int = 10_000_000,
    node: str = "a",
    nodes: int = 1,
    down: str = "pause",
    events: list[Any] | None = None,
) -> SharedBudget:
    cfg = ProviderConfig(rpm=rpm, tpm=tpm)
    coord = CoordinationConfig(redis_url=server.url, node=node, on_redis_down=down)  # type: ignore[arg-type]
    seen = events if events is not None else []
    return SharedBudget(
        "p",
        cfg,
        coord,
        client(server),
        Health(nodes),
        lambda s: seen.append(("pause", s)),
        lambda r, t: seen.append(("limits", r, t)),
    )


def test_keys_share_one_cluster_slot() -> None:
    tags = {k.split("}")[0] + "}" for k in provider_keys("openai")}
    assert tags == {"{synthd:openai}"}


async def test_three_gates_together_never_exceed_the_rate(redis_server: RedisServer) -> None:
    """Three nodes asking as fast as they can get, together, what the limit allows over
    the time they asked: the bucket starts empty."""
    gates = [gate(redis_server, rpm=6000, node=n, nodes=3) for n in "abc"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    taken = [0, 0, 0]

    async def spend(i: int) -> None:
        while loop.time() - start < 1.0:
            await gates[i].take(10)
            taken[i] += 1

    await asyncio.gather(*(spend(i) for i in range(3)))
    elapsed = loop.time() - start
    total = sum(g.granted_requests for g in gates)
    # 100 requests/s, from an empty bucket: never more than the rate since the first ask.
    assert sum(taken) <= total <= 100 * elapsed + 3
    assert all(t > 0 for t in taken)  # nobody starved
    # Blocks, not a round trip per request, even with the bucket the bottleneck.
    assert sum(g.round_trips for g in gates) <= 2 * sum(taken) + 10


async def test_tokens_and_requests_are_taken_together(redis_server: RedisServer) -> None:
    """A token limit binds before the request limit: 600 tokens/s, 100 tokens a request."""
    g = gate(redis_server, rpm=60_000, tpm=36_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() - start < 1.0:
        await g.take(100)
        n += 1
    elapsed = loop.time() - start
    assert n <= (600 * elapsed + 150) / 100 + 1


async def test_a_429_on_one_node_pauses_the_others(redis_server: RedisServer) -> None:
    seen: list[Any] = []
    a = gate(redis_server, node="a")
    b = gate(redis_server, node="b", events=seen)
    await b.take(1)
    a.rate_limited(0.5)
    await asyncio.sleep(0.05)  # the pause key is written by a task
    b.stock_r = 0  # its next request asks Redis
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.take(1)
    assert seen and seen[0][0] == "pause" and 0.3 < seen[0][1] <= 0.5
    assert loop.time() - t0 >= 0.3  # nothing was granted while the pause held
    assert len([e for e in seen if e[0] == "pause"]) == 1  # seen once, though asked often


async def test_a_limit_adopted_by_one_node_reaches_the_others(redis_server: RedisServer) -> None:
    seen: list[Any] = []
    a = gate(redis_server, node="a", rpm=6000)
    b = gate(redis_server, node="b", rpm=6000, events=seen)
    a.adopt("rpm", 1200)
    await asyncio.sleep(0.05)
    await b.take(1)
    assert ("limits", 1200.0, 10_000_000.0) in seen


async def test_usage_settles_locally_and_unused_stock_goes_back(
    redis_server: RedisServer,
) -> None:
    g = gate(redis_server, rpm=6000)
    await g.take(100)
    g.settle(100, 40)  # the provider counted less: 60 tokens of credit
    before = g.stock_t
    assert before >= 60
    await g.close()
    assert g.stock_r == 0 and g.stock_t == 0
    level = await client(redis_server).hget(provider_keys("p")[0], "t")
    assert level is not None and float(level) > 0


async def test_budget_consults_its_gate_and_tells_it_of_429s(redis_server: RedisServer) -> None:
    cfg = ProviderConfig(rpm=6000, tpm=10_000_000)
    budget = Budget("p", cfg)
    g = gate(redis_server, node="a")
    budget.gate = g
    await budget.acquire(10)
    assert g.granted_requests >= 1
    budget.rate_limited_for(0.2, sent_at=None)
    await asyncio.sleep(0.05)
    assert await client(redis_server).get(provider_keys("p")[1]) == b"a:1"


async def test_pause_mode_sends_nothing_while_redis_is_down(redis_server: RedisServer) -> None:
    g = gate(redis_server, down="pause")
    await g.take(1)
    redis_server.stop()
    g.stock_r = 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(g.take(1), 1.5)
    assert g.health.downs  # type: ignore[attr-defined]


async def test_split_mode_runs_at_limit_over_nodes_from_empty(redis_server: RedisServer) -> None:
    g = gate(redis_server, rpm=6000, nodes=2, down="split")
    redis_server.stop()
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = 0
    while loop.time() - start < 1.0:
        await g.take(1)
        n += 1
    elapsed = loop.time() - start
    assert n <= 50 * elapsed + 2  # half of 100/s, and no burst at the start
    assert n >= 10
    redis_server.start()
    g.stock_r = 0
    g._retry_at = 0.0
    await g.take(1)
    assert g.health.ups  # type: ignore[attr-defined]


async def test_a_restarted_redis_grants_no_burst(redis_server: RedisServer) -> None:
    """The bucket a restarted Redis lost starts again empty: only the rate since then."""
    g = gate(redis_server, rpm=6000, down="pause")
    for _ in range(20):
        await g.take(1)
    redis_server.restart()
    g.stock_r = 0
    loop = asyncio.get_running_loop()
    await g.take(1)  # the first answer after the restart
    start, granted = loop.time(), g.granted_requests
    while loop.time() - start < 0.5:
        await g.take(1)
    assert g.granted_requests - granted <= 100 * (loop.time() - start) + 12  # + one block
