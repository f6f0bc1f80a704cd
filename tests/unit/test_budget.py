"""synthd.budget: the pure arithmetic, and the async Budget's pacing on a real event loop.

The async tests run on a virtual clock (``tests.clock``): the loop's time jumps to the next
timer, so the figures are the schedule the budget asked for, the same on an idle machine
and on a loaded one, and a pause of 0.3 s takes no real time.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from structlog.testing import capture_logs

from synthd.budget import Budget
from synthd.config import ProviderConfig
from synthd.headers import RateHeaders
from synthd.ratemath import Calibration, cut_rate, recovery_rate, token_estimate
from tests.clock import on_virtual_clock

# -- ramp, estimates, calibration ---------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "rate"),
    [
        (-1.0, 700.0),  # still paused: the cut rate
        (0.0, 700.0),
        (2.5, 800.0),  # half way from the cut to 90% of the rate cut from
        (5.0, 900.0),
        (10.0, 950.0),  # the last 10% over 10 s
        (15.0, 1000.0),
        (25.0, 1000.0 * (1 + 0.5**3)),  # then ever faster beyond it
        (35.0, 2000.0),
        (500.0, 3000.0),  # never above the budget
    ],
)
def test_recovery_regains_90_percent_within_ramp_s_then_probes(since: float, rate: float) -> None:
    assert recovery_rate(700.0, 1000.0, 3000.0, since, 5.0, 1.0) == pytest.approx(rate)


def test_recovery_after_a_long_pause_probes_slower() -> None:
    # A 60 s pause (a fixed window): time past the ramp runs six times slower, so 30 s
    # past it are 5 s of the usual plateau.
    assert recovery_rate(700, 1000, 3000, 5 + 30, 5, 60) == pytest.approx(950.0)


def test_a_cut_is_a_share_of_what_was_sent_above_a_floor() -> None:
    assert cut_rate(1000.0, 10.0) == pytest.approx(700.0)
    assert cut_rate(2.0, 10.0) == 10.0


def test_token_estimate_reserves_max_tokens_per_sample() -> None:
    assert token_estimate(100, 50, 3) == 250
    assert token_estimate(0, 256, 1) == 256


def test_calibration_estimate() -> None:
    c = Calibration()
    assert c.chars_per_token == 4.0
    assert c.estimate(0) == 1
    assert c.estimate(4) == 1
    assert c.estimate(9) == 3
    assert Calibration(2.0).estimate(9) == 5


def test_calibration_learns_toward_the_observed_ratio() -> None:
    c = Calibration()
    previous = c.chars_per_token
    for _ in range(200):
        c.learn(chars=300, tokens=100)  # 3 chars per token
        assert 3.0 <= c.chars_per_token <= previous
        previous = c.chars_per_token
    assert c.chars_per_token == pytest.approx(3.0, abs=1e-3)
    assert c.estimate(300) == 100


def test_calibration_one_step_is_a_small_move() -> None:
    c = Calibration()
    c.learn(chars=1000, tokens=100)  # 10 chars per token
    assert c.chars_per_token == pytest.approx(4.0 + 0.05 * 6.0)


def test_calibration_ignores_empty_observations() -> None:
    c = Calibration()
    c.learn(chars=100, tokens=0)
    c.learn(chars=0, tokens=10)
    assert c.chars_per_token == 4.0


# -- the async Budget ------------------------------------------------------------------


def budget(**settings: Any) -> Budget:
    return Budget("test", ProviderConfig(**settings))


async def timed(coro: Any) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(coro, 10)
    return loop.time() - start


@on_virtual_clock
async def test_acquires_are_paced_at_the_request_rate() -> None:
    b = budget(rpm=600, burst_s=1.0)  # 10 requests per second

    async def six() -> None:
        for _ in range(6):
            await b.acquire(10)

    elapsed = await timed(six())
    # A cold start begins from a full bucket: every request waits its drip.
    theory = 6 / (600 / 60)
    assert elapsed >= 0.8 * theory
    assert elapsed < 3 * theory


@on_virtual_clock
async def test_token_rate_paces_large_requests() -> None:
    b = budget(rpm=60_000, tpm=60_000, burst_s=0.1)  # 1000 tokens per second
    elapsed = await timed(asyncio.gather(*(b.acquire(80) for _ in range(3))))
    theory = 3 * 80 / 1000
    assert elapsed >= 0.8 * theory
    assert elapsed < 3 * theory + 0.2


@on_virtual_clock
async def test_rate_limited_blocks_acquire_for_the_pause() -> None:
    b = budget(rpm=60_000, burst_s=0.1)  # the drip itself is ~1 ms: the pause dominates
    b.rate_limited_for(0.3)
    assert b.rate_limited == 1
    elapsed = await timed(b.acquire(1))
    assert 0.3 <= elapsed < 0.31  # the pause and one drip, however busy the machine


@on_virtual_clock
async def test_a_shorter_pause_does_not_cut_a_longer_one() -> None:
    b = budget(rpm=60_000, burst_s=0.1)
    b.rate_limited_for(0.3)
    b.rate_limited_for(0.05)
    assert b.rate_limited == 2
    assert await timed(b.acquire(1)) >= 0.28


@on_virtual_clock
async def test_a_negative_hint_is_no_pause_and_no_hint_is_one_second() -> None:
    b = budget(rpm=60_000, burst_s=0.1)
    b.rate_limited_for(-5)
    assert await timed(b.acquire(1)) < 0.01
    b.rate_limited_for(None)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(b.acquire(1), 0.3)


@on_virtual_clock
async def test_a_pause_also_holds_a_caller_already_waiting() -> None:
    b = budget(rpm=600, burst_s=1.0)  # 0.1 s drip
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(b.acquire(1))
    await asyncio.sleep(0.02)  # the caller now sleeps inside the request bucket
    paused_at = loop.time()
    b.rate_limited_for(0.5)
    await asyncio.wait_for(waiting, 5)
    assert loop.time() - paused_at >= 0.45


@on_virtual_clock
async def test_observe_lower_limits_are_adopted() -> None:
    b = budget(rpm=600, tpm=100_000)
    with capture_logs() as logs:
        b.observe(RateHeaders(100, 50_000, 99, 49_000, 0.6, 1.0))
    assert b.rpm == 100.0
    assert b.tpm == 50_000.0
    assert b.adopted_limits == {"rpm": 100, "tpm": 50_000}
    adopted = [e for e in logs if e["event"] == "rate_limit_adopted"]
    assert {(e["limit"], e["configured"], e["server"]) for e in adopted} == {
        ("rpm", 600, 100),
        ("tpm", 100_000, 50_000),
    }
    assert all(e["log_level"] == "warning" and e["provider"] == "test" for e in adopted)
    # The same limit again is not news.
    with capture_logs() as again:
        b.observe(RateHeaders(100, 50_000, 98, 48_000, 0.6, 1.0))
    assert again == []


@on_virtual_clock
async def test_observe_ignores_higher_limits_and_can_be_off() -> None:
    b = budget(rpm=600, tpm=100_000)
    b.observe(RateHeaders(10_000, 10_000_000, 9_999, None, None, None))
    assert (b.rpm, b.tpm, b.adopted_limits) == (600.0, 100_000.0, {})
    off = budget(rpm=600, adapt_to_headers=False)
    off.observe(RateHeaders(1, 1, 0, 0, None, None))
    assert (off.rpm, off.adopted_limits) == (600.0, {})


@on_virtual_clock
async def test_an_adopted_limit_slows_acquires() -> None:
    b = budget(rpm=6_000, burst_s=1.0)  # 100 per second...
    b.observe(RateHeaders(600, None, None, None, None, None))  # ...until the server says 10

    async def three() -> None:
        for _ in range(3):
            await b.acquire(1)

    assert await timed(three()) >= 0.8 * 3 / 10


@on_virtual_clock
async def test_remaining_zero_makes_the_next_acquire_wait_a_drip() -> None:
    b = budget(rpm=600, burst_s=1.0)
    await b.acquire(1)  # cold start: one drip
    await asyncio.sleep(0.25)  # the bucket drains: the next one would be free
    b.observe(RateHeaders(None, None, 0, None, None, None))
    assert b.rpm == 600.0
    assert await timed(b.acquire(1)) >= 0.08


@on_virtual_clock
async def test_no_tokens_remaining_makes_the_next_acquire_wait_a_drip() -> None:
    b = budget(rpm=60_000, tpm=600, burst_s=1.0)  # 10 tokens per second
    await b.acquire(1)
    await asyncio.sleep(0.25)
    b.observe(RateHeaders(None, None, 500, 0, None, None))
    assert b.tpm == 600.0
    assert await timed(b.acquire(1)) >= 0.08


@on_virtual_clock
async def test_an_acquire_larger_than_the_bucket_is_split() -> None:
    b = budget(rpm=60_000, tpm=60_000, burst_s=0.1)  # buckets of 100 tokens, 1000 per second
    assert b.token_capacity == 100.0
    elapsed = await timed(b.acquire(250))
    assert elapsed >= 0.8 * 250 / 1000


@on_virtual_clock
async def test_settle_books_debt_and_bounded_credit() -> None:
    b = budget(rpm=60_000, tpm=60_000, burst_s=0.1)  # buckets of 100 tokens, 1000 per second
    b.settle(reserved=10, actual=160)  # 150 tokens of debt, paid by the next acquire
    assert await timed(b.acquire(10)) >= 0.8 * 160 / 1000
    # A huge over-estimate earns at most one bucket of credit: 300 tokens still wait for
    # 200 of them, where unbounded credit would make the acquire free.
    b.settle(reserved=10_000, actual=0)
    assert await timed(b.acquire(300)) >= 0.8 * 0.1


@on_virtual_clock
async def test_waiters_are_served_in_arrival_order() -> None:
    # Large and small requests alternate; a bare leaky bucket would let the small ones
    # overtake, the budget must not.
    b = budget(rpm=60_000, tpm=600_000, burst_s=0.1)  # buckets of 1000 tokens
    order: list[int] = []

    async def one(i: int, tokens: int) -> None:
        await b.acquire(tokens)
        order.append(i)

    amounts = [800, 1, 800, 1, 800, 1]
    await asyncio.wait_for(asyncio.gather(*(one(i, n) for i, n in enumerate(amounts))), 10)
    assert order == list(range(len(amounts)))


def test_buckets_hold_burst_s_of_the_budget() -> None:
    b = budget(rpm=600, tpm=120_000, burst_s=2.0)
    assert b.token_capacity == pytest.approx(120_000 * 2 / 60)
    tiny = budget(rpm=1, tpm=1, burst_s=0.5)
    assert tiny.token_capacity == 1.0  # never below one unit
    assert math.isclose(budget().rpm, 3500.0)


@on_virtual_clock
async def test_a_split_reservation_survives_the_bucket_shrinking_under_it() -> None:
    """A 429 rebuilds the token bucket smaller while a large reservation is being split."""
    cfg = ProviderConfig(rpm=60_000, tpm=60_000, burst_s=1.0, ramp_s=5.0)
    budget = Budget("p", cfg)
    await budget.acquire(1000)  # a second's worth sent: the cut is to 70% of it
    waiter = asyncio.create_task(budget.acquire(3 * 1000))  # three bucketfuls
    await asyncio.sleep(0.05)
    budget.rate_limited_for(0.0)  # now capacity is ~700: a chunk of 1000 would be refused
    assert budget.token_capacity < 1000
    await asyncio.wait_for(waiter, 20)
    assert waiter.exception() is None


@on_virtual_clock
async def test_an_exhausted_quota_holds_acquires_until_its_reset() -> None:
    b = budget(rpm=60_000, burst_s=0.1)
    b.observe(RateHeaders(None, None, None, None, None, None, hold_s=0.3))
    assert 0.3 <= await timed(b.acquire(1)) < 0.31
    assert b.rate_rpm == 60_000  # a hold is not a rate cut


@on_virtual_clock
async def test_a_hold_is_capped_by_retry_after_max_s() -> None:
    b = budget(rpm=60_000, burst_s=0.1, retry_after_max_s=0.2)
    b.observe(RateHeaders(None, None, None, None, None, None, hold_s=86_400.0))
    assert 0.2 <= await timed(b.acquire(1)) < 0.21
