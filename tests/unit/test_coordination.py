"""Leases against a real redis-server: one holder per node, dead nodes found and taken over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from synthd.config_coordination import CoordinationConfig
from synthd.coordination import NODES_KEY, Coordinator, LeaseLost, lease_key
from synthd.redisclient import connect
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
            # While b holds the dead node's lease, the node counts as live: a counts 3 until
            # its first count after the release.
            if taken and a.nodes == 2 and await a.redis.zscore(NODES_KEY, "dead") is None:
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


async def test_a_takeover_whose_lease_is_taken_stops_and_is_not_released(
    redis_server: RedisServer,
) -> None:
    """A taker whose renewals came too late (a stalled loop) finds the dead node's lease
    held by another taker: its takeover is cancelled, so two never finish one node."""
    dead, a = coordinator(redis_server, "dead"), coordinator(redis_server, "a")
    await dead.start()  # and never renews: it died
    await a.start()
    started, ended = asyncio.Event(), asyncio.Event()
    outcome: list[str] = []

    async def finish(node: str) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
            outcome.append("done")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            ended.set()

    loop = asyncio.create_task(a.run(finish))
    try:
        await asyncio.wait_for(started.wait(), 10)
        await a.redis.set(lease_key("dead"), "another taker", px=10_000)
        await asyncio.wait_for(ended.wait(), 5)
        assert not loop.done()  # a's own lease is fine: it goes on
    finally:
        loop.cancel()
        stopped, _ = await asyncio.wait({loop}, timeout=5)
    assert stopped, "the loop went on after its cancel"
    assert outcome == ["cancelled"]
    assert await a.redis.get(lease_key("dead")) == b"another taker"  # not released by a
    await a.close(work_left=False)
    await dead.redis.aclose()


async def ends_when_cancelled_at_every_step(
    start: Callable[[], Coroutine[Any, Any, object]], steps: int = 40
) -> None:
    """Cancel a fresh ``start()`` after 0, 1, 2... turns of the event loop: each must end,
    cancelled, whatever it was awaiting then (a Redis command being sent, a thread, a sleep)."""
    for step in range(steps):
        task = asyncio.create_task(start())
        for _ in range(step):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=5)
        assert done, f"it went on for 5 s after a cancel {step} turns in"
        assert task.cancelled(), f"it ended without the cancel {step} turns in: {task!r}"


async def test_a_cancel_ends_the_loop_whatever_it_awaits(redis_server: RedisServer) -> None:
    """A daemon that stops cancels its coordination loop, and a node waiting for its lease
    may be stopped too: the cancel ends either at once, even one that comes while a Redis
    command is on its way (redis-py sends it under ``wait_for``)."""
    a, holder = coordinator(redis_server, "a", 10), coordinator(redis_server, "b", 10)
    await a.start()
    await holder.start()
    waiting = coordinator(redis_server, "b", 10)  # b's lease is held: it waits for it

    async def nothing(node: str) -> None:
        del node

    try:
        await ends_when_cancelled_at_every_step(lambda: a.run(nothing))
        await ends_when_cancelled_at_every_step(waiting.start)
    finally:
        await a.close(work_left=False)
        await holder.close(work_left=False)
        await waiting.redis.aclose()


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


async def test_a_redis_stall_longer_than_the_ttl_takes_no_live_node_for_dead(
    redis_server: RedisServer,
) -> None:
    """Redis stalls for 2.5 TTLs (``CLIENT PAUSE``): when it answers again every lease looks
    run out, but nobody takes a live node over, and nobody loses its own lease."""
    a, b = coordinator(redis_server, "a"), coordinator(redis_server, "b")
    await a.start()
    await b.start()
    taken: list[str] = []

    async def take(node: str) -> None:
        taken.append(node)

    tasks = [asyncio.create_task(a.run(take)), asyncio.create_task(b.run(take))]
    pauser = connect(redis_server.url)
    try:
        await asyncio.sleep(0.5)
        await pauser.execute_command("CLIENT", "PAUSE", "2500", "ALL")
        await asyncio.sleep(5)
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pauser.aclose()
    assert taken == []
    await a.close(work_left=False)
    await b.close(work_left=False)


async def test_a_node_cut_off_from_redis_but_alive_on_disk_is_not_taken_over(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its lease ran out (it cannot reach Redis), but it still touches its heartbeat on the
    shared filesystem, so it may still be writing: nobody takes its files. Once the
    heartbeat is old too, it is taken over."""
    cfg = CoordinationConfig(redis_url=redis_server.url, node="cut", lease_ttl_s=1)
    cut = Coordinator(cfg, tmp_path)
    await cut.start()
    cut._beat()
    a = Coordinator(
        CoordinationConfig(redis_url=redis_server.url, node="a", lease_ttl_s=1), tmp_path
    )
    await a.start()
    taken: list[str] = []

    async def take(node: str) -> None:
        taken.append(node)

    async def keep_beating() -> None:
        while True:
            cut._beat()
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(keep_beating())
    task = asyncio.create_task(a.run(take))
    try:
        await asyncio.sleep(3.5)  # the lease ran out 2.5 s ago: dead, by Redis alone
        assert taken == []
        beating.cancel()
        for _ in range(100):
            if taken:
                break
            await asyncio.sleep(0.05)
    finally:
        beating.cancel()
        task.cancel()
        await asyncio.gather(task, beating, return_exceptions=True)
    assert taken == ["cut"]
    await a.close(work_left=False)
    await cut.redis.aclose()
