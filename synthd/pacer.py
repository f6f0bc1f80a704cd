"""Pacing: a burst of CPU work is spread over loop iterations, so timers and I/O keep
their turn.

At full speed the loop never waits: replies to hundreds of requests arrive within
one poll, and every sender's next step (parse and filter the reply, build the
record, hand it on, send the next request: most of a request's CPU) would run in
one iteration while every timer, the lag probe's included, waits behind it.
``Pacer.turn`` lets a task through while the current slice of work is shorter than
``slice_s``, and otherwise puts it in line for a later iteration, after the loop's
timers and I/O. The work done is the same; only its order changes. Two places take a
turn: the client once a reply's body is read, and a sender before it sends (the
feeder can wake many senders at once). One pacer serves the whole loop.

Tasks in line sleep on a future each, and are woken in arrival order, a batch per
iteration: about as many as went through the last slice. Waking every waiting task
on every iteration to look at the clock (hundreds of them at full speed) would
itself be work that holds the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

SLICE_S = 0.002  # a timer waits a few times this behind a burst (goal: p99 lag < 20 ms)
_MAX_BATCH = 1024


class Pacer:
    def __init__(
        self, slice_s: float = SLICE_S, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.slice_s = slice_s
        self._clock = clock
        self._started = clock()  # when the current slice of work began
        self._last = float("-inf")  # when a task last went through
        self._line: deque[asyncio.Future[None]] = deque()  # the tasks waiting, in order
        self._late_line: list[asyncio.Future[None]] = []  # woken too late: next at the head
        self._opening = False  # a new slice is due on the next iteration
        self._fresh = False  # a new slice has opened and no task has gone through it yet
        self._batch = 8  # how many tasks the next slice wakes
        self._woken = 0  # how many the current slice woke
        self._passed = 0  # how many went through the current slice
        self._late = 0  # woken, but found the slice used up: back in line
        self.yields = 0  # turns sent to a later iteration

    async def turn(self) -> None:
        """Return at once while this iteration's slice lasts, else on a later one."""
        now = self._clock()
        if now - self._last > self.slice_s:
            self._started = now  # the loop was not busy with paced work: a fresh slice
        if self._line or now - self._started >= self.slice_s:
            await self._wait(late=False)
        self._passed += 1
        self._last = self._clock()

    async def _wait(self, late: bool) -> None:
        """Wait in line (at its head for a task woken too late) until a slice lets it go."""
        loop = asyncio.get_running_loop()
        while True:
            self.yields += 1
            waiter: asyncio.Future[None] = loop.create_future()
            (self._late_line if late else self._line).append(waiter)
            if not self._opening:
                self._opening = True
                loop.call_soon(self._open)
            await waiter
            if self._fresh:
                # The first task after a new slice always goes, and the slice counts
                # from it: on a preempted process the clock may have run past the
                # slice already, and every iteration must still make progress.
                self._fresh = False
                self._started = self._clock()
                return
            if self._clock() - self._started < self.slice_s:
                return
            self._late += 1
            late = True

    def _open(self) -> None:
        """A new iteration: wake the next batch, sized on how the last slice went."""
        self._opening = False
        if self._woken:
            if self._late:
                self._batch = max(1, self._passed)
            elif self._passed >= self._woken:
                self._batch = min(_MAX_BATCH, 2 * self._batch)  # room was left: try more
        self._woken = self._passed = self._late = 0
        self._line.extendleft(reversed(self._late_line))
        self._late_line.clear()
        while self._line and self._woken < self._batch:
            waiter = self._line.popleft()
            if not waiter.done():  # a cancelled task's waiter stays behind
                waiter.set_result(None)
                self._woken += 1
        self._fresh = self._woken > 0
        if self._line:
            self._opening = True
            asyncio.get_running_loop().call_soon(self._open)
