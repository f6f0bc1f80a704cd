"""An allowance: units held at once (bytes admitted, tokens enqueued), with waiting.

``acquire`` waits while taking ``n`` more would go over the limit; ``release`` gives
units back and wakes the waiters. A request larger than the whole limit goes through
when nothing else is held, so no one waits forever.
"""

from __future__ import annotations

import asyncio


class Allowance:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()
