"""synthd.looplag: a loop held by a blocking call is seen as late; the exit is not sampled.

On a real event loop: a blocking sleep holds it for a known time, which is a lower bound on
the lag seen (a busy machine only adds to it).
"""

from __future__ import annotations

import asyncio
import time

from synthd.looplag import BUCKETS_S, LagCollector, LoopLag


async def _sampled(lag: LoopLag, hold_s: float) -> None:
    task = asyncio.create_task(lag.run())
    try:
        await asyncio.sleep(3 * lag.every_s)  # a few samples first
        time.sleep(hold_s)  # noqa: ASYNC251 - the point: the loop is held
        await asyncio.sleep(3 * lag.every_s)
    finally:
        task.cancel()


def test_a_held_loop_is_seen_late_in_the_quantiles_the_max_and_the_histogram() -> None:
    lag = LoopLag(every_s=0.005)
    asyncio.run(_sampled(lag, 0.06))
    assert lag.max_s >= 0.05
    assert lag.quantile(1.0) == lag.max_s
    assert sum(lag.counts) >= 3
    assert sum(lag.counts[BUCKETS_S.index(0.05) :]) >= 1  # in a bucket at 50 ms or above
    (family,) = LagCollector(lag).collect()
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert buckets["+Inf"] == sum(lag.counts)
    assert buckets["0.02"] <= buckets["0.05"] <= buckets["+Inf"]  # cumulative


def test_after_stop_at_exit_a_held_loop_is_not_sampled() -> None:
    lag = LoopLag(every_s=0.005)

    async def main() -> int:
        task = asyncio.create_task(lag.run())
        await asyncio.sleep(0.05)
        before = sum(lag.counts)
        lag.stop_at_exit()
        time.sleep(0.06)  # noqa: ASYNC251 - the exit's long iteration
        await asyncio.sleep(0.05)
        task.cancel()
        assert before >= 1
        return before

    before = asyncio.run(main())
    assert sum(lag.counts) == before  # the 60 ms hold, and what followed, left no sample


def test_no_samples_give_zero() -> None:
    lag = LoopLag()
    assert lag.quantile(0.99) == 0.0
    assert lag.max_s == 0.0
