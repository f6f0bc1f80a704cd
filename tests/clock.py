"""An event loop on a virtual clock, for tests of code that paces itself by ``loop.time()``.

The loop's time moves only when nothing is ready to run: it jumps to the next timer. A test
then measures the schedule the code asked for, to the timer, not how fast a busy machine ran
it (a loaded machine makes a real loop late, which an upper bound reads as a bug); and a 0.3 s
pause takes no real time. Only for code that waits on timers and futures: a wait on a socket
or a thread would see its time jumped over.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")
_TICK_S = 1e-6


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; where the loop would sleep, moves the clock instead."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if timeout is None and not ready:
            raise RuntimeError("virtual clock: nothing is scheduled, the test would hang")
        # Each turn of the loop takes a microsecond, as on a fast machine: code that sets a
        # timer for "now" after a rounding error (aiolimiter does) then sees time pass.
        self.now += _TICK_S if ready or not timeout else max(timeout, _TICK_S)
        return ready


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._clock = _JumpingSelector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


def on_virtual_clock(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on its own ``VirtualClockLoop`` (pytest sees a plain test)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        loop = VirtualClockLoop()
        try:
            loop.run_until_complete(test(*args, **kwargs))
        finally:
            loop.close()

    return run
