"""synthd.pacer: work past a slice waits for the next loop iteration. A hand-moved
clock stands for the work, so nothing here depends on the machine's speed."""

from __future__ import annotations

import asyncio

from synthd.pacer import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_burst_is_cut_into_slices_with_the_loops_callbacks_between() -> None:
    clock = Clock()
    pacer = Pacer(slice_s=0.01, clock=clock)
    order: list[str] = []

    async def reply(i: int) -> None:
        await pacer.turn()
        order.append(f"r{i}")
        clock.now += 0.004  # each reply's processing costs 4 ms

    tasks = [asyncio.create_task(reply(i)) for i in range(7)]
    await asyncio.sleep(0)  # every task has started and met its turn
    order.append("timer")  # what a timer due now would see: the first slice only
    await asyncio.gather(*tasks)
    # 4 ms each: three fit in a 10 ms slice (0, 4, 8 ms in), the rest wait.
    assert order[:4] == ["r0", "r1", "r2", "timer"]
    assert sorted(order[4:]) == [f"r{i}" for i in range(3, 7)]
    assert pacer.yields >= 4


async def test_work_after_idle_starts_a_fresh_slice_without_yielding() -> None:
    clock = Clock()
    pacer = Pacer(slice_s=0.01, clock=clock)
    for _ in range(5):
        clock.now += 1.0  # the loop was idle between replies
        await pacer.turn()
    assert pacer.yields == 0


async def test_a_preempted_process_still_makes_progress_every_iteration() -> None:
    class Preempted(Clock):
        def __call__(self) -> float:
            self.now += 0.011  # off the CPU between any two looks at the clock
            return self.now

    pacer = Pacer(slice_s=0.01, clock=Preempted())
    done: list[int] = []

    async def reply(i: int) -> None:
        await pacer.turn()
        done.append(i)

    await asyncio.wait_for(asyncio.gather(*(reply(i) for i in range(6))), timeout=5)
    assert sorted(done) == list(range(6))


async def test_tasks_in_line_sleep_until_their_batch_and_go_in_arrival_order() -> None:
    clock = Clock()
    pacer = Pacer(slice_s=0.01, clock=clock)
    order: list[int] = []
    resumed = 0

    async def reply(i: int) -> None:
        nonlocal resumed
        await pacer.turn()
        resumed += 1
        order.append(i)
        clock.now += 0.004  # three fit in a slice

    n = 300
    await asyncio.gather(*(reply(i) for i in range(n)))
    assert order == list(range(n))
    # A task in line is woken for its batch, not on every iteration to look at the
    # clock: the waits are about one per task (a few more for batches sized too large),
    # where waking the whole line each iteration would be n * n / 6 = 15,000.
    assert n - 3 <= pacer.yields < 2 * n


async def test_a_task_cancelled_in_line_does_not_hold_up_the_others() -> None:
    clock = Clock()
    pacer = Pacer(slice_s=0.01, clock=clock)
    done: list[int] = []

    async def reply(i: int) -> None:
        await pacer.turn()
        done.append(i)
        clock.now += 0.004

    tasks = [asyncio.create_task(reply(i)) for i in range(20)]
    await asyncio.sleep(0)  # three went through; the rest wait in line
    for i in (3, 4, 10, 19):
        tasks[i].cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)
    assert done == [i for i in range(20) if i not in (3, 4, 10, 19)]
