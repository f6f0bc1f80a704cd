"""Leases against a real redis-server: one holder per node, dead nodes found and taken over."""

from __future__ import annotations

import asyncio

import pytest

from synthd.config import CoordinationConfig
from synthd.coordination import NODES_KEY, Coordinator, LeaseLost, lease_key
from tests.redisserver import RedisServer


def coordinator(server: RedisServer, node: str, ttl_s: float = 1) -> Coordinator:
    return Coordinator(CoordinationConfig(redis_url=server.url, node=node, lease_ttl_s=ttl_s))


async def test_a_node_waits_while_another_process_holds_its_lease(
    redis_server: RedisServer,
) -> None:
    first, second = coordinator(redis_server, "a", 10), coordinator(redis_server, "a", 10)
    try:
        await first.start()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second.start(), 1.5)
        await first.close(work_left=False)
        await asyncio.wait_for(second.start(), 5)  # let go: the second takes it at once
    finally:
        await second.close(work_left=False)


async def test_a_dead_node_is_taken_over_once_then_leaves(redis_server: RedisServer) -> None:
    dead, a, b = (coordinator(redis_server, n) for n in ("dead", "a", "b"))
    await dead.start()  # and never renews: it died
    await a.start()
    await b.start()
    taken: list[tuple[str, str]] = []

    def on_takeover(who: str) -> object:
        async def run(node: str) -> None:
            taken.append((who, node))
            await asyncio.sleep(0.3)

        return run

    tasks = [
        asyncio.create_task(a.run(on_takeover("a"))),  # type: ignore[arg-type]
        asyncio.create_task(b.run(on_takeover("b"))),  # type: ignore[arg-type]
    ]
    try:
        for _ in range(100):
            if taken and await a.redis.zscore(NODES_KEY, "dead") is None:
                break
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert [node for _, node in taken] == ["dead"]  # one survivor took it, once
    assert await a.redis.get(lease_key("dead")) is None
    assert a.nodes == 2
    await a.close(work_left=False)
    await b.close(work_left=False)
    await dead.redis.aclose()


async def test_a_node_stopping_with_work_left_is_marked_for_takeover(
    redis_server: RedisServer,
) -> None:
    a, other = coordinator(redis_server, "a"), coordinator(redis_server, "b")
    await a.start()
    await a.close(work_left=True)
    dead = await other._dead_nodes()
    assert dead == ["a"]
    await other.redis.aclose()


async def test_a_lease_taken_by_another_process_stops_the_node(
    redis_server: RedisServer,
) -> None:
    a = coordinator(redis_server, "a")
    await a.start()
    await a.redis.set(lease_key("a"), "someone else", px=10_000)

    async def nothing(node: str) -> None:
        del node

    with pytest.raises(LeaseLost):
        await asyncio.wait_for(a.run(nothing), 5)
    await a.redis.aclose()


async def test_live_nodes_are_counted_without_takeover_too(redis_server: RedisServer) -> None:
    """``split`` divides the limit by the nodes counted: counted whatever ``takeover`` is."""
    a = Coordinator(CoordinationConfig(redis_url=redis_server.url, node="a", takeover=False))
    b = coordinator(redis_server, "b", 10)
    await a.start()
    await b.start()

    async def nothing(node: str) -> None:
        del node

    task = asyncio.create_task(a.run(nothing))
    try:
        for _ in range(100):
            if a.nodes == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert a.nodes == 2
    await a.close(work_left=False)
    await b.close(work_left=False)
