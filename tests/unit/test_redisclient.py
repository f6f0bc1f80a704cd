"""The asyncio Redis client against a real redis-server: a cancel ends a command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from synthd.redisclient import connect
from tests.redisserver import RedisServer


async def get(r: Redis) -> object:
    return await r.get("k")


async def new_script(r: Redis) -> object:
    """A script Redis does not know: its first call is answered NOSCRIPT, then loaded."""
    await r.script_flush()
    return await r.register_script("return 'v'")(keys=[], args=[])


@pytest.mark.parametrize("command", [get, new_script])
async def test_a_cancel_at_any_step_of_a_command_ends_it(
    redis_server: RedisServer, command: Callable[[Redis], Awaitable[object]]
) -> None:
    """Python 3.11's ``wait_for``, which redis-py sends each command under, returns the
    result and drops a cancel that comes in the turn the send completes (gh-86296): a loop
    of Redis commands then never stops. Cancelled at any turn, a command must end
    cancelled, or (cancelled too late) with its reply."""
    r = connect(redis_server.url)
    await r.set("k", "v")
    try:
        for step in range(30):
            for _ in range(5):
                task = asyncio.create_task(command(r))
                for _ in range(step):
                    await asyncio.sleep(0)
                if not task.cancel():
                    assert task.result() == b"v"  # it had ended already
                    continue
                await asyncio.wait({task}, timeout=5)
                assert task.cancelled(), f"a cancel {step} turns in was lost: {task!r}"
    finally:
        await r.aclose()
