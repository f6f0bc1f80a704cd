"""Event-loop lag: how late the loop runs a timer, which is what every callback waits.

Anything that holds the loop (a disk read, a long render, a C call holding the
GIL) shows up here. ``LoopLag.run`` samples it every ``every_s``; the figures
go to ``/metrics`` as a histogram and to the ``stopped`` log line as p99 and
max, which the benchmarks print.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
_KEPT = 30_000  # recent samples kept for quantiles: 600 s at the default rate


class LoopLag:
    def __init__(self, every_s: float = 0.02) -> None:
        # Often enough that a benchmark of a few seconds has hundreds of samples, so its
        # p99 is not just its maximum; a sleeping task 50 times a second costs nothing.
        self.every_s = every_s
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0
        self.max_s = 0.0
        self._recent: deque[float] = deque(maxlen=_KEPT)
        self._closing = False  # the exit has begun: see ``stop_at_exit``

    def stop_at_exit(self) -> None:
        """No samples from here on: the exit closes every pooled connection at once (one
        iteration of about 90 ms for 2,048 of them, once), and no work waits on the loop
        then; counted, it would be most of a short run's p99 at 2,048 in flight."""
        self._closing = True

    async def run(self) -> None:
        """Sample until the exit begins."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.every_s)
            if not self._closing:
                self.observe(max(0.0, loop.time() - asked - self.every_s))

    def observe(self, lag_s: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, lag_s)] += 1
        self.sum_s += lag_s
        self.max_s = max(self.max_s, lag_s)
        self._recent.append(lag_s)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the recent samples, in seconds (0 with none)."""
        if not self._recent:
            return 0.0
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LagCollector(Collector):
    def __init__(self, lag: LoopLag) -> None:
        self.lag = lag

    def collect(self) -> Iterator[Metric]:
        h = HistogramMetricFamily(
            "synthd_event_loop_lag_seconds", "How late the event loop ran a timer"
        )
        buckets, running = [], 0
        for bound, n in zip((*BUCKETS_S, float("inf")), self.lag.counts, strict=True):
            running += n
            buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
        h.add_metric([], buckets, self.lag.sum_s)
        yield h
