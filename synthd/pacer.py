"""Pacing: a burst of CPU work is spread over loop iterations, so timers and I/O keep
their turn.

At full speed the loop never waits: replies to hundreds of requests arrive within
one poll, and every sender's next step (parse the reply, build the record, filter,
send the next request: most of a request's CPU) would run in one iteration while
every timer, the lag probe's included, waits behind it. ``Pacer.turn`` lets a
task through while the current slice of work is shorter than ``slice_s``, and
otherwise sends it to the next iteration, after the loop's timers and I/O. The
work done is the same; only its order changes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SLICE_S = 0.01  # a timer waits about this long behind a burst (the goal: p99 lag < 20 ms)


class Pacer:
    def __init__(
        self, slice_s: float = SLICE_S, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.slice_s = slice_s
        self._clock = clock
        self._started = clock()  # when the current slice of work began
        self._last = float("-inf")  # when a task last went through
        self._reset_pending = False
        self.yields = 0  # turns sent to a later iteration

    async def turn(self) -> None:
        """Return at once while this iteration's slice lasts, else on a later one."""
        now = self._clock()
        if now - self._last > self.slice_s:
            self._started = now  # the loop was not busy with paced work: a fresh slice
        while self._clock() - self._started >= self.slice_s:
            self.yields += 1
            if not self._reset_pending:
                # Queued before the yielding tasks: the next iteration's slice starts
                # when it runs, after the timers and I/O that come first.
                self._reset_pending = True
                asyncio.get_running_loop().call_soon(self._new_slice)
            await asyncio.sleep(0)
        self._last = self._clock()

    def _new_slice(self) -> None:
        self._reset_pending = False
        self._started = self._clock()
