"""The daemon's rate budget against the simulator over real sockets.

The budget must be used whole and never overrun: no opening burst, no second above the budget,
the server's own lower limit adopted from its headers, a 429 answered by a pause, and token
accounting corrected from ``usage``. Bounds carry margins: the simulator and the daemon share one
event loop on a possibly busy machine, so no assertion rests on an exact timing.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pytest
from structlog.testing import capture_logs

from synthd.sim import RunningSim, SimConfig, running_sim
from synthd.sim.limits import Admission, Limiter
from tests.helpers import (
    Workdir,
    budget_of,
    jsonl_job,
    run_once_timed,
    spool_items,
    write_provider_config,
)


def assert_within(
    per_second: list[list[int]], budget_per_s: float, cost: float = 1.0, credit: float = 0.0
) -> None:
    """Admissions per wall-clock second (times ``cost``) stay within a per-second budget.

    From the first admitted request on, the total up to the end of each second is at most the
    budget times the seconds elapsed: the daemon starts from a full bucket, so there is no
    opening burst. Slack: a few requests for the bucket's fill moment, which may fall just
    before the first second, plus any ``credit`` the daemon may spend on top. Any single
    second holds at most two seconds' worth (one bucket, ``burst_s = 1``, plus one second of
    drip), for seconds that follow a stall.
    """
    assert per_second, "the simulator admitted nothing"
    first = per_second[0][0]
    slack = 0.1 * budget_per_s + 3 * cost + credit
    total = 0.0
    for second, count in per_second:
        total += count * cost
        elapsed = second - first + 1
        assert total <= budget_per_s * elapsed + slack, (second - first, total, per_second)
        assert count * cost <= 2 * budget_per_s + 3 * cost + credit, (second - first, per_second)


def steady_seconds(per_second: list[list[int]]) -> list[int]:
    """The counts of the whole seconds between the first and the last."""
    return [count for _, count in per_second[1:-1]]


async def test_request_budget_is_used_whole_and_never_exceeded(work: Workdir) -> None:
    rpm, items = 2400, 140  # 40 requests a second, a bucket of 40: about 3.5 s
    async with running_sim(SimConfig(port=0)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), rpm=rpm)
        spool_items(work, items)
        _, elapsed = await run_once_timed(work)
        stats = sim.stats()
    per_s = rpm / 60
    assert stats["by_status"] == {"200": items}
    assert_within(stats["per_second"], per_s)
    # No burst means the run cannot be faster than the budget allows ...
    assert elapsed >= 0.9 * (items - 1) / per_s
    # ... and the whole budget is used: full seconds run at (about) the budget.
    assert statistics.median(steady_seconds(stats["per_second"])) >= 0.75 * per_s
    assert elapsed <= 3 * items / per_s + 5
    assert len(work.lines("q")) == items


async def test_token_budget_binds_and_is_never_exceeded(work: Workdir) -> None:
    # max_tokens 1000: each request reserves about 1200 tokens, so 2.16 M tpm (36 000 a
    # second) allows about 30 requests a second while the request budget is out of reach.
    tpm, items = 2_160_000, 90
    async with running_sim(SimConfig(port=0)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(max_tokens=1000), tpm=tpm)
        spool_items(work, items)
        daemon, elapsed = await run_once_timed(work)
        stats = sim.stats()
    assert stats["by_status"] == {"200": items}
    assert stats["prompt_tokens"] % items == 0  # every request costs the same ...
    charge = stats["accepted_tokens"] / items  # ... the simulator's charge: prompt + max_tokens
    tokens_per_s = tpm / 60
    assert_within(stats["per_second"], tokens_per_s, cost=charge)
    assert elapsed >= 0.9 * (items - 1) * charge / tokens_per_s
    assert statistics.median(steady_seconds(stats["per_second"])) * charge >= 0.75 * tokens_per_s
    assert len(work.lines("q")) == items
    # Reserved accounting books what the simulator charges: what is left is less than one
    # request's estimate (the per-message overhead the calibration has not yet learnt).
    # The debt has no public accessor; the test reads it to see the correction happen.
    assert abs(budget_of(daemon)._debt) < charge


async def test_lower_server_limit_is_adopted_from_headers(work: Workdir) -> None:
    # The server grants 2400 rpm (40 a second); the daemon is configured for ten times that.
    items = 150
    async with running_sim(SimConfig(port=0, rpm=2400)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(), rpm=24_000)
        spool_items(work, items)
        with capture_logs() as logs:
            daemon, _ = await run_once_timed(work)
        stats = sim.stats()
    assert len(work.lines("q")) == items
    assert stats["by_status"]["200"] == items
    # Only what was in flight before the first reply could meet the server's limit.
    share_429 = stats["by_status"].get("429", 0) / stats["requests"]
    assert share_429 < 0.05, stats["by_status"]
    # After the first second, the adopted budget; counted from mid-run, the daemon's bucket
    # may hold up to one burst (40) it did not spend during a stall.
    assert_within(stats["per_second"][1:], 40, credit=40)
    adopted = [e for e in logs if e["event"] == "rate_limit_adopted"]
    assert [(e["limit"], e["configured"], e["server"]) for e in adopted] == [("rpm", 24_000, 2400)]
    budget = budget_of(daemon)
    assert budget.rpm == 2400
    assert budget.adopted_limits == {"rpm": 2400}


@pytest.mark.parametrize(
    "server_rpm",
    [
        pytest.param(1_000_000, id="request-and-token-headers"),
        pytest.param(0, id="token-headers-only"),
    ],
)
async def test_lower_server_token_limit_is_adopted_from_headers(
    work: Workdir, server_rpm: int
) -> None:
    # The server grants 2.16 M tpm (about 30 requests of 1200 tokens a second); the daemon
    # is configured for ten times that. server_rpm = 0: the server has no request limit and
    # so sends only the x-ratelimit-*-tokens headers.
    items, server_tpm = 60, 2_160_000
    async with running_sim(SimConfig(port=0, rpm=server_rpm, tpm=server_tpm)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job(max_tokens=1000), tpm=10 * server_tpm)
        spool_items(work, items)
        with capture_logs() as logs:
            daemon, _ = await run_once_timed(work)
        stats = sim.stats()
    assert len(work.lines("q")) == items
    adopted = [(e["limit"], e["server"]) for e in logs if e["event"] == "rate_limit_adopted"]
    assert adopted == [("tpm", server_tpm)]
    assert budget_of(daemon).tpm == server_tpm
    share_429 = stats["by_status"].get("429", 0) / stats["requests"]
    assert share_429 < 0.05, stats["by_status"]


@dataclass(slots=True)
class RecordingLimiter(Limiter):
    """The simulator's limiter, noting the loop time and verdict of every request."""

    seen: list[tuple[float, Admission]] = field(default_factory=list)

    def admit(self, key: str, tokens: int, now: float) -> Admission:
        verdict = Limiter.admit(self, key, tokens, now)
        self.seen.append((now, verdict))
        return verdict


def record_arrivals(sim: RunningSim) -> RecordingLimiter:
    cfg = sim.sim.cfg
    limiter = RecordingLimiter(cfg.rpm, cfg.tpm, cfg.limit_window_s)
    sim.sim.limiter = limiter
    return limiter


async def test_a_429_pauses_all_sending_until_retry_after(work: Workdir) -> None:
    # The server grants 2 requests a second (a bucket of 2); the daemon believes in 100 a
    # second and is told not to learn from headers, so only 429s can slow it down.
    items, daemon_rpm = 10, 6000
    async with running_sim(SimConfig(port=0, rpm=120)) as sim:
        limiter = record_arrivals(sim)
        write_provider_config(
            work, sim.base_url, jsonl_job(), rpm=daemon_rpm, adapt_to_headers=False
        )
        spool_items(work, items)
        daemon, elapsed = await run_once_timed(work)
        stats = sim.stats()
    assert len(work.lines("q")) == items and not work.lines("q", "dead")
    assert stats["by_status"]["200"] == items
    refused = [(t, a.wait_s) for t, a in limiter.seen if not a.admitted]
    assert refused, "the test needs 429s"
    # After a 429 the server sees nothing for about its retry-after. Requests already on the
    # wire when the 429 left get 0.1 s to arrive; a daemon that did not pause would send one
    # every 10 ms. One window is allowed a straggler, for a machine that stalls.
    arrivals = [t for t, _ in limiter.seen]
    noisy = [
        (t, wait, [round(a - t, 3) for a in arrivals if t + 0.1 < a < t + wait - 0.05])
        for t, wait in refused
        if wait >= 0.25
    ]
    assert len([n for n in noisy if n[2]]) <= 1, noisy
    # A client that kept sending at its budget would earn a 429 for nearly every one of its
    # ~100 requests a second; pausing keeps it to about one per admitted request.
    would_earn = daemon_rpm / 60 * elapsed - items
    assert stats["rate_limited"] <= 2 * items + 2, stats["by_status"]
    assert stats["rate_limited"] < 0.2 * would_earn
    assert budget_of(daemon).rate_limited == stats["rate_limited"]


async def test_no_429_storm_when_the_budget_is_far_above_the_servers_limit(
    work: Workdir,
) -> None:
    # As above, but the daemon believes in a million requests a minute: 25% of that is
    # still unlimited, so only the pause stands between it and the server.
    items = 12
    async with running_sim(SimConfig(port=0, rpm=120)) as sim:
        write_provider_config(
            work, sim.base_url, jsonl_job(), rpm=1_000_000, adapt_to_headers=False
        )
        spool_items(work, items)
        await run_once_timed(work)
        stats = sim.stats()
    dead = work.lines("q", "dead")
    # A client that learns from its 429s earns about one per admitted request (8 for 10 items
    # in the test above), and no item runs out of attempts for being throttled.
    assert stats["rate_limited"] <= 1.5 * stats["by_status"]["200"], stats["by_status"]
    assert not dead, [d["error"] for d in dead]


async def test_used_tokens_are_credited_back(work: Workdir) -> None:
    # tpm_counts = "used": a request reserves prompt + max_tokens (about 1200) but the
    # provider counts prompt + completion (about 260). The difference comes back as credit,
    # so the daemon sends far more than reservations alone would allow, within the budget of
    # tokens actually used.
    tpm, items = 620_000, 120
    async with running_sim(SimConfig(port=0)) as sim:
        write_provider_config(
            work, sim.base_url, jsonl_job(max_tokens=1000), tpm=tpm, tpm_counts="used"
        )
        spool_items(work, items)
        daemon, elapsed = await run_once_timed(work)
        stats = sim.stats()
    assert stats["by_status"] == {"200": items}
    records = work.lines("q")
    assert len(records) == items
    tokens_per_s = tpm / 60
    reserved = stats["accepted_tokens"] / items
    used = (stats["prompt_tokens"] + stats["completion_tokens"]) / items
    assert used < reserved / 2
    reserved_rate = tokens_per_s / reserved  # requests a second reservations alone allow
    # Used tokens stay within the budget: the credit spent on top is at most one bucket (one
    # second's worth). Completions differ in length, hence 10% on the average.
    assert_within(stats["per_second"], 1.1 * tokens_per_s, cost=used, credit=tokens_per_s)
    # The credit is what makes it fast: well above what reserving max_tokens would allow.
    assert items / elapsed > 1.5 * reserved_rate, (elapsed, reserved_rate)
    budget = budget_of(daemon)
    assert budget._debt < -reserved / 2  # credit left over from the last replies


async def test_calibration_learns_the_servers_tokenizer(work: Workdir) -> None:
    items = 60
    async with running_sim(SimConfig(port=0)) as sim:
        write_provider_config(work, sim.base_url, jsonl_job())
        spool_items(work, items)
        daemon, _ = await run_once_timed(work)
    record = work.lines("q")[0]
    chars = len(record["messages"][-1]["content"])
    target = chars / record["usage"]["prompt_tokens"]  # the simulator counts 4 per message more
    learnt = budget_of(daemon).calibration.chars_per_token
    assert target < 3.95
    assert abs(learnt - target) < 0.3 * (4.0 - target), (learnt, target)
