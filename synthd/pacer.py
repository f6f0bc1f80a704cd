"""Pacing: a burst of CPU work is spread over loop iterations, so timers and I/O keep
their turn.

At full speed the loop never waits: replies to hundreds of requests arrive within
one poll, and every sender's next step (parse and filter the reply, build the
record, hand it on, send the next request: most of a request's CPU) would run in
one iteration while every timer, the lag probe's included, waits behind it.
``Pacer.turn`` lets a task through while the current slice of work is shorter than
``slice_s``, and otherwise sends it to the next iteration, after the loop's timers
and I/O. The work done is the same; only its order changes. Two places take a
turn: the client once a reply's body is read, and a sender before it sends (the
feeder can wake many senders at once). One pacer serves the whole loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SLICE_S = 0.002  # a timer waits a few times this behind a burst (goal: p99 lag < 20 ms)


class Pacer:
    def __init__(
        self, slice_s: float = SLICE_S, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.slice_s = slice_s
        self._clock = clock
        self._started = clock()  # when the current slice of work began
        self._last = float("-inf")  # when a task last went through
        self._reset_pending = False
        self._fresh = False  # a new slice has opened and no task has gone through it yet
        self.yields = 0  # turns sent to a later iteration

    async def turn(self) -> None:
        """Return at once while this iteration's slice lasts, else on a later one."""
        now = self._clock()
        if now - self._last > self.slice_s:
            self._started = now  # the loop was not busy with paced work: a fresh slice
        while self._clock() - self._started >= self.slice_s:
            self.yields += 1
            if not self._reset_pending:
                # Queued before the yielding tasks: it opens the next iteration's slice,
                # after the timers and I/O that come first.
                self._reset_pending = True
                self._fresh = False
                asyncio.get_running_loop().call_soon(self._new_slice)
            await asyncio.sleep(0)
            if self._fresh:
                # The first task after a new slice always goes, and the slice counts
                # from it: on a preempted process the clock may have run past the
                # slice already, and every iteration must still make progress.
                self._fresh = False
                self._started = self._clock()
                break
        self._last = self._clock()

    def _new_slice(self) -> None:
        self._reset_pending = False
        self._fresh = True
