"""The asyncio Redis client of the scale-out: it fails fast, and a cancel ends its commands.

redis-py sends each command under ``asyncio.wait_for``. Before Python 3.12, ``wait_for``
returns the result and drops a cancel that comes in the turn the send completes
(gh-86296, bpo-42130): the command returns as if nothing happened, and a loop of commands
(the coordination loop, a node waiting for its lease, a budget waiting for the shared
bucket) goes on after the daemon cancelled it (redis/redis-py#2028 reports the same). The
dropped cancel still counts in the task's ``cancelling()``, so the client raises it once the
command is back. Pipelines take another path and are not covered: synthd sends none.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class CancellableRedis(Redis):
    """``Redis`` whose commands raise ``CancelledError`` when their task was cancelled
    while they ran, even where redis-py's ``wait_for`` dropped the cancel."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        task = asyncio.current_task()
        # A task may run a command after a cancel it handled (cleanup in a ``finally``):
        # only a cancel that came during this command is raised.
        before = 0 if task is None else task.cancelling()
        try:
            reply = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except Exception as e:
            # The reply may be an error, such as a script's NOSCRIPT, which its caller
            # handles with more commands: the cancel comes first.
            if task is not None and task.cancelling() > before:
                raise asyncio.CancelledError from e
            raise
        if task is not None and task.cancelling() > before:
            raise asyncio.CancelledError
        return reply


def connect(url: str) -> Redis:
    """A client that fails fast: one retry on a fresh connection (a restarted Redis leaves
    the pool's connections stale), then the error, so that the caller's choice applies."""
    return CancellableRedis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
