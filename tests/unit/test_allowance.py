"""synthd.allowance: units held at once, waiting while over the limit."""

from __future__ import annotations

import asyncio

from synthd.allowance import Allowance


async def test_an_item_waits_until_the_bytes_before_it_are_committed() -> None:
    budget = Allowance(10)
    await budget.acquire(6)
    second = asyncio.create_task(budget.acquire(6))
    await asyncio.sleep(0)
    assert not second.done() and budget.used == 6
    budget.release(6)
    await asyncio.wait_for(second, 1)
    assert budget.used == 6


async def test_an_item_larger_than_the_budget_goes_alone() -> None:
    budget = Allowance(10)
    await asyncio.wait_for(budget.acquire(25), 1)  # nothing held: let through
    small = asyncio.create_task(budget.acquire(1))
    await asyncio.sleep(0)
    assert not small.done()
    budget.release(25)
    await asyncio.wait_for(small, 1)
    assert budget.used == 1
